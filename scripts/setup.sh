#!/usr/bin/env bash
# Installs what layerfs needs to build and test on Debian 12: the FUSE 3
# userspace tools (fusermount3, mount.fuse3), attr tools for debugging, and
# the cargo components the checks use. Idempotent; run as root.
set -euo pipefail

pkgs=(fuse3 attr)
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
if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
