#!/usr/bin/env bash
# Runs the writable mount tests in the cache mode of rootless mounts: the kernel's FUSE
# writeback cache (no passthrough in a user namespace).
#
# 1. As root with `-o writeback=on` (LAYERFS_TEST_OPTS): the whole writable suite, which
#    compares layerfs with kernel overlayfs.
# 2. Inside `unshare -Urm` (how podman/buildah run fuse-overlayfs), where writeback is the
#    default: the tests whose fixtures work there. The kernel side mounts with `userxattr`,
#    which has no redirects and reads user.overlay.*; fixtures that set trusted.* xattrs or
#    chown to ids the namespace cannot map cannot be built there, so those tests are left out.
#
# Needs root and /dev/fuse (scripts/setup.sh). Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export LAYERFS_REQUIRE_MOUNT_TESTS=1

# The tests that make sense in a user namespace (see above).
ROOTLESS_TESTS=(
  cache::
  targeted::erofs_without_upperdir
  targeted::fstat_of_open_unlinked_file
  targeted::hardlinks_in_upper
  targeted::lower_hardlinks_stay_linked_after_copy_up
  targeted::mkdir_over_whiteout_is_opaque
  targeted::names_of_255_bytes
  targeted::o_append_semantics
  targeted::shared_writable_mmap
  targeted::sparse_copy_up_stays_sparse
  targeted::unlink_lower_file_writes_whiteout_without_copy_up
  targeted::whiteout_names_are_refused
  semantics::new_mapping_after_copy_up_sees_new_data
  semantics::open_files_follow_copy_up
)

cargo build --release
bin=$(cargo test --release --test writable --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*writable-[^"]*\)".*/\1/p' | tail -n1)
[[ -x $bin ]] || { echo "test-rootless: could not find the writable test binary" >&2; exit 1; }
export LAYERFS_BIN=$PWD/target/release/layerfs

echo "== as root, -o writeback=on: the writable suite"
LAYERFS_TEST_OPTS=writeback=on "$bin" --test-threads=2 "$@"

echo "== inside unshare -Urm (writeback by default)"
# The namespace's root is host root (0 -> 0), so the test's files under /var/tmp stay usable
# from outside and are cleaned up by the tests themselves.
unshare -Urm --propagation private -- "$bin" --test-threads=1 "$@" "${ROOTLESS_TESTS[@]}"
