#!/usr/bin/env bash
# Runs every check: formatting, lints, unit tests and the mount tests, which
# compare layerfs with kernel overlayfs (they need root and /dev/fuse; here a
# skipped mount test is a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
export LAYERFS_REQUIRE_MOUNT_TESTS=1
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --release
