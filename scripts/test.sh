#!/usr/bin/env bash
# Runs every check: formatting, lints, unit tests and the mount tests, which
# compare layerfs with kernel overlayfs (they need root and /dev/fuse; here a
# skipped mount test is a failure). The writable suite runs on both request
# transports (io_uring and /dev/fuse) where the kernel has both.
set -euo pipefail
cd "$(dirname "$0")/.."
export LAYERFS_REQUIRE_MOUNT_TESTS=1
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --release
# Requests go through io_uring where setup.sh could switch it on; the writable
# suite runs once more with them on /dev/fuse (the only path before 6.14).
if grep -qs Y /sys/module/fuse/parameters/enable_uring; then
    LAYERFS_TEST_OPTS=uring=off cargo test --release --test writable
fi
