//! `layerfs refresh` (issue 8): a lower layer changed directly while mounted.
//!
//! A writable 2-layer mount is listed and stat'ed (so the kernel and the daemon cache names,
//! negative names, attributes and listings), then files and directories are added, removed and
//! rewritten in the lower layers behind its back. The mount keeps showing the old view (the
//! documented behaviour: layers are immutable while mounted); after `layerfs refresh MNT` it
//! must match a fresh kernel overlayfs mount of the same directories (the upper directory
//! mounted as the top lower layer, read-only), and stay writable and consistent.
//!
//! Needs root and /dev/fuse (else "skipped", unless LAYERFS_REQUIRE_MOUNT_TESTS=1).

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{KernelOverlay, Layer, Layerfs, Stack};

fn stack() -> Stack {
    Stack::new(vec![
        Layer::new()
            .dir("a", 0o755)
            .file("a/one", "one\n", 0o644)
            .file("top.txt", "top\n", 0o644)
            .dir("only1", 0o755)
            .file("only1/x", "x\n", 0o644),
        Layer::new()
            .dir("a", 0o755)
            .file("a/two", "two\n", 0o644)
            .dir("a/sub", 0o755)
            .file("a/sub/deep", "deep\n", 0o644)
            .file("base.txt", "base\n", 0o644)
            .dir("b", 0o755)
            .file("b/f", "bf\n", 0o644)
            .dir("gone", 0o755)
            .file("gone/g", "g\n", 0o644)
            .file("modme.txt", "old\n", 0o644),
    ])
}

fn names(p: &Path) -> Vec<OsString> {
    common::list_names(p).unwrap_or_else(|e| panic!("list {}: {e}", p.display()))
}

fn enoent(p: &Path) -> bool {
    fs::symlink_metadata(p).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOENT)
}

fn refresh(mnt: &Path) -> String {
    let out = common::run_layerfs(
        &[OsStr::new("refresh"), mnt.as_os_str()],
        Duration::from_secs(60),
    )
    .expect("run layerfs refresh");
    assert!(
        out.status.success(),
        "layerfs refresh failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The layerfs mount against a fresh kernel overlayfs of `upper:lowers` (read-only).
fn compare_with_fresh_kernel(base: &Path, upper: &Path, lowers: &[std::path::PathBuf], mnt: &Path) {
    let mut layers = vec![upper.to_path_buf()];
    layers.extend(lowers.iter().cloned());
    let k = KernelOverlay::mount(&layers, None, &base.join("mk")).expect("kernel overlay mount");
    let r = common::compare_trees(k.path(), mnt);
    drop(k);
    if let Err(e) = r {
        panic!("kernel (A) vs layerfs (B) after refresh:\n{e}");
    }
    common::check_ino_consistency(mnt).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn refresh_after_lower_layer_changes() {
    // With LAYERFS_BIN pointing at fuse-overlayfs this fails: it has no way
    // to make a running mount see changed lower layers.
    if !common::mount_tests_required() {
        return;
    }
    let dir = common::temp_base();
    let base = dir.path();
    let lowers = common::materialize(&stack(), &base.join("layers"), common::Encoding::KERNEL)
        .expect("materialize");
    let (l1, l2) = (&lowers[0], &lowers[1]);
    let (upper, work) = (base.join("u"), base.join("w"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let f = Layerfs::mount(&lowers, Some((&upper, &work)), &base.join("mf"), &[]).expect("mount");
    let m = f.path().to_path_buf();

    // Some changes through the mount, then everything listed and stat'ed, and a few absent
    // names looked up (the kernel caches them as absent).
    fs::write(m.join("a/two"), "two, copied up\n").unwrap();
    fs::write(m.join("made-through-mount"), "up\n").unwrap();
    let before = common::scan_tree(&m, &common::CompareOptions::default());
    assert!(before.errors.is_empty(), "{:?}", before.errors);
    for ghost in ["ghost", "b/ghost2", "only1/late"] {
        assert!(enoent(&m.join(ghost)), "{ghost} exists before it is made");
    }
    let root_before = names(&m);
    let b_before = names(&m.join("b"));
    let a_before = names(&m.join("a"));

    // Behind the mount's back.
    fs::write(l2.join("ghost"), "ghost\n").unwrap();
    fs::write(l2.join("b/ghost2"), "ghost2\n").unwrap();
    fs::create_dir(l1.join("b")).unwrap();
    fs::write(l1.join("b/from_l1"), "from l1\n").unwrap();
    fs::remove_dir_all(l2.join("gone")).unwrap();
    fs::remove_file(l1.join("a/one")).unwrap();
    fs::write(l2.join("modme.txt"), "new and longer contents\n").unwrap();
    fs::remove_file(l2.join("a/sub/deep")).unwrap();
    fs::write(l2.join("a/sub/newdeep"), "newdeep\n").unwrap();
    fs::write(l1.join("only1/late"), "late\n").unwrap();
    fs::create_dir(l1.join("only1/nd")).unwrap();
    fs::write(l1.join("only1/nd/z"), "z\n").unwrap();

    // The documented behaviour: the mount still shows what it showed.
    assert_eq!(
        names(&m),
        root_before,
        "root listing changed without refresh"
    );
    assert_eq!(
        names(&m.join("b")),
        b_before,
        "b listing changed without refresh"
    );
    assert_eq!(
        names(&m.join("a")),
        a_before,
        "a listing changed without refresh"
    );
    for ghost in ["ghost", "b/ghost2", "only1/late"] {
        assert!(enoent(&m.join(ghost)), "{ghost} visible without refresh");
    }

    let said = refresh(&m);
    eprintln!("{}", said.trim());
    assert!(said.starts_with("refreshed "), "{said}");
    compare_with_fresh_kernel(base, &upper, &lowers, &m);
    for ghost in ["ghost", "b/ghost2", "only1/late", "b/from_l1", "only1/nd/z"] {
        assert!(!enoent(&m.join(ghost)), "{ghost} missing after refresh");
    }
    assert!(enoent(&m.join("gone")) && enoent(&m.join("a/one")));
    assert_eq!(
        fs::read_to_string(m.join("modme.txt")).unwrap(),
        "new and longer contents\n"
    );

    // Still writable where the layers of a directory changed (b now merges l1 and l2).
    fs::write(m.join("b/f"), "bf, copied up after refresh\n").unwrap();
    fs::write(m.join("b/after"), "after\n").unwrap();
    fs::remove_file(m.join("b/ghost2")).unwrap();
    fs::create_dir(m.join("only1/nd/w")).unwrap();
    compare_with_fresh_kernel(base, &upper, &lowers, &m);

    // A second refresh with nothing changed is harmless.
    refresh(&m);
    compare_with_fresh_kernel(base, &upper, &lowers, &m);
}

#[test]
fn refresh_of_something_else_fails() {
    if !common::mount_tests_required() || common::is_fuse_overlayfs() {
        return;
    }
    let dir = common::temp_base();
    let out = common::run_layerfs(
        &[OsStr::new("refresh"), dir.path().as_os_str()],
        Duration::from_secs(30),
    )
    .expect("run layerfs refresh");
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("is not a layerfs mount"),
        "{}",
        out.stderr
    );
}
