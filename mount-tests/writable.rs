//! Writable-layer mount tests (issues 3 and 8): layerfs with an upperdir against kernel
//! overlayfs (mounted with `redirect_dir=on`) as the oracle, on identical copies of each stack
//! under /var/tmp.
//!
//! - `differential_random_ops`: seeded random operation sequences run on both mounts; results,
//!   merged trees and upper dirs must agree (see writable/diff.rs for replay variables).
//! - targeted tests (writable/targeted.rs): whiteouts, rmdir, opaque dirs, `.wh.` names,
//!   copy-up metadata, sparse copy-up, hardlinks, open-unlinked files, long names, EROFS,
//!   O_APPEND, shared mmap, rename rules, permissions as uid 1000.
//! - writable/semantics.rs (issue 8): lower-directory renames by redirect, open files across
//!   copy-up, lower hard links across copy-up and remount (kernel with index=on).
//! - writable/cache.rs (issue 7): writeback-cache semantics (write-only partial pages, appends,
//!   truncate, mtime, SEEK_DATA/SEEK_HOLE, dirty files renamed or unlinked and their names
//!   reused); meant to run with `LAYERFS_TEST_OPTS=writeback=on` and rootless
//!   (scripts/test-rootless.sh).
//! - `crash_safety_kill_9` (writable/crash.rs): SIGKILL of the daemon during heavy copy-up.
//!
//! Needs root and /dev/fuse (else "skipped", unless LAYERFS_REQUIRE_MOUNT_TESTS=1). Inside
//! `unshare -Urm` the kernel side mounts with `userxattr` (no redirects there): only the tests
//! scripts/test-rootless.sh picks make sense.
//! `LAYERFS_WT_SELFTEST=1` mounts the kernel on both sides (validates the tests themselves).

#[path = "writable/cache.rs"]
mod cache;
mod common;
#[path = "writable/crash.rs"]
mod crash;
#[path = "writable/diff.rs"]
mod diff;
#[path = "writable/harness.rs"]
mod harness;
#[path = "writable/semantics.rs"]
mod semantics;
#[path = "writable/targeted.rs"]
mod targeted;

#[test]
fn differential_random_ops() {
    if !harness::init() {
        return;
    }
    diff::differential();
}

#[test]
fn crash_safety_kill_9() {
    if !harness::init() {
        return;
    }
    if harness::under_test() != harness::Impl::Layerfs {
        eprintln!("skipped: the crash test needs a FUSE daemon");
        return;
    }
    crash::crash_safety();
}

#[test]
fn prng_is_deterministic() {
    let a = diff::gen_ops(42, 50);
    let b = diff::gen_ops(42, 50);
    assert!(a == b);
    assert!(diff::gen_ops(43, 50) != a);
}
