#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted bash -c snippets take their args as $1.. on purpose
# layerfs benchmark: layerfs against kernel overlayfs, fuse-overlayfs 1.x (C) and
# fuse-overlayfs 2.x (Rust), plus the plain directory for reference.
#
# Usage: scripts/bench.sh [options]          (as root; see --help)
#
# It builds (once, cached) a deterministic three-layer stack under the work dir,
# mounts each implementation on it, runs the workloads interleaved
# (for rep: for workload: for impl), and writes a markdown report with medians,
# ratios to kernel overlayfs and the FUSE daemons' peak RSS.
set -euo pipefail
export LC_ALL=C

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT_PATH")
REPO_ROOT=$(dirname "$SCRIPT_DIR")
HELPERS="$SCRIPT_DIR/bench"

# Workload groups. A group is what runs on one fresh mount; it records one or
# more metrics. Order here is the order in the report.
READ_GROUPS=(find lsR tar seqread randread pyimport)
# not run by default (disk-bound; on a VM the host cache makes it noisy): seqread_cold
WRITE_GROUPS=(copyup copyup_volatile append chmod untar seqwrite randwrite git make)
ALL_IMPLS=(native kernel fo1 fo2 layerfs)

usage() {
  cat <<'EOF'
Usage: scripts/bench.sh [options]

  --reps N           repetitions; the report shows the median (default 3, --quick: 1)
  --quick            smoke run (~2.5 min once the stack exists): 1 rep, smaller random I/O
  --write            also run the write workloads (mounts with upperdir/workdir)
  --only LIST        workload groups or metrics, comma-separated, e.g. find,lsR or lsR_cold
                     read:  find lsR tar seqread randread pyimport (and seqread_cold, not in the default set)
                     write: copyup copyup_volatile append chmod untar(+rm) seqwrite randwrite git make
  --impls LIST       subset of: native,kernel,fo1,fo2,layerfs (default: all), and
                     layerfs-alt: layerfs again with LAYERFS_ALT_OPTS, for A/B runs
  --work DIR         scratch/cache dir (default /var/tmp/layerfs-bench, env LAYERFS_BENCH_WORK)
  --out FILE         report file (default docs/benchmarks.md, with --rootless
                     docs/benchmarks-rootless.md; with --quick WORK/benchmarks-quick.md;
                     "-" for none)
  --timeout SECS     per-workload timeout (default 300, --quick 120)
  --no-build         never run cargo build for layerfs (skip the column when the binary is missing)
  --rebuild-stack    throw the cached stack away and build it again
  --rootless         run every mount inside `unshare -Urm` (experimental; see the notes in the report)
  --keep             keep the run dir (logs, upper dirs) under WORK/runs
  --run              also time container start-up (`layerfs run --rm IMAGE true`, scripts/bench-run.sh,
                     as an unprivileged user) and append it to the report
  --memwalk          also measure daemon memory over 3 walks of 1,000,000 files
                     (scripts/bench/memwalk.sh; layerfs and fuse-overlayfs 1.x, ~5 min, tree
                     under /var/tmp/layerfs-memwalk) and add its table to the report
  -h, --help         this help

Environment: LAYERFS_BIN (default REPO/target/release/layerfs, built if missing),
LAYERFS_OPTS (extra -o options for layerfs only, e.g. for tuning experiments; shown in the report),
LAYERFS_ALT_OPTS (the -o options of the layerfs-alt column, e.g. uring=off),
FUSE_OVERLAYFS1_BIN (default /usr/bin/fuse-overlayfs), FUSE_OVERLAYFS2_BIN (default
/work/tools/fuse-overlayfs2/bin/fuse-overlayfs, else WORK/tools/..., installed with
`cargo install fuse-overlayfs --version FUSE_OVERLAYFS2_VERSION` (default 2.0.0) when missing).
EOF
}

# ---------------------------------------------------------------------------
# configuration (exported so that a re-invoked cell, see --rootless, sees it)
# ---------------------------------------------------------------------------
# (a cell re-invoked with __cell inherits them through the environment)
if [[ ${1:-} != __cell ]]; then
  export B_WORK=${LAYERFS_BENCH_WORK:-/var/tmp/layerfs-bench}
  export B_REPS="" B_QUICK=0 B_WRITE=0 B_ONLY="" B_IMPLS="" B_OUT="" B_TMO="" B_BUILD=1
  export B_REBUILD=0 B_ROOTLESS=0 B_KEEP=0 B_RUNNER=0
  export B_REBUILD=0 B_ROOTLESS=0 B_KEEP=0 B_MEMWALK=0
  export B_SEED=20251123 B_BIG_MIB=1024
fi
STACK_VERSION=1

die() { echo "bench: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

parse_args() {
  while (($#)); do
    case $1 in
      --reps) B_REPS=${2:?}; shift ;;
      --quick) B_QUICK=1 ;;
      --write) B_WRITE=1 ;;
      --only) B_ONLY=${2:?}; shift ;;
      --impls) B_IMPLS=${2:?}; shift ;;
      --work) B_WORK=${2:?}; shift ;;
      --out) B_OUT=${2:?}; shift ;;
      --timeout) B_TMO=${2:?}; shift ;;
      --no-build) B_BUILD=0 ;;
      --rebuild-stack) B_REBUILD=1 ;;
      --rootless) B_ROOTLESS=1 ;;
      --keep) B_KEEP=1 ;;
      --run) B_RUNNER=1 ;;
      --memwalk) B_MEMWALK=1 ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
  if ((B_QUICK)); then
    : "${B_REPS:=1}" "${B_TMO:=120}" "${B_OUT:=$B_WORK/benchmarks-quick.md}"
    export B_RR_IO=256M B_RW_SIZE=64M
  else
    local report=benchmarks.md
    ((B_ROOTLESS)) && report=benchmarks-rootless.md
    : "${B_REPS:=3}" "${B_TMO:=300}" "${B_OUT:=$REPO_ROOT/docs/$report}"
    export B_RR_IO=1G B_RW_SIZE=256M
  fi
  [[ $B_REPS =~ ^[1-9][0-9]*$ ]] || die "--reps wants a positive integer"
  [[ $B_TMO =~ ^[1-9][0-9]*$ ]] || die "--timeout wants seconds"
  : "${B_IMPLS:=$(IFS=,; echo "${ALL_IMPLS[*]}")}"
}

# Map --only items (group or metric names) to groups.
group_of() {
  case $1 in
    find|mount|find_cold|find_warm|entries) echo find ;;
    lsR|ls|lsR_cold|lsR_warm) echo lsR ;;
    tar) echo tar ;;
    seqread|seqread_cold|randread|copyup|append|chmod|seqwrite|randwrite|make) echo "$1" ;;
    pyimport|pyimport_cold|pyimport_warm) echo pyimport ;;
    copyup_volatile|volatile) echo copyup_volatile ;;
    untar|rm) echo untar ;;
    git|gitstatus|git_status_1|git_status_2) echo git ;;
    *) return 1 ;;
  esac
}

metrics_of() { # the metrics a group records
  case $1 in
    find) echo mount find_cold find_warm ;;
    lsR) echo lsR_cold lsR_warm ;;
    untar) echo untar rm ;;
    git) echo git_status_1 git_status_2 ;;
    make) echo make_j2 ;;
    pyimport) echo pyimport_cold pyimport_warm ;;
    *) echo "$1" ;;
  esac
}

is_write_group() {
  local g
  for g in "${WRITE_GROUPS[@]}"; do [[ $g == "$1" ]] && return 0; done
  return 1
}

# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
now_us() { local t=$EPOCHREALTIME; echo $((10#${t/./})); }

drop_caches() {
  timeout 300 sync || true
  if ! echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then
    note_once dropcaches "could not drop the page cache: cold runs are not cold"
  fi
}

note() { printf 'note\t%s\n' "$*" >>"$B_META"; log "note: $*"; }
declare -A NOTED=()
note_once() { [[ -n ${NOTED[$1]:-} ]] && return 0; NOTED[$1]=1; note "$2"; }

meta() { printf '%s\t%s\n' "$1" "$2" >>"$B_META"; }

# record REP IMPL METRIC KIND VALUE EXTRA STATUS
#   KIND time: VALUE = elapsed microseconds
#   KIND rate: VALUE = elapsed microseconds, EXTRA = MiB moved
#   KIND iops: VALUE = IOPS
#   KIND kib/ticks/count: resource figures
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$B_RESULTS"; }

mounted() { # is $1 a mount point (no fork, no stat of a maybe hung mount)
  local _ _i _d mp _r
  while read -r _i _d _ _r mp _; do
    [[ $mp == "$1" ]] && return 0
  done </proc/self/mountinfo
  return 1
}

fuse_conn_of() { # the /sys/fs/fuse/connections id of mount point $1
  local _i _d devno _r mp _
  while read -r _i _d devno _r mp _; do
    [[ $mp == "$1" ]] && { echo "${devno#*:}"; return 0; }
  done </proc/self/mountinfo
  return 1
}

# The daemon serving mount point $1: a process whose argv has $1 as an element
# and whose executable is $2. Mount points live under this run's dir, whose
# name has our pid in it, so only processes this script started can match.
daemon_pid() {
  local mp=$1 exe=$2 p arg
  for p in /proc/[0-9]*; do
    [[ -r $p/cmdline ]] || continue
    while IFS= read -r -d '' arg; do
      if [[ $arg == "$mp" ]]; then
        if [[ $(readlink "$p/exe" 2>/dev/null) == "$exe" ]]; then
          echo "${p#/proc/}"
          return 0
        fi
        break
      fi
    done <"$p/cmdline" 2>/dev/null || true
  done
  return 1
}

daemon_stats() { # prints "VmHWM_kib cpu_ticks" of pid $1
  local pid=$1 hwm=0 k v _ line rest
  while read -r k v _; do
    [[ $k == VmHWM: ]] && hwm=$v
  done <"/proc/$pid/status"
  read -r line <"/proc/$pid/stat"
  rest=${line##*) }
  local -a fld
  read -ra fld <<<"$rest"
  echo "$hwm $((fld[11] + fld[12]))"
}

# ---------------------------------------------------------------------------
# implementations
# ---------------------------------------------------------------------------
impl_label() {
  case $1 in
    native) echo "native" ;;
    kernel) echo "kernel overlayfs" ;;
    fo1) echo "fuse-overlayfs ${FO1_VER:-1.x}" ;;
    fo2) echo "fuse-overlayfs ${FO2_VER:-2.x}" ;;
    layerfs) echo "layerfs" ;;
    layerfs-alt) echo "layerfs ${LAYERFS_ALT_OPTS:-}" ;;
  esac
}

impl_bin() {
  case $1 in
    fo1) echo "${B_FO1_BIN:-}" ;;
    fo2) echo "${B_FO2_BIN:-}" ;;
    layerfs|layerfs-alt) echo "${B_LAYERFS_BIN:-}" ;;
    *) echo "" ;;
  esac
}

locate_fo1() {
  local bin=${FUSE_OVERLAYFS1_BIN:-/usr/bin/fuse-overlayfs}
  if [[ ! -x $bin ]] && [[ -z ${FUSE_OVERLAYFS1_BIN:-} ]] && command -v apt-get >/dev/null && ((EUID == 0)); then
    log "installing fuse-overlayfs (Debian package)"
    apt-get install -y -qq fuse-overlayfs >>"$B_LOGS/install.log" 2>&1 || true
  fi
  [[ -x $bin ]] || { note "fuse-overlayfs 1.x not found ($bin): column skipped"; return 1; }
  FO1_VER=$("$bin" --version 2>/dev/null | sed -n 's/^fuse-overlayfs: version //p' | head -n1)
  [[ $FO1_VER == 1.* ]] || { note "$bin is not fuse-overlayfs 1.x (version '$FO1_VER'): column skipped"; return 1; }
  B_FO1_BIN=$(readlink -f "$bin")
  export B_FO1_BIN FO1_VER
}

locate_fo2() {
  local want=${FUSE_OVERLAYFS2_VERSION:-2.0.0} bin="" c
  local cache=$B_WORK/tools/fuse-overlayfs2
  for c in "${FUSE_OVERLAYFS2_BIN:-}" /work/tools/fuse-overlayfs2/bin/fuse-overlayfs "$cache/bin/fuse-overlayfs"; do
    [[ -n $c && -x $c ]] && { bin=$c; break; }
  done
  if [[ -z $bin && -z ${FUSE_OVERLAYFS2_BIN:-} ]]; then
    if command -v cargo >/dev/null; then
      log "installing fuse-overlayfs $want from crates.io into $cache (takes ~2 min)"
      if (cd / && cargo install --locked fuse-overlayfs --version "$want" --root "$cache") \
          >>"$B_LOGS/install.log" 2>&1; then
        bin=$cache/bin/fuse-overlayfs
      else
        note "cargo install fuse-overlayfs $want failed (see $B_LOGS/install.log): column skipped"
        return 1
      fi
    else
      note "fuse-overlayfs 2.x not found and no cargo to install it: column skipped"
      return 1
    fi
  fi
  [[ -x $bin ]] || { note "fuse-overlayfs 2.x not found: column skipped"; return 1; }
  FO2_VER=$("$bin" --version 2>/dev/null | sed -n 's/^fuse-overlayfs: version //p' | head -n1)
  [[ $FO2_VER == 2.* ]] || { note "$bin is not fuse-overlayfs 2.x (version '$FO2_VER'): column skipped"; return 1; }
  B_FO2_BIN=$(readlink -f "$bin")
  export B_FO2_BIN FO2_VER
}

locate_layerfs() {
  local bin=${LAYERFS_BIN:-}
  if [[ -z $bin ]]; then
    bin=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/layerfs
    if [[ ! -x $bin ]]; then
      if ((B_BUILD)) && command -v cargo >/dev/null && [[ -f $REPO_ROOT/Cargo.toml ]]; then
        log "building layerfs (cargo build --release)"
        if ! (cd "$REPO_ROOT" && cargo build --release) >>"$B_LOGS/build.log" 2>&1; then
          note "cargo build --release failed (see $B_LOGS/build.log): layerfs column skipped"
          return 1
        fi
      fi
    fi
  fi
  [[ -x $bin ]] || { note "layerfs binary not found ($bin; set LAYERFS_BIN or build it): layerfs column skipped"; return 1; }
  bin=$(readlink -f "$bin")
  # run a snapshot, so that a rebuild during the run does not change what is measured
  mkdir -p "$B_RUN/bin"
  cp "$bin" "$B_RUN/bin/layerfs"
  LAYERFS_VER=$(timeout 10 "$B_RUN/bin/layerfs" --version 2>/dev/null | head -n1 || true)
  local rev
  rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
  LAYERFS_VER="${LAYERFS_VER:-layerfs} (repo $rev, $bin built $(date -u -r "$bin" +%F\ %TZ))"
  export B_LAYERFS_BIN=$B_RUN/bin/layerfs LAYERFS_VER
}

# ---------------------------------------------------------------------------
# the stack
# ---------------------------------------------------------------------------
stack_stamp() {
  local h
  h=$(cat "$HELPERS/mkstack.py" "$HELPERS/mkpyimport.py" | sha1sum | cut -c1-12)
  echo "v$STACK_VERSION seed=$B_SEED big=${B_BIG_MIB}MiB gen=$h"
}

build_stack() {
  local st=$B_WORK/stack stamp
  stamp=$(stack_stamp)
  if ((B_REBUILD == 0)) && [[ -f $st/.stamp && $(<"$st/.stamp") == "$stamp" ]]; then
    return 0
  fi
  log "building the layer stack in $st (once; ~2-3 min)"
  rm -rf "$st"
  mkdir -p "$st"
  python3 "$HELPERS/mkstack.py" "$st" --seed "$B_SEED" --big-mib "$B_BIG_MIB" >"$B_LOGS/mkstack.log"
  python3 "$HELPERS/mkpyimport.py" "$st" >>"$B_LOGS/mkstack.log"
  # native = the merged view, copied out of a kernel overlay mount
  local m=$B_RUN/mnt/stack
  mkdir -p "$m" "$st/native"
  mount -t overlay overlay -o "lowerdir=$st/l1:$st/l2:$st/l3" "$m"
  cp -a "$m/." "$st/native/"
  umount "$m"
  (cd "$st/native" && find . | wc -l) >"$st/entries"
  # tarball for the untar workload: the first 20,000 entries of a few /usr subtrees
  (cd "$st/native" && find usr/share usr/include usr/lib/python3 >"$st/untar.all" &&
    head -n 20000 "$st/untar.all" >"$st/untar.list" &&
    tar --no-recursion -cf "$st/untar.tar" -T "$st/untar.list")
  rm -f "$st/untar.all"
  sync
  echo "$stamp" >"$st/.stamp"
  log "stack ready: $(<"$st/entries") entries in the merged view"
}

# ---------------------------------------------------------------------------
# one cell: fresh mount, one workload group, peak RSS, unmount
# ---------------------------------------------------------------------------
CUR_JOB=""
DAEMONS=()
GIT=(env GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 git)

# run_timed STATUSVAR USVAR cmd...: run a workload with the timeout, in the
# background so that Ctrl-C reaches our trap at once.
run_timed() {
  local -n _st=$1 _us=$2
  shift 2
  local t0 t1 rc=0
  t0=$(now_us)
  timeout -k 10 "$B_TMO" "$@" </dev/null >/dev/null 2>>"$B_CELL_LOG" &
  CUR_JOB=$!
  wait "$CUR_JOB" || rc=$?
  t1=$(now_us)
  CUR_JOB=""
  _us=$((t1 - t0))
  if ((rc == 0)); then _st=ok; elif ((rc == 124 || rc == 137)); then _st=timeout; else _st="fail($rc)"; fi
  [[ $_st == ok ]] || log "  $* -> $_st"
}

# timed REP IMPL METRIC KIND EXTRA cmd...
timed() {
  local rep=$1 impl=$2 metric=$3 kind=$4 extra=$5 st us
  shift 5
  run_timed st us "$@"
  record "$rep" "$impl" "$metric" "$kind" "$us" "$extra" "$st"
  log "  $(printf '%-8s %-14s %9.3f s %s' "$impl" "$metric" "$((us))e-6" "$st")"
}

fio_iops() { # REP IMPL METRIC RW file [fio args...]: run fio, record its IOPS
  local rep=$1 impl=$2 metric=$3 rw=$4 file=$5 out st us iops=0
  shift 5
  out=$B_CELL_DIR/fio.$metric.out
  run_timed st us fio --name="$metric" --filename="$file" --rw="$rw" --bs=4k --ioengine=psync \
    --numjobs=1 --output-format=terse --terse-version=3 --output="$out" "$@"
  if [[ $st == ok ]]; then
    # terse v3: field 8 = read IOPS, field 49 = write IOPS
    local line
    line=$(grep '^3;' "$out" | tail -n1)
    if [[ $rw == *read* ]]; then iops=$(cut -d';' -f8 <<<"$line"); else iops=$(cut -d';' -f49 <<<"$line"); fi
    [[ $iops =~ ^[0-9.]+$ ]] || { iops=0; st="fail(fio output)"; }
  fi
  record "$rep" "$impl" "$metric" iops "$iops" 0 "$st"
  log "  $(printf '%-8s %-14s %9s IOPS %s' "$impl" "$metric" "$iops" "$st")"
}

lower_spec() { echo "$B_STACK/l1:$B_STACK/l2:$B_STACK/l3"; }

# mount_impl IMPL MNT UPPER WORK -> sets M (the dir the workload uses) and DPID
mount_impl() {
  local impl=$1 mnt=$2 upper=$3 work=$4 opts bin rc=0
  DPID="" MOUNTED_US=""
  opts="lowerdir=$(lower_spec)"
  [[ -n $upper ]] && opts+=",upperdir=$upper,workdir=$work"
  # volatile mounts: no fsync on copy-up, fsync a no-op (each implementation's own option)
  if ((${B_VOLATILE:-0})) && [[ -n $upper ]]; then
    case $impl in
      kernel|layerfs|layerfs-alt) opts+=",volatile" ;;
      fo1|fo2) opts+=",fsync=0" ;;
    esac
  fi
  case $impl in
    native)
      M=$B_STACK/native
      [[ -n $upper ]] && M=$upper
      return 0 ;;
    kernel)
      ((B_ROOTLESS)) && opts+=",userxattr"
      mount -t overlay overlay -o "$opts" "$mnt" 2>>"$B_CELL_LOG" || rc=$? ;;
    *)
      bin=$(impl_bin "$impl")
      [[ $impl == layerfs && -n ${LAYERFS_OPTS:-} ]] && opts+=",$LAYERFS_OPTS"
      [[ $impl == layerfs-alt && -n ${LAYERFS_ALT_OPTS:-} ]] && opts+=",$LAYERFS_ALT_OPTS"
      timeout 60 "$bin" -o "$opts" "$mnt" </dev/null >>"$B_CELL_LOG" 2>&1 || rc=$? ;;
  esac
  if ((rc != 0)) || ! mounted "$mnt"; then
    log "  mount of $impl failed (rc=$rc), see $B_CELL_LOG"
    return 1
  fi
  # the mount is live: what follows (finding the daemon) is the harness's cost
  MOUNTED_US=$(now_us)
  M=$mnt
  local _src mp _type mopts _
  while read -r _src mp _type mopts _; do
    [[ $mp == "$mnt" ]] && { note_once "mopts-$impl" "$impl mount: type $_type, options $mopts"; break; }
  done </proc/self/mounts
  if [[ $impl != kernel ]]; then
    DPID=$(daemon_pid "$mnt" "$bin") || DPID=""
    [[ -n $DPID ]] && DAEMONS+=("$DPID:$mnt")
    [[ -n $DPID ]] || note_once "nopid-$impl" "$impl: daemon process not found, no RSS"
  fi
}

# unmount MNT [DPID]: unmount, wait for the daemon to exit; escalate if needed
unmount() {
  local mnt=$1 pid=${2:-} i conn
  if mounted "$mnt"; then
    for i in 1 2 3 4 5; do
      if ((B_ROOTLESS)) && [[ -n $pid ]] && ((EUID != 0)); then
        timeout 30 fusermount3 -u "$mnt" 2>/dev/null && break
      else
        timeout 30 umount "$mnt" 2>/dev/null && break
      fi
      sleep "0.$i"
    done
  fi
  if mounted "$mnt"; then
    log "  $mnt busy or hung: aborting the connection and detaching"
    if conn=$(fuse_conn_of "$mnt") && [[ -e /sys/fs/fuse/connections/$conn/abort ]]; then
      echo 1 >"/sys/fs/fuse/connections/$conn/abort" || true
    fi
    umount -l "$mnt" 2>/dev/null || true
  fi
  if [[ -n $pid ]]; then
    for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null && own_daemon "$pid" "$mnt"; then
      log "  daemon $pid did not exit after unmount: killing it"
      kill -TERM "$pid" 2>/dev/null || true
      sleep 1
      if own_daemon "$pid" "$mnt"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
  fi
}

own_daemon() { # is pid $1 still the daemon we started for mount point $2
  local arg
  [[ -r /proc/$1/cmdline ]] || return 1
  while IFS= read -r -d '' arg; do [[ $arg == "$2" ]] && return 0; done <"/proc/$1/cmdline"
  return 1
}

# Prepare the scratch dir that "native" writes into: copies (untimed) of what
# the workload modifies, so that native shows the cost without copy-up.
prep_native_rw() {
  local group=$1 d=$2 n=$B_STACK/native
  case $group in
    copyup|copyup_volatile) tar -C "$n" -cf - -T "$B_STACK/copyup.list" | tar -C "$d" -xf - ;;
    append) mkdir -p "$d/data" && cp "$n/data/big.bin" "$d/data/" ;;
    chmod) mkdir -p "$d/usr" && cp -a "$n/usr/include" "$d/usr/" ;;
    git) mkdir -p "$d/src" && cp -a "$n/src/repo" "$d/src/" &&
      "${GIT[@]}" -C "$d/src/repo" update-index -q --refresh >/dev/null ;; # a fresh index, as in a checkout
    make) mkdir -p "$d/src" && cp -a "$n/src/proj" "$d/src/" ;;
  esac
}

# Get what the workload reads into the page cache (the underlying files), so
# that it measures the file system and not the disk.
prewarm() {
  local impl=$1 what=$2 d
  local -a dirs=("$B_STACK/l1" "$B_STACK/l2" "$B_STACK/l3")
  [[ $impl == native ]] && dirs=("$B_STACK/native")
  case $what in
    big) cat "${dirs[-1]}/data/big.bin" >/dev/null ;;
    tree) for d in "${dirs[@]}"; do tar -C "$d" --exclude=./data -cf - . | cat >/dev/null; done ;;
  esac
}

run_cell() {
  local group=$1 impl=$2 rep=$3
  local mnt=$B_RUN/mnt/$impl upper="" work="" st us
  export B_CELL_DIR=$B_RUN/cells/$rep.$group.$impl
  mkdir -p "$B_CELL_DIR" "$mnt"
  export B_CELL_LOG=$B_CELL_DIR/log
  : >"$B_CELL_LOG"
  if is_write_group "$group"; then
    upper=$B_RUN/rw/$impl.upper work=$B_RUN/rw/$impl.work
    rm -rf "$upper" "$work"
    mkdir -p "$upper" "$work"
    [[ $impl == native ]] && prep_native_rw "$group" "$upper"
  fi
  case $group in
    seqread|randread) prewarm "$impl" big ;;
    tar) prewarm "$impl" tree ;;
  esac
  local t0 t1
  B_VOLATILE=0
  [[ $group == copyup_volatile ]] && B_VOLATILE=1
  t0=$(now_us)
  if ! mount_impl "$impl" "$mnt" "$upper" "$work"; then
    local m
    for m in $(metrics_of "$group"); do record "$rep" "$impl" "$m" time 0 0 mountfail; done
    [[ -n $upper ]] && rm -rf "$upper" "$work"
    return 0
  fi
  t1=${MOUNTED_US:-$(now_us)}
  [[ $group == find && $impl != native ]] && record "$rep" "$impl" mount time $((t1 - t0)) 0 ok
  case $group in
    find|lsR|seqread_cold|copyup|copyup_volatile|append|chmod|untar|seqwrite|randwrite|git|make|pyimport) drop_caches ;;
  esac

  case $group in
    find)
      timed "$rep" "$impl" find_cold time 0 find "$M"
      timed "$rep" "$impl" find_warm time 0 find "$M"
      # correctness check (untimed): entries seen through the mount
      local n
      n=$(timeout "$B_TMO" find "$M" 2>/dev/null | wc -l) || true
      record "$rep" "$impl" entries count "$n" "$(<"$B_STACK/entries")" ok ;;
    lsR)
      timed "$rep" "$impl" lsR_cold time 0 ls -lR "$M"
      timed "$rep" "$impl" lsR_warm time 0 ls -lR "$M" ;;
    tar)
      # GNU tar skips reading file data when the archive is /dev/null: go through a pipe.
      # data/ (the 1 GiB read-test file) is left out: seqread covers bulk reads.
      timed "$rep" "$impl" tar time 0 bash -o pipefail -c \
        'tar -C "$1" --exclude=./data -cf - . | cat >/dev/null' _ "$M" ;;
    seqread|seqread_cold)
      timed "$rep" "$impl" "$group" rate "$B_BIG_MIB" dd if="$M/data/big.bin" of=/dev/null bs=1M ;;
    randread)
      fio_iops "$rep" "$impl" randread randread "$M/data/big.bin" --readonly --invalidate=0 \
        --size="${B_BIG_MIB}M" --io_size="$B_RR_IO" ;;
    copyup)
      timed "$rep" "$impl" copyup time 0 bash -c \
        'while IFS= read -r f; do printf x >>"$1/$f" || exit 1; done <"$2" && sync' _ "$M" "$B_STACK/copyup.list" ;;
    copyup_volatile)
      # no sync: a volatile mount promises no durability (a global sync would
      # flush the upper file system anyway)
      timed "$rep" "$impl" copyup_volatile time 0 bash -c \
        'while IFS= read -r f; do printf x >>"$1/$f" || exit 1; done <"$2"' _ "$M" "$B_STACK/copyup.list" ;;
    append)
      timed "$rep" "$impl" append time 0 bash -c 'printf x >>"$1/data/big.bin" && sync' _ "$M" ;;
    chmod)
      timed "$rep" "$impl" chmod time 0 bash -c 'chmod -R g+w "$1/usr/include" && sync' _ "$M" ;;
    untar)
      mkdir -p "$M/untar"
      timed "$rep" "$impl" untar time 0 bash -c 'tar -xf "$2" -C "$1/untar" && sync' _ "$M" "$B_STACK/untar.tar"
      timed "$rep" "$impl" rm time 0 bash -c 'rm -rf "$1/untar" && sync' _ "$M" ;;
    seqwrite)
      timed "$rep" "$impl" seqwrite rate "$B_BIG_MIB" \
        dd if=/dev/zero of="$M/seqwrite.bin" bs=1M count="$B_BIG_MIB" conv=fsync ;;
    randwrite)
      fio_iops "$rep" "$impl" randwrite randwrite "$M/randwrite.bin" --size="$B_RW_SIZE" ;;
    git)
      timed "$rep" "$impl" git_status_1 time 0 "${GIT[@]}" -C "$M/src/repo" status --porcelain
      timed "$rep" "$impl" git_status_2 time 0 "${GIT[@]}" -C "$M/src/repo" status --porcelain ;;
    make)
      timed "$rep" "$impl" make_j2 time 0 make -s -j2 -C "$M/src/proj" ;;
    pyimport)
      # 500 modules of a package in the stack, from their bytecode (python3 -B never
      # writes into the mount); the interpreter and its stdlib come from the host.
      local py='import sys; sys.path.insert(0, sys.argv[1] + "/usr/lib/python3/dist-packages"); import benchimp.all'
      timed "$rep" "$impl" pyimport_cold time 0 python3 -B -S -c "$py" "$M"
      timed "$rep" "$impl" pyimport_warm time 0 python3 -B -S -c "$py" "$M" ;;
  esac

  if [[ -n $DPID ]] && [[ -r /proc/$DPID/status ]]; then
    local hwm ticks
    read -r hwm ticks < <(daemon_stats "$DPID")
    record "$rep" "$impl" "rss:$group" kib "$hwm" 0 ok
    record "$rep" "$impl" "cpu:$group" ticks "$ticks" 0 ok
    log "  $(printf '%-8s daemon pid %s: VmHWM %d MiB, CPU %d ticks' "$impl" "$DPID" $((hwm / 1024)) "$ticks")"
  fi
  if [[ $impl != native ]]; then
    unmount "$mnt" "$DPID"
  fi
  if [[ -n $upper ]]; then
    rm -rf "$upper" "$work"
  fi
  return 0
}

# ---------------------------------------------------------------------------
# cleanup: everything we mounted, every daemon we started
# ---------------------------------------------------------------------------
# shellcheck disable=SC2317  # invoked through trap
cleanup() {
  local rc=$? mp d pid
  trap - EXIT INT TERM HUP
  set +e
  if [[ -n $CUR_JOB ]]; then kill -TERM "$CUR_JOB" 2>/dev/null || true; wait "$CUR_JOB" 2>/dev/null || true; fi
  if [[ -n ${B_RUN:-} ]]; then
    # anything still mounted under the run dir
    local -a left=()
    local _i _d _r
    while read -r _i _d _ _r mp _; do
      [[ $mp == "$B_RUN"/* ]] && left+=("$mp")
    done </proc/self/mountinfo
    for mp in "${left[@]}"; do
      pid=""
      for d in "${DAEMONS[@]}"; do [[ ${d#*:} == "$mp" ]] && pid=${d%%:*}; done
      log "cleanup: unmounting $mp"
      unmount "$mp" "$pid"
    done
    for d in "${DAEMONS[@]}"; do
      pid=${d%%:*}
      if kill -0 "$pid" 2>/dev/null && own_daemon "$pid" "${d#*:}"; then
        log "cleanup: killing leftover daemon $pid"
        kill -TERM "$pid" 2>/dev/null || true
      fi
    done
    if [[ ${B_CELL_MODE:-0} == 0 ]]; then
      rm -rf "$B_RUN/rw"
      if ((B_KEEP == 0 && rc == 0)) && ! awk -F'\t' '$7 != "ok" {f = 1} END {exit !f}' "$B_RESULTS" 2>/dev/null; then
        rm -rf "$B_RUN"
      else
        log "logs kept in $B_RUN"
      fi
    fi
  fi
  exit "$rc"
}

# shellcheck disable=SC2317  # invoked through trap
on_signal() { log "interrupted"; exit 130; }

# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
machine_info() {
  meta date "$(date -u '+%F %TZ')"
  meta kernel "$(uname -r)"
  meta cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1) ($(nproc) cores)"
  meta memory "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  meta fs "$(findmnt -no FSTYPE,SOURCE -T "$B_WORK" 2>/dev/null | head -n1) (work dir $B_WORK)"
  meta fio "$(fio --version 2>/dev/null)"
  meta reps "$B_REPS"
  meta quick "$B_QUICK"
  meta rootless "$B_ROOTLESS"
  meta timeout "$B_TMO"
  meta rr_io "$B_RR_IO"
  meta rw_size "$B_RW_SIZE"
  meta big_mib "$B_BIG_MIB"
  meta entries "$(<"$B_STACK/entries")"
  meta stack "$(du -sh --apparent-size "$B_STACK/l1" "$B_STACK/l2" "$B_STACK/l3" | awk '{printf "%s%s %s", sep, $2, $1; sep=", "}' | sed "s|$B_STACK/||g")"
  meta stackinfo "$(tr -d '\n' <"$B_STACK/stack.json")"
}

main() {
  parse_args "$@"
  ((EUID == 0)) || die "run as root (kernel overlay mounts, drop_caches)"
  for c in python3 fio timeout findmnt; do
    command -v "$c" >/dev/null || die "missing $c"
  done

  export B_STACK=$B_WORK/stack
  B_RUN=$B_WORK/runs/$(date +%Y%m%d-%H%M%S).$$
  export B_RUN
  export B_LOGS=$B_RUN/logs B_META=$B_RUN/meta.tsv B_RESULTS=$B_RUN/results.tsv
  mkdir -p "$B_LOGS" "$B_RUN/mnt" "$B_RUN/cells"
  : >"$B_META"
  : >"$B_RESULTS"
  trap cleanup EXIT
  trap on_signal INT TERM HUP

  # groups to run
  local -a groups=() want=()
  local item g
  if [[ -n $B_ONLY ]]; then
    IFS=, read -ra want <<<"$B_ONLY"
    for item in "${want[@]}"; do
      local gs
      gs=$(group_of "$item") || die "unknown workload '$item' (see --help)"
      for g in $gs; do [[ " ${groups[*]} " == *" $g "* ]] || groups+=("$g"); done
    done
    # keep report order
    local -a ordered=()
    for g in "${READ_GROUPS[@]}" seqread_cold "${WRITE_GROUPS[@]}"; do
      [[ " ${groups[*]} " == *" $g "* ]] && ordered+=("$g")
    done
    groups=("${ordered[@]}")
  else
    groups=("${READ_GROUPS[@]}")
    ((B_WRITE)) && groups+=("${WRITE_GROUPS[@]}")
  fi

  # implementations
  local -a impls=() req=()
  IFS=, read -ra req <<<"$B_IMPLS"
  local i
  for i in "${req[@]}"; do
    case $i in
      native|kernel) impls+=("$i") ;;
      fo1) locate_fo1 && impls+=(fo1) ;;
      fo2) locate_fo2 && impls+=(fo2) ;;
      layerfs) locate_layerfs && impls+=(layerfs) ;;
      layerfs-alt) locate_layerfs && impls+=(layerfs-alt) ;;
      *) die "unknown implementation '$i' (native,kernel,fo1,fo2,layerfs)" ;;
    esac
  done
  ((${#impls[@]})) || die "no implementation to run"
  for i in "${impls[@]}"; do
    meta "impl" "$i"
    meta "label:$i" "$(impl_label "$i")"
  done
  [[ -n ${FO1_VER:-} ]] && meta "version:fo1" "fuse-overlayfs $FO1_VER ($B_FO1_BIN)"
  [[ -n ${FO2_VER:-} ]] && meta "version:fo2" "fuse-overlayfs $FO2_VER ($B_FO2_BIN)"
  [[ -n ${LAYERFS_VER:-} ]] && meta "version:layerfs" "$LAYERFS_VER${LAYERFS_OPTS:+, extra options: $LAYERFS_OPTS}"
  meta "groups" "${groups[*]}"

  for g in "${groups[@]}"; do
    if is_write_group "$g"; then
      for c in git make gcc; do command -v "$c" >/dev/null || die "missing $c (write workloads)"; done
      break
    fi
  done

  build_stack
  machine_info
  meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
  if ((B_ROOTLESS)); then
    note "rootless: each cell runs in 'unshare -Urm'; kernel overlay gets -o userxattr (reads user.overlay.opaque)"
    ((EUID == 0)) && note "rootless as real root: uid 0 maps to 0, so drop_caches still works; FUSE passthrough is unavailable in a user namespace"
  fi

  log "impls: ${impls[*]}; groups: ${groups[*]}; reps: $B_REPS; run dir: $B_RUN"
  local rep k n=${#impls[@]} start
  start=$(now_us)
  for ((rep = 1; rep <= B_REPS; rep++)); do
    for g in "${groups[@]}"; do
      log "rep $rep/$B_REPS: $g"
      for ((k = 0; k < n; k++)); do
        i=${impls[(k + rep - 1) % n]}   # rotate the order every rep
        if ((B_ROOTLESS)); then
          B_CELL_MODE=1 unshare -Urm --propagation private -- bash "$SCRIPT_PATH" __cell "$g" "$i" "$rep" ||
            log "  cell $g/$i failed"
        else
          run_cell "$g" "$i" "$rep"
        fi
      done
    done
  done
  meta duration "$(( ($(now_us) - start) / 1000000 )) s"
  meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"

  local out=$B_OUT
  [[ $out == - ]] && out=""
  python3 "$HELPERS/report.py" "$B_META" "$B_RESULTS" ${out:+--out "$out"}
  mkdir -p "$B_WORK/results"
  cp "$B_RESULTS" "$B_WORK/results/$(basename "$B_RUN").results.tsv"
  cp "$B_META" "$B_WORK/results/$(basename "$B_RUN").meta.tsv"
  if ((B_RUNNER)) && [[ -n $out ]]; then
    log "container start-up (scripts/bench-run.sh 21)"
    local runs
    command -v bwrap >/dev/null || { ((EUID == 0)) && apt-get install -y -qq bubblewrap >>"$B_LOGS/install.log" 2>&1; } || true
    if runs=$("$SCRIPT_DIR/bench-run.sh" 21 2>>"$B_LOGS/bench-run.log"); then
      {
        printf '\n## Container start-up\n\n'
        printf 'Median wall time of `layerfs run --rm IMAGE true` (mount, user+mount+pid namespaces, exec,\n'
        printf 'exit, unmount, record removed) and of bubblewrap on the same extracted root filesystem, from\n'
        printf '`scripts/bench-run.sh 21`, in the same session:\n\n'
        printf '```\n%s\n```\n' "$runs"
      } >>"$out"
    else
      log "  bench-run.sh failed, see $B_LOGS/bench-run.log"
    fi
  fi
  if ((B_MEMWALK)); then
    log "memwalk: daemon memory over walks of 1,000,000 files"
    local mw=$B_RUN/memwalk.md memwalk_impls=""
    [[ " ${impls[*]} " == *" layerfs "* ]] && memwalk_impls+=layerfs,
    [[ " ${impls[*]} " == *" fo1 "* ]] && memwalk_impls+=fo1,
    if [[ -n $memwalk_impls ]] &&
      LAYERFS_BIN=${B_LAYERFS_BIN:-} FUSE_OVERLAYFS1_BIN=${B_FO1_BIN:-/usr/bin/fuse-overlayfs} \
        "$HELPERS/memwalk.sh" --impls "${memwalk_impls%,}" >"$mw" 2>>"$B_LOGS/memwalk.log"; then
      if [[ -n $out ]]; then
        printf '\n## Daemon memory, 1,000,000-file walk\n\n' >>"$out"
        cat "$mw" >>"$out"
      else
        cat "$mw"
      fi
    else
      log "memwalk failed (see $B_LOGS/memwalk.log)"
    fi
  fi
  [[ -n $out ]] && log "report written to $out"
  log "raw results: $B_WORK/results/$(basename "$B_RUN").results.tsv"
}

if [[ ${1:-} == __cell ]]; then
  # one cell inside a fresh (user+mount) namespace, see --rootless
  shift
  export B_CELL_MODE=1
  trap cleanup EXIT
  trap on_signal INT TERM HUP
  mount --make-rprivate / 2>/dev/null || true
  run_cell "$@"
  exit 0
fi

# bash reads a script while running it: keep main and exit in one compound command, so that
# editing this file during a run cannot make the running instance execute the new text
{
  main "$@"
  exit
}
