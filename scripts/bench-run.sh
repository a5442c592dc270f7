#!/usr/bin/env bash
# Start-up cost of the runner: median wall time of `layerfs run --rm IMAGE
# true` (mount, namespaces, exec, exit, unmount, record removed) over N runs,
# beside bubblewrap on the same root filesystem (an extracted directory,
# no union mount) when bwrap is installed. Runs as an ordinary user (the
# current one, or $LAYERFS_TEST_USER when started as root).
#
# Usage: scripts/bench-run.sh [N]     (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-30}
cargo build --release --quiet
bin=$PWD/target/release/layerfs
work=$(mktemp -d /var/tmp/layerfs-bench-run.XXXXXX)
chmod 755 "$work"
as=()
if [ "$(id -u)" = 0 ]; then
    user=${LAYERFS_TEST_USER:-tester}
    chown "$user" "$work"
    as=(setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups)
fi
trap 'rm -rf "$work"' EXIT
scripts/busybox-image.sh "$work/busybox.tar"
chmod 644 "$work/busybox.tar"
"${as[@]}" "$bin" --root "$work/store" import "$work/busybox.tar" bench >/dev/null
"${as[@]}" mkdir "$work/rootfs"
"${as[@]}" tar -xf "$work/busybox.tar" -C "$work/rootfs"

# Median of N runs of a command, in milliseconds.
median_ms() {
    local times=() i s e
    for ((i = 0; i < n; i++)); do
        s=$(date +%s%N)
        "$@" >/dev/null
        e=$(date +%s%N)
        times+=($(((e - s) / 1000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'
}

echo "median of $n runs, ms (as $("${as[@]}" id -un)):"
echo "  layerfs run --rm IMAGE true:        $(median_ms "${as[@]}" "$bin" --root "$work/store" run --rm bench true)"
echo "  layerfs run --rootfs DIR -- true:   $(median_ms "${as[@]}" "$bin" run --rootfs "$work/rootfs" -- true)"
if command -v bwrap >/dev/null; then
    echo "  bwrap (same rootfs, unshare-all):   $(median_ms "${as[@]}" bwrap --unshare-all --bind "$work/rootfs" / \
        --proc /proc --dev /dev --die-with-parent /bin/true)"
else
    echo "  bwrap: not installed (apt-get install bubblewrap)"
fi
