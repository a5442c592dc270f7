#!/usr/bin/env bash
# Image store benchmark (issue 4): load a gzip rootfs layer with
# `layerfs import` and compare with the baseline pipeline
# `gzip -dc F | tar -x` plus `sha256sum F` on the same file and machine.
# Goal: within 1.3x of the baseline, and (almost) no work for a layer that
# is already in the store.
#
# Usage: scripts/bench-load.sh [SIZE_MB (default 500)] [WORKDIR (default /var/tmp/layerfs-bench-load)]
# Needs a release build (cargo build --release).
set -euo pipefail
export LC_ALL=C
size_mb=${1:-500}
work=${2:-/var/tmp/layerfs-bench-load}
repo=$(dirname "$(dirname "$(readlink -f "$0")")")
bin="$repo/target/release/layerfs"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$work"
layer="$work/rootfs-${size_mb}M.tar.gz"
if [ ! -f "$layer" ]; then
    # A real-looking rootfs: files from /usr until SIZE_MB of content.
    echo "building $layer ..." >&2
    find /usr -xdev \( -type f -o -type l -o -type d \) -print0 2>/dev/null |
        python3 -c '
import os, sys
limit = int(sys.argv[1]) << 20
total = 0
for p in sys.stdin.buffer.read().split(b"\0"):
    if not p:
        continue
    try:
        st = os.lstat(p)
    except OSError:
        continue
    total += st.st_size if os.path.isfile(p) and not os.path.islink(p) else 0
    sys.stdout.buffer.write(p + b"\0")
    if total > limit:
        break
' "$size_mb" | tar --null --no-recursion -T - -cf - 2>/dev/null | gzip -6 > "$layer"
fi
echo "layer: $layer ($(du -h "$layer" | cut -f1) compressed, $(gzip -dc "$layer" | wc -c | numfmt --to=iec) uncompressed)"
now() { date +%s.%N; }
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
cat "$layer" > /dev/null   # both runs start with the file in the page cache

rm -rf "$work/base" && mkdir "$work/base"
t0=$(now)
gzip -dc "$layer" | tar -x -C "$work/base"
sha256sum "$layer" > /dev/null
t1=$(now)
base=$(echo "$t1 - $t0" | bc)

rm -rf "$work/store"
t0=$(now)
"$bin" --root "$work/store" import -q "$layer" bench:1 > /dev/null
t1=$(now)
ours=$(echo "$t1 - $t0" | bc)

t0=$(now)
"$bin" --root "$work/store" import -q "$layer" bench:2 > /dev/null
t1=$(now)
again=$(echo "$t1 - $t0" | bc)

printf 'baseline (gzip -dc | tar -x; sha256sum): %6.2fs\n' "$base"
printf 'layerfs import:                          %6.2fs  (%.2fx)\n' "$ours" "$(echo "$ours / $base" | bc -l)"
printf 'layerfs import, layer already stored:    %6.2fs\n' "$again"
rm -rf "$work/base" "$work/store"
