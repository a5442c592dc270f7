#!/usr/bin/env bash
# Installs what layerfs needs to build and test on Debian 12: the FUSE 3
# userspace tools (fusermount3, mount.fuse3), attr tools for debugging, the
# runner's needs (newuidmap/newgidmap from uidmap, a static busybox for the
# test and demo images, script(1) from bsdutils for -t tests), an
# unprivileged user for the runner tests ($LAYERFS_TEST_USER, default
# tester, with a subordinate id range), skopeo for the save tests, and the
# cargo components the checks
# use; switches on the fuse module's io_uring transport where the kernel has
# it. Idempotent; run as root.
set -euo pipefail

pkgs=(fuse3 attr uidmap busybox-static bsdutils skopeo)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# /dev/fuse must be usable by the daemon (udev makes it 0666 on most machines).
[ -e /dev/fuse ] || mknod /dev/fuse c 10 229
chmod 666 /dev/fuse
modprobe overlay 2>/dev/null || true
# FUSE over io_uring (Linux 6.14+): requests are served on the CPU that made
# them (layerfs `-o uring`, on by default when the kernel offers it). The
# fuse module ships with it switched off; mounts made before keep /dev/fuse.
uring=/sys/module/fuse/parameters/enable_uring
[ -w "$uring" ] && echo Y >"$uring" || true
# The runner tests run as an ordinary user, with ids 1-65536 of their
# containers mapped to a subordinate range.
test_user=${LAYERFS_TEST_USER:-tester}
id "$test_user" >/dev/null 2>&1 || useradd -m "$test_user"
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    grep -q "^$test_user:" "$f" || usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$test_user" 2>/dev/null ||
        echo "$test_user:200000:65536" >>"$f"
done
# Unprivileged user namespaces (on by default on Debian 12; some kernels gate them).
[ -w /proc/sys/kernel/unprivileged_userns_clone ] && echo 1 >/proc/sys/kernel/unprivileged_userns_clone || true
if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
