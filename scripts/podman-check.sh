#!/usr/bin/env bash
# Checks layerfs as podman's overlay mount program (containers/storage's
# `mount_program`, the way fuse-overlayfs is used), end to end, in a scratch
# store that is removed afterwards: import a busybox image built from the
# host's static busybox (no network), run a container that creates, deletes,
# chmods and renames an image directory, check `podman diff`, `commit` it, and
# check the committed image in a new container. Every podman call has a time
# limit. Not part of scripts/test.sh (podman is not installed by setup.sh).
#
# Usage: scripts/podman-check.sh            (as root, or as a user with
#                                             /etc/subuid and /etc/subgid ranges)
# Needs: podman, runc (apt-get install podman runc), busybox-static.
# Environment: LAYERFS_BIN (default: target/release/layerfs, built if missing),
# PODMAN_EXTRA (extra global podman options; default: runc, cgroupfs, no events,
# which work on minimal machines and in containers).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v podman >/dev/null || { echo "podman-check: podman is not installed (apt-get install podman runc)" >&2; exit 2; }
bin=${LAYERFS_BIN:-$PWD/target/release/layerfs}
[ -x "$bin" ] || cargo build --release
bin=$(readlink -f "$bin")

work=$(mktemp -d "${TMPDIR:-/var/tmp}/layerfs-podman.XXXXXX")
chmod 755 "$work"
store=(--root "$work/root" --runroot "$work/run" --storage-driver overlay
    --storage-opt "overlay.mount_program=$bin")
read -r -a extra <<<"${PODMAN_EXTRA:---runtime runc --cgroup-manager cgroupfs --events-backend none}"
# Container limits inside what this shell may set (podman's defaults can be
# higher than a sandbox allows).
limits=(--ulimit "nofile=1024:1024" --ulimit "nproc=4096:4096" --net none)
pm() { timeout 120 podman "${store[@]}" "${extra[@]}" "$@"; }
cleanup() {
    pm rm -af >/dev/null 2>&1 || true
    pm rmi -af >/dev/null 2>&1 || true
    timeout 120 podman "${store[@]}" "${extra[@]}" system reset -f >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "podman-check: FAIL: $*" >&2; exit 1; }

scripts/busybox-image.sh "$work/busybox.tar" >/dev/null
pm import -q "$work/busybox.tar" localhost/lfs-check:base >/dev/null
echo "== run ($("$bin" --version | head -n1))"
pm run --name lfs-check "${limits[@]}" localhost/lfs-check:base sh -c \
    'echo hi > /new; rm /bin/ls; chmod 700 /etc/passwd; mv /home /home2; grep " / " /proc/mounts' |
    tee "$work/mounts"
grep -q '^layerfs / fuse' "$work/mounts" || fail "the container's root is not a layerfs mount"

echo "== diff"
pm diff lfs-check | sort | tee "$work/diff"
for want in "A /new" "D /bin/ls" "C /etc/passwd" "D /home" "A /home2"; do
    grep -qx "$want" "$work/diff" || fail "podman diff lacks '$want'"
done

echo "== commit, and a container of the committed image"
pm commit -q lfs-check localhost/lfs-check:next >/dev/null
got=$(pm run --rm "${limits[@]}" localhost/lfs-check:next sh -c \
    'cat /new; [ -e /bin/ls ] || echo no-ls; stat -c %a /etc/passwd; ls -d /home2; [ -e /home ] || echo no-home')
want=$'hi\nno-ls\n700\n/home2\nno-home'
[ "$got" = "$want" ] || fail "committed image shows:"$'\n'"$got"$'\n'"expected:"$'\n'"$want"
pm rm lfs-check >/dev/null
if grep -q " $work/" /proc/mounts; then
    fail "a mount is left under $work"
fi
echo "podman-check: OK"
