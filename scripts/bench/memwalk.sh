#!/usr/bin/env bash
# Daemon memory over a walk of many files: mounts each FUSE implementation
# read-only over a tree of N empty files, walks it WALKS times with
# `find MNT -printf '%s\n'` (one lstat, so one LOOKUP, per file), and prints
# the daemon's VmHWM (peak RSS) and VmRSS after each walk as a markdown table.
#
# Usage: scripts/bench/memwalk.sh [--files N] [--walks K] [--work DIR] [--impls LIST]
#   --files N     files in the tree (default 1000000, 1000 per directory)
#   --walks K     walks per mount (default 3)
#   --work DIR    where the tree lives (default /var/tmp/layerfs-memwalk; ext4, not tmpfs)
#   --impls LIST  layerfs,fo1 (default: both; fo1 only when its binary exists)
# Environment: LAYERFS_BIN (default REPO/target/release/layerfs), LAYERFS_OPTS (extra -o
# options for layerfs, e.g. max_inodes=0), FUSE_OVERLAYFS1_BIN (default /usr/bin/fuse-overlayfs).
#
# As root. Kernel caches are not dropped between walks: what the kernel keeps
# cached is what the daemon must keep. Walk times are indicative only (the
# machine may be shared); memory figures are not affected by load.
set -euo pipefail
export LC_ALL=C

SCRIPT_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
REPO_ROOT=$(dirname "$(dirname "$SCRIPT_DIR")")
FILES=1000000 WALKS=3 WORK=/var/tmp/layerfs-memwalk IMPLS=layerfs,fo1
while (($#)); do
  case $1 in
    --files) FILES=${2:?}; shift ;;
    --walks) WALKS=${2:?}; shift ;;
    --work) WORK=${2:?}; shift ;;
    --impls) IMPLS=${2:?}; shift ;;
    -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "memwalk: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
((EUID == 0)) || { echo "memwalk: run as root" >&2; exit 1; }
LAYERFS_BIN=${LAYERFS_BIN:-$REPO_ROOT/target/release/layerfs}
FO1_BIN=${FUSE_OVERLAYFS1_BIN:-/usr/bin/fuse-overlayfs}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
python3 "$SCRIPT_DIR/mktree.py" "$WORK/lower" --files "$FILES" >&2
LOWER=$WORK/lower/tree
MNT=$WORK/mnt.$$
mkdir -p "$MNT"

PID=""
cleanup() {
  if mountpoint -q "$MNT" 2>/dev/null; then
    umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  fi
  # Only the daemon this script started, by its pid.
  if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
    sleep 1
    kill "$PID" 2>/dev/null || true
  fi
  rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT

status_kib() { # PID FIELD
  local k v _
  while read -r k v _; do
    [[ $k == "$2:" ]] && { echo "$v"; return 0; }
  done <"/proc/$1/status"
  echo 0
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

rows=()
run_impl() { # LABEL CMD...
  local label=$1 w t0 t1 hwm rss
  shift
  log "$label: mounting"
  "$@" &
  PID=$!
  for _ in $(seq 200); do
    mountpoint -q "$MNT" && break
    sleep 0.05
  done
  mountpoint -q "$MNT" || { log "$label: mount failed"; PID=""; return 1; }
  local cells="" start_rss
  start_rss=$(status_kib "$PID" VmRSS)
  for ((w = 1; w <= WALKS; w++)); do
    t0=$EPOCHREALTIME
    find "$MNT" -printf '%s\n' >/dev/null
    t1=$EPOCHREALTIME
    hwm=$(status_kib "$PID" VmHWM)
    rss=$(status_kib "$PID" VmRSS)
    local nodes=""
    if [[ $label == layerfs* ]]; then
      nodes=$("$LAYERFS_BIN" stats --json "$MNT" 2>/dev/null |
        python3 -c 'import json, sys; s = json.load(sys.stdin); print(", inodes %s, peak %s" % (s["inodes"], s.get("inodes_peak", "?")))' || true)
    fi
    log "$label: walk $w: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s, VmHWM $(mib "$hwm") MiB, VmRSS $(mib "$rss") MiB$nodes"
    cells+=" $(mib "$hwm") / $(mib "$rss") |"
  done
  umount "$MNT"
  wait "$PID" || true
  PID=""
  rows+=("| $label | $(mib "$start_rss") |$cells")
}

IFS=, read -ra want <<<"$IMPLS"
for i in "${want[@]}"; do
  case $i in
    layerfs)
      [[ -x $LAYERFS_BIN ]] || { log "no $LAYERFS_BIN (cargo build --release)"; continue; }
      run_impl "layerfs${LAYERFS_OPTS:+ ($LAYERFS_OPTS)}" \
        "$LAYERFS_BIN" -f -o "lowerdir=$LOWER${LAYERFS_OPTS:+,$LAYERFS_OPTS}" "$MNT"
      ;;
    fo1)
      [[ -x $FO1_BIN ]] || { log "no $FO1_BIN: fuse-overlayfs skipped"; continue; }
      run_impl "fuse-overlayfs $("$FO1_BIN" --version 2>/dev/null | sed -n 's/^fuse-overlayfs: version //p')" \
        "$FO1_BIN" -f -o "lowerdir=$LOWER" "$MNT"
      ;;
    *) echo "memwalk: unknown implementation $i (layerfs, fo1)" >&2; exit 2 ;;
  esac
done

header="| daemon | RSS after mount (MiB) |" sep="|---|---|"
for ((w = 1; w <= WALKS; w++)); do
  header+=" walk $w: VmHWM / VmRSS (MiB) |"
  sep+="---|"
done
echo "Daemon memory, $FILES files ($(awk -v f="$FILES" 'BEGIN { printf "%d", f / 1000 }') directories of 1,000), \`find MNT -printf '%s\\n'\` $WALKS times, read-only mount:"
echo
echo "$header"
echo "$sep"
printf '%s\n' "${rows[@]}"
