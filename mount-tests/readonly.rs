//! Read-only mount tests: layerfs (or `$LAYERFS_BIN`) against kernel overlayfs as the oracle.
//!
//! Every test materializes its own stack under a fresh tempdir in /var/tmp, twice (kernel
//! encoding for the oracle, the encoding under test for layerfs), mounts both and compares.
//! Run as root; without root or /dev/fuse the tests print "skipped" and pass, unless
//! `LAYERFS_REQUIRE_MOUNT_TESTS=1`.

mod common;

use common::{
    Encoding, Fixture, Layer, OpaqueEncoding, Stack, WhiteoutEncoding, assert_absent,
    assert_exists, errno_name, errno_of, read_string,
};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WHITEOUT_ENCODINGS: [Encoding; 2] = [
    Encoding::new(WhiteoutEncoding::Chardev, OpaqueEncoding::TrustedXattr),
    Encoding::new(WhiteoutEncoding::WhFile, OpaqueEncoding::WhOpqFile),
];

const OPAQUE_ENCODINGS: [Encoding; 4] = [
    Encoding::new(WhiteoutEncoding::Chardev, OpaqueEncoding::TrustedXattr),
    Encoding::new(WhiteoutEncoding::Chardev, OpaqueEncoding::UserXattr),
    Encoding::new(
        WhiteoutEncoding::Chardev,
        OpaqueEncoding::FuseOverlayfsXattr,
    ),
    Encoding::new(WhiteoutEncoding::WhFile, OpaqueEncoding::WhOpqFile),
];

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .ino()
}

fn panic_msg(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs the explicit checks `f` on the kernel mount (they must hold there: that validates the
/// test itself), then the full kernel-vs-layerfs comparison and `f` on the layerfs mount.
/// Returns the layerfs failures, so one run shows all of them.
fn verify(fx: &Fixture, f: impl Fn(&Path)) -> Vec<String> {
    verify_with(fx, &common::CompareOptions::default(), f)
}

fn verify_with(fx: &Fixture, opts: &common::CompareOptions, f: impl Fn(&Path)) -> Vec<String> {
    f(fx.k());
    let mut out = Vec::new();
    let what = format!("{:?}", fx.encoding);
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(fx.f()))) {
        out.push(format!(
            "{what}: explicit check on layerfs: {}",
            panic_msg(e)
        ));
    }
    let t = std::time::Instant::now();
    let r = common::full_compare(&fx.kernel_side(), &fx.layerfs_side(), opts);
    if r.entries > 10_000 {
        eprintln!(
            "{what}: full compare of {} entries: {:?}",
            r.entries,
            t.elapsed()
        );
    }
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.assert_ok())) {
        out.push(format!("{what}: {}", panic_msg(e)));
    }
    out
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ------------------------------------------------------------------------------------------
// Stacks
// ------------------------------------------------------------------------------------------

fn basic_stack() -> Stack {
    let big: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i * 7 % 251) as u8).collect();
    let long_target = "t".repeat(1000);
    let top = Layer::new()
        .dir("d", 0o755)
        .file("d/a", "a1", 0o644)
        .mtime_ns("d/a", 1_000_000_000, 123_456_789)
        .xattr("d", "user.tag", "top")
        .dir("y", 0o750)
        .file("y/inner", "yin", 0o644)
        .symlink("sd", "d")
        .dir("owned", 0o700)
        .file("owned/x", "ox", 0o640)
        .chown("owned", 1234, 1234)
        .chown("owned/x", 1234, 4321)
        .file("top_only", "t", 0o600);
    let mut mid = Layer::new()
        .file("d/a", "a2", 0o644)
        .file("d/b", "b2", 0o600)
        .xattr("d", "user.tag", "middle")
        .xattr("d", "user.mid", "1")
        .file("x", "xfile", 0o644)
        .file("f", "f2", 0o600)
        .chown("f", 1234, 1234)
        .mtime("f", 1_500_000_000)
        .file("hl/one", "hl", 0o644)
        .hardlink("hl/two", "hl/one")
        .file("h2", "h2-mid", 0o644)
        .dir("bin", 0o755)
        .file("bin/su", "#!/bin/false\n", 0o4755)
        .file("bin/sg", "#!/bin/false\n", 0o2755)
        .chown("bin/sg", 0, 1234);
    mid.push(common::Entry::Symlink {
        path: "mid_link".into(),
        target: "../outside/of/mount".into(),
    });
    let bottom = Layer::new()
        .file("d/a", "a3", 0o644)
        .file("d/c", "c3", 0o644)
        .chown("d/c", 1234, 5678)
        .xattr("d", "user.tag", "bottom")
        .file("f", "f3", 0o644)
        .xattr("f", "user.foo", "bar")
        .file("g", "g3", 0o644)
        .xattr("g", "user.foo", "bar")
        .xattr("g", "user.empty", "")
        .xattr("g", "user.bin", [0u8, 1, 2, 255])
        .dir("x", 0o755)
        .file("x/inner", "xin", 0o644)
        .file("y", "yfile", 0o644)
        .symlink("s3", "f")
        .symlink("dangling", "/nonexistent/target")
        .symlink("longlink", &long_target)
        .file("h1", "hh", 0o644)
        .hardlink("h2", "h1")
        .hardlink("h3", "h1")
        .fifo("p", 0o640)
        .dir("tmp", 0o1777)
        .file("tmp/file", "tf", 0o666)
        .dir("sgid", 0o2775)
        .file("zero", "z", 0o000)
        .file("exec", "#!/bin/sh\n", 0o755)
        .file("empty", "", 0o644)
        .file("big", &big, 0o644)
        .mtime("big", 1_234_567_890)
        .mtime("s3", 1_111_111_111)
        .chown("s3", 1234, 1234);
    Stack::new(vec![top, mid, bottom])
}

fn whiteout_stack() -> Stack {
    let top = Layer::new()
        .whiteout("a")
        .whiteout("dir1")
        .whiteout("m/x")
        .file("re", "new", 0o644)
        .dir("rd", 0o755)
        .file("rd/new", "n", 0o644)
        .whiteout("both")
        .file("m/top", "t", 0o644);
    let mid = Layer::new()
        .whiteout("mid")
        .whiteout("re")
        .whiteout("rd")
        .file("m/x", "x2", 0o644)
        .whiteout("m/y")
        .whiteout("ghost")
        .dir("both", 0o755)
        .file("both/in_mid", "1", 0o644)
        .whiteout("wdir/sub");
    let bottom = Layer::new()
        .file("a", "a3", 0o644)
        .file("dir1/f", "f", 0o644)
        .dir("dir1/sub", 0o755)
        .file("mid", "mid3", 0o644)
        .file("m/y", "y3", 0o644)
        .file("m/z", "z3", 0o644)
        .file("re", "old", 0o644)
        .file("rd/old", "o", 0o644)
        .file("both", "file3", 0o644)
        .file("wdir/sub/deep", "d", 0o644)
        .file("wdir/keep", "k", 0o644)
        .whiteout("bottomwh")
        .whiteout("m/bottomwh2");
    Stack::new(vec![top, mid, bottom])
}

fn opaque_stack() -> Stack {
    let top = Layer::new()
        .opaque("o1")
        .file("o1/new", "n", 0o644)
        .file("nest/t1", "1", 0o644)
        .opaque("nest/inner")
        .file("nest/inner/top", "t", 0o644)
        .opaque("empty_opaque");
    let mid = Layer::new()
        .file("o1/l2", "hidden", 0o644)
        .opaque("mid")
        .file("mid/m2", "m2", 0o644)
        .opaque("mid/sub")
        .file("mid/sub/s2", "s2", 0o644)
        .file("nest/inner/l2", "hidden", 0o644)
        .file("nest/t2", "2", 0o644)
        .file("empty_opaque/x", "hidden", 0o644)
        .whiteout("nest/gone");
    let bottom = Layer::new()
        .file("o1/l3", "hidden", 0o644)
        .file("mid/m3", "hidden", 0o644)
        .file("mid/sub/s3", "hidden", 0o644)
        .file("nest/inner/l3", "hidden", 0o644)
        .file("nest/t3", "3", 0o644)
        .file("nest/gone", "hidden", 0o644)
        .opaque("op_bottom")
        .file("op_bottom/c", "visible", 0o644);
    Stack::new(vec![top, mid, bottom])
}

// ------------------------------------------------------------------------------------------
// 0. harness sanity: kernel vs kernel must be identical, including inode numbers
// ------------------------------------------------------------------------------------------

#[test]
fn sanity_kernel_vs_kernel() {
    if !common::mount_tests_required() {
        return;
    }
    for stack in [basic_stack(), whiteout_stack(), opaque_stack()] {
        let dir = common::temp_base();
        let a = common::materialize(&stack, &dir.path().join("a"), Encoding::KERNEL).unwrap();
        let b = common::materialize(&stack, &dir.path().join("b"), Encoding::KERNEL).unwrap();
        let ma = common::KernelOverlay::mount(&a, None, &dir.path().join("ma")).unwrap();
        let mb = common::KernelOverlay::mount(&b, None, &dir.path().join("mb")).unwrap();
        let opts = common::CompareOptions {
            dir_sizes: true,
            dir_nlink: true,
            ..Default::default()
        };
        let r = common::full_compare(
            &common::Side {
                mnt: ma.path(),
                layers: &a,
            },
            &common::Side {
                mnt: mb.path(),
                layers: &b,
            },
            &opts,
        );
        assert!(r.entries >= 8, "too few entries: {}", r.entries);
        if !(r.content.is_empty()
            && r.kernel_consistency.is_empty()
            && r.layerfs_consistency.is_empty()
            && r.ino_nondir.is_empty()
            && r.ino_dir.is_empty())
        {
            panic!("{}", r.summary());
        }
        // The comparison must notice differences: a mount vs one of its own layers differs.
        assert!(common::compare_trees(ma.path(), &a[2]).is_err());
        drop(ma);
        drop(mb);
    }
}

// ------------------------------------------------------------------------------------------
// 1. basic merge
// ------------------------------------------------------------------------------------------

#[test]
fn basic_merge() {
    if !common::mount_tests_required() {
        return;
    }
    let fx = Fixture::new(&basic_stack(), Encoding::KERNEL);
    let failures = verify(&fx, |m| {
        assert_eq!(read_string(m, "d/a"), "a1");
        assert_eq!(read_string(m, "d/b"), "b2");
        assert_eq!(read_string(m, "d/c"), "c3");
        assert_eq!(read_string(m, "f"), "f2");
        assert!(fs::symlink_metadata(m.join("x")).unwrap().is_file());
        assert!(fs::symlink_metadata(m.join("y")).unwrap().is_dir());
        // x is a file in the middle layer: the bottom's x/ is hidden entirely.
        assert_eq!(
            errno_of(&fs::symlink_metadata(m.join("x/inner"))),
            libc::ENOTDIR
        );
        assert_eq!(read_string(m, "y/inner"), "yin");
        assert_eq!(read_string(m, "sd/a"), "a1");
        assert_eq!(read_string(m, "s3"), "f2");
        // Hard links within a layer share st_ino; h2 is overridden by the middle layer.
        assert_eq!(ino(&m.join("h1")), ino(&m.join("h3")));
        assert_ne!(ino(&m.join("h1")), ino(&m.join("h2")));
        assert_eq!(fs::symlink_metadata(m.join("h1")).unwrap().nlink(), 3);
        assert_eq!(ino(&m.join("hl/one")), ino(&m.join("hl/two")));
        let md = fs::symlink_metadata(m.join("bin/su")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o4755);
        assert_eq!(
            fs::symlink_metadata(m.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(fs::symlink_metadata(m.join("owned/x")).unwrap().uid(), 1234);
        assert_eq!(
            common::lgetxattr(&m.join("d"), OsStr::new("user.tag")).unwrap(),
            b"top"
        );
        // Only the topmost directory's xattrs are visible.
        assert_eq!(
            errno_of(&common::lgetxattr(&m.join("d"), OsStr::new("user.mid"))),
            libc::ENODATA
        );
        // The file f of the middle layer has no xattrs; the bottom one's must not leak.
        assert_eq!(
            errno_of(&common::lgetxattr(&m.join("f"), OsStr::new("user.foo"))),
            libc::ENODATA
        );
        assert_eq!(
            common::lgetxattr(&m.join("g"), OsStr::new("user.bin")).unwrap(),
            [0u8, 1, 2, 255]
        );
    });
    assert_no_failures(failures);
}

// ------------------------------------------------------------------------------------------
// 2. whiteouts
// ------------------------------------------------------------------------------------------

#[test]
fn whiteouts() {
    if !common::mount_tests_required() {
        return;
    }
    let mut failures = Vec::new();
    for enc in WHITEOUT_ENCODINGS {
        let fx = Fixture::new(&whiteout_stack(), enc);
        failures.extend(verify(&fx, |m| {
            for gone in [
                "a",
                "dir1",
                "m/x",
                "mid",
                "m/y",
                "ghost",
                "bottomwh",
                "m/bottomwh2",
                "rd/old",
                "wdir/sub",
            ] {
                assert_absent(m, gone);
            }
            assert_eq!(read_string(m, "re"), "new");
            assert_eq!(read_string(m, "rd/new"), "n");
            assert_eq!(read_string(m, "m/z"), "z3");
            assert_eq!(read_string(m, "wdir/keep"), "k");
            assert_eq!(
                common::list_names(&m.join("rd")).unwrap(),
                vec![OsStr::new("new")]
            );
            assert_eq!(
                common::list_names(&m.join("m")).unwrap(),
                vec![OsStr::new("top"), OsStr::new("z")]
            );
            assert_absent(m, "both");
            assert_exists(m, "m/top");
        }));
    }
    assert_no_failures(failures);
}

// ------------------------------------------------------------------------------------------
// 3. opaque directories
// ------------------------------------------------------------------------------------------

#[test]
fn opaque_dirs() {
    if !common::mount_tests_required() {
        return;
    }
    let mut failures = Vec::new();
    for enc in OPAQUE_ENCODINGS {
        let fx = Fixture::new(&opaque_stack(), enc);
        let check = |m: &Path| -> Result<(), String> {
            let mut errs = Vec::new();
            let names = |rel: &str| {
                common::list_names(&m.join(rel))
                    .map_err(|e| format!("{rel}: {e}"))
                    .map(|v| {
                        v.into_iter()
                            .map(|s| s.to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                    })
            };
            let expect = [
                ("o1", vec!["new"]),
                ("mid", vec!["m2", "sub"]),
                ("mid/sub", vec!["s2"]),
                ("nest", vec!["inner", "t1", "t2", "t3"]),
                ("nest/inner", vec!["top"]),
                ("empty_opaque", vec![]),
                ("op_bottom", vec!["c"]),
            ];
            for (d, want) in expect {
                match names(d) {
                    Ok(got) if got == want => {}
                    Ok(got) => errs.push(format!("{}/{d}: {got:?}, want {want:?}", m.display())),
                    Err(e) => errs.push(e),
                }
            }
            // Lookups of hidden names fail too, not only listings.
            for hidden in [
                "o1/l2",
                "o1/l3",
                "mid/m3",
                "mid/sub/s3",
                "nest/inner/l2",
                "nest/inner/l3",
                "empty_opaque/x",
            ] {
                if fs::symlink_metadata(m.join(hidden)).is_ok() {
                    errs.push(format!("{}/{hidden} is visible", m.display()));
                }
            }
            if errs.is_empty() {
                Ok(())
            } else {
                Err(errs.join("\n"))
            }
        };
        check(fx.k()).expect("kernel oracle");
        let xattrs = common::llistxattr(&fx.f().join("o1")).unwrap_or_default();
        if !xattrs.is_empty() {
            eprintln!("{enc:?}: layerfs shows xattrs on opaque dir o1: {xattrs:?}");
        }
        if let Err(e) = check(fx.f()) {
            failures.push(format!("{enc:?}: {e}"));
        }
        let r = fx.compare();
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.assert_ok())) {
            failures.push(format!("{enc:?}: {}", panic_msg(e)));
        }
    }
    assert_no_failures(failures);
}

// ------------------------------------------------------------------------------------------
// 4. .wh.* names never appear
// ------------------------------------------------------------------------------------------

#[test]
fn wh_names_hidden() {
    if !common::mount_tests_required() {
        return;
    }
    let enc = Encoding::new(WhiteoutEncoding::WhFile, OpaqueEncoding::WhOpqFile);
    let mut stack = whiteout_stack();
    stack
        .layers
        .extend(opaque_stack().layers.into_iter().map(|l| {
            // Move the opaque stack's entries under "op/" so both fit in one tree.
            let mut n = Layer::new();
            for e in l.entries {
                n.push(prefix_entry(e, "op/"));
            }
            n
        }));
    let fx = Fixture::new(&stack, enc);
    // Sanity: the layerfs copy really has .wh. files.
    let mut raw = 0;
    for l in &fx.layerfs_layers {
        raw += walk_names(l)
            .iter()
            .filter(|n| n.starts_with(".wh."))
            .count();
    }
    assert!(raw >= 10, "expected .wh. files in the layers, found {raw}");
    let failures = verify(&fx, |m| {
        let names = walk_names(m);
        let wh: Vec<_> = names.iter().filter(|n| n.starts_with(".wh.")).collect();
        assert!(wh.is_empty(), "{} lists .wh. names: {wh:?}", m.display());
        for p in [
            ".wh.a",
            ".wh.dir1",
            "m/.wh.y",
            "m/.wh.x",
            "op/o1/.wh..wh..opq",
            ".wh..wh..opq",
            "op/.wh..wh..opq",
        ] {
            assert_absent(m, p);
        }
    });
    assert_no_failures(failures);
}

fn prefix_entry(e: common::Entry, pre: &str) -> common::Entry {
    use common::Entry::*;
    let p = |s: String| format!("{pre}{s}");
    match e {
        Dir { path, mode } => Dir {
            path: p(path),
            mode,
        },
        File {
            path,
            content,
            mode,
        } => File {
            path: p(path),
            content,
            mode,
        },
        Symlink { path, target } => Symlink {
            path: p(path),
            target,
        },
        Hardlink { path, target } => Hardlink {
            path: p(path),
            target: p(target),
        },
        Fifo { path, mode } => Fifo {
            path: p(path),
            mode,
        },
        Xattr { path, name, value } => Xattr {
            path: p(path),
            name,
            value,
        },
        Whiteout { path } => Whiteout { path: p(path) },
        Opaque { path } => Opaque { path: p(path) },
        Chown { path, uid, gid } => Chown {
            path: p(path),
            uid,
            gid,
        },
        Mtime { path, secs, nsecs } => Mtime {
            path: p(path),
            secs,
            nsecs,
        },
    }
}

/// All names (not paths) in a tree, without following symlinks.
fn walk_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// 5. a directory with 100,000 entries
// ------------------------------------------------------------------------------------------

#[test]
fn huge_directory() {
    if !common::mount_tests_required() {
        return;
    }
    let mut top = Layer::new();
    let mut bottom = Layer::new();
    let mut expect = std::collections::BTreeSet::new();
    // bottom: f000000..f064999; top: f060000..f104999 plus whiteouts of every 13th of 0..60000.
    for i in 0..65_000 {
        bottom.push(common::Entry::File {
            path: format!("big/f{i:06}"),
            content: Vec::new(),
            mode: 0o644,
        });
    }
    for i in 60_000..105_000 {
        top.push(common::Entry::File {
            path: format!("big/f{i:06}"),
            content: b"t".to_vec(),
            mode: 0o644,
        });
    }
    for i in (0..60_000).step_by(13) {
        top.push(common::Entry::Whiteout {
            path: format!("big/f{i:06}"),
        });
    }
    for i in 0..105_000 {
        if i >= 60_000 || i % 13 != 0 {
            expect.insert(format!("f{i:06}"));
        }
    }
    let expected_count = expect.len();
    assert!(expected_count > 100_000);
    let mut failures = Vec::new();
    for enc in WHITEOUT_ENCODINGS {
        let t0 = std::time::Instant::now();
        let fx = Fixture::new_shared(&Stack::new(vec![top.clone(), bottom.clone()]), enc);
        eprintln!("{enc:?}: setup {:?}", t0.elapsed());
        let opts = common::CompareOptions {
            contents: false,
            ..Default::default()
        };
        failures.extend(verify_with(&fx, &opts, |m| {
            let names: Vec<String> = common::list_names(&m.join("big"))
                .unwrap()
                .into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), expected_count, "{}", m.display());
            let got: std::collections::BTreeSet<String> = names.into_iter().collect();
            assert!(got == expect, "{}: listing differs", m.display());
            // Raw getdents with a big buffer must give the same count (no duplicates).
            let raw = common::getdents_small(&m.join("big"), 1 << 16).unwrap();
            assert_eq!(raw.len(), expected_count + 2, "{}", m.display());
            assert_eq!(
                errno_of(&fs::symlink_metadata(m.join("big/f000013"))),
                libc::ENOENT
            );
            assert_eq!(read_string(m, "big/f064999"), "t");
            assert_eq!(read_string(m, "big/f000001"), "");
        }));
    }
    assert_no_failures(failures);
}

// ------------------------------------------------------------------------------------------
// 6. deep paths and many layers
// ------------------------------------------------------------------------------------------

#[test]
fn deep_path_many_layers() {
    if !common::mount_tests_required() {
        return;
    }
    let depth = 20;
    let nlayers = 20;
    let path_to = |k: usize| -> String {
        (0..k)
            .map(|i| format!("d{i:02}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut layers = Vec::new();
    for li in 0..nlayers {
        let mut l = Layer::new()
            .file(&format!("layer{li:02}"), format!("{li}"), 0o644)
            .file("shared", format!("from {li}"), 0o644);
        // Each layer contributes a file at depth li (and the full deep path exists in all).
        l = l.dir(&path_to(depth), 0o755);
        l = l.file(
            &format!("{}/file{li:02}", path_to(li.max(1))),
            format!("{li}"),
            0o644,
        );
        l = l.file(&format!("{}/leaf{li:02}", path_to(depth)), "leaf", 0o644);
        if li == 5 {
            // Hide layer 15's file and make depth 10 opaque (hides layers 9.. below it).
            l = l.whiteout(&format!("{}/file15", path_to(15)));
        }
        if li == 8 {
            l = l.opaque(&path_to(10));
        }
        layers.push(l);
    }
    let fx = Fixture::new(&Stack::new(layers), Encoding::KERNEL);
    let failures = verify(&fx, |m| {
        assert_eq!(read_string(m, "shared"), "from 0");
        assert_eq!(read_string(m, "layer19"), "19");
        assert_eq!(read_string(m, &format!("{}/file09", path_to(9))), "9");
        assert_absent(m, &format!("{}/file15", path_to(15)));
        assert_absent(m, &format!("{}/file12", path_to(12)));
        let leaves = common::list_names(&m.join(path_to(depth))).unwrap();
        assert_eq!(leaves.len(), 9, "{}: {leaves:?}", m.display());
    });
    assert_no_failures(failures);
}

// ------------------------------------------------------------------------------------------
// 7. name length limits
// ------------------------------------------------------------------------------------------

#[test]
fn name_lengths() {
    if !common::mount_tests_required() {
        return;
    }
    let n255a = "a".repeat(255);
    let n255d = "D".repeat(255);
    let n255x = "x".repeat(255);
    let n256 = "b".repeat(256);
    let top = Layer::new()
        .dir(&n255d, 0o755)
        .file(&format!("{n255d}/{n255x}"), "deep", 0o644)
        .file(&format!("m/{n255x}"), "top", 0o644);
    let bottom = Layer::new()
        .file(&n255a, "long", 0o644)
        .file(&format!("{n255d}/below"), "b", 0o644)
        .file("m/short", "s", 0o644)
        .symlink(&format!("m/{}", "l".repeat(255)), &n255a);
    let fx = Fixture::new(&Stack::new(vec![top, bottom]), Encoding::KERNEL);
    let mut failures = verify(&fx, |m| {
        assert_eq!(read_string(m, &n255a), "long");
        assert_eq!(read_string(m, &format!("{n255d}/{n255x}")), "deep");
        assert_eq!(read_string(m, &format!("{n255d}/below")), "b");
    });
    let mut bad = Vec::new();
    let d = "D".repeat(8);
    for (p, what) in [
        (n256.clone(), "<256 b's>".to_string()),
        (format!("m/{n256}"), "m/<256 b's>".to_string()),
        (format!("{n255d}/{n256}"), format!("{d}../<256 b's>")),
        (format!("{n256}/x"), "<256 b's>/x".to_string()),
    ] {
        for m in [fx.k(), fx.f()] {
            let r = fs::symlink_metadata(m.join(&p));
            if errno_of(&r) != libc::ENAMETOOLONG {
                bad.push(format!(
                    "{}: lstat {what}: {}",
                    m.display(),
                    errno_name(errno_of(&r))
                ));
            }
            let r = fs::File::open(m.join(&p));
            if errno_of(&r) != libc::ENAMETOOLONG {
                bad.push(format!(
                    "{}: open {what}: {}",
                    m.display(),
                    errno_name(errno_of(&r))
                ));
            }
        }
    }
    failures.extend(
        bad.into_iter()
            .map(|b| format!("expected ENAMETOOLONG: {b}")),
    );
    assert_no_failures(failures);
}

// ------------------------------------------------------------------------------------------
// 8. readdir in small chunks
// ------------------------------------------------------------------------------------------

#[test]
fn readdir_small_chunks() {
    if !common::mount_tests_required() {
        return;
    }
    let mut top = Layer::new();
    let mut bottom = Layer::new();
    for i in 0..3000 {
        bottom.push(common::Entry::File {
            path: format!("d/entry-{i:05}"),
            content: Vec::new(),
            mode: 0o644,
        });
    }
    for i in 2500..5300 {
        top.push(common::Entry::File {
            path: format!("d/entry-{i:05}"),
            content: Vec::new(),
            mode: 0o644,
        });
    }
    for i in (0..2500).step_by(12) {
        top.push(common::Entry::Whiteout {
            path: format!("d/entry-{i:05}"),
        });
    }
    let expected: Vec<String> = (0..5300)
        .filter(|i| *i >= 2500 || i % 12 != 0)
        .map(|i| format!("entry-{i:05}"))
        .collect();
    assert!(expected.len() >= 5000);
    let check = |m: &Path| -> Vec<String> {
        let mut errs = Vec::new();
        let dir = m.join("d");
        let sorted_unique = |mut v: Vec<String>, what: &str, errs: &mut Vec<String>| {
            v.retain(|n| n != "." && n != "..");
            let n = v.len();
            v.sort();
            v.dedup();
            if n != v.len() {
                errs.push(format!("{what}: {} duplicate entries", n - v.len()));
            }
            if v != expected {
                errs.push(format!(
                    "{what}: listing differs ({} names, expected {})",
                    v.len(),
                    expected.len()
                ));
            }
        };
        let ents = match common::libc_readdir(&dir) {
            Ok(e) => e,
            Err(e) => return vec![format!("readdir: {e}")],
        };
        let names = ents
            .iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect();
        sorted_unique(names, "libc readdir", &mut errs);
        let mut bad_ino = Vec::new();
        for e in &ents {
            if e.name != "." && e.name != ".." {
                let st = fs::symlink_metadata(dir.join(&e.name)).map(|m| m.ino());
                if st.as_ref().ok() != Some(&e.ino) {
                    bad_ino.push(format!("{:?}: d_ino {} st_ino {st:?}", e.name, e.ino));
                }
            }
        }
        if !bad_ino.is_empty() {
            errs.push(format!(
                "{} entries with d_ino != st_ino, e.g. {}",
                bad_ino.len(),
                bad_ino[..bad_ino.len().min(3)].join(", ")
            ));
        }
        // Raw getdents64 with tiny buffers (1-4 entries per call).
        for bufsize in [40usize, 64, 128] {
            match common::getdents_small(&dir, bufsize) {
                Ok(raw) => {
                    let rn = raw
                        .iter()
                        .map(|e| e.0.to_string_lossy().into_owned())
                        .collect();
                    sorted_unique(rn, &format!("getdents64 bufsize {bufsize}"), &mut errs);
                }
                Err(e) => errs.push(format!("getdents64 bufsize {bufsize}: {e}")),
            }
        }
        // telldir/seekdir: resuming at a recorded position yields the same sequence.
        for idx in [0usize, 1, 1000, 2501, ents.len() - 1] {
            let want: Vec<_> = ents[idx..(idx + 50).min(ents.len())]
                .iter()
                .map(|e| e.name.clone())
                .collect();
            match common::libc_readdir_from(&dir, ents[idx].pos, 50) {
                Ok(got) if got == want => {}
                Ok(got) => errs.push(format!(
                    "seekdir to entry {idx}: got {:?}.., want {:?}..",
                    got.first(),
                    want.first()
                )),
                Err(e) => errs.push(format!("seekdir to entry {idx}: {e}")),
            }
        }
        errs
    };
    let mut failures = Vec::new();
    for enc in WHITEOUT_ENCODINGS {
        let fx = Fixture::new(&Stack::new(vec![top.clone(), bottom.clone()]), enc);
        let k = check(fx.k());
        assert!(k.is_empty(), "kernel: {}", k.join("\n"));
        failures.extend(check(fx.f()).into_iter().map(|e| format!("{enc:?}: {e}")));
        failures.extend(verify(&fx, |_| {}));
    }
    assert_no_failures(failures);
}

// ------------------------------------------------------------------------------------------
// 9. writes fail with EROFS on a read-only mount
// ------------------------------------------------------------------------------------------

#[test]
fn readonly_mount_erofs() {
    if !common::mount_tests_required() {
        return;
    }
    let top = Layer::new()
        .file("f", "top", 0o644)
        .dir("d", 0o755)
        .file("d/x", "x", 0o644);
    let bottom = Layer::new().file("g", "g", 0o644).file("d/y", "y", 0o644);
    let fx = Fixture::new(&Stack::new(vec![top, bottom]), Encoding::KERNEL);
    type Op = Box<dyn Fn(&Path) -> i32>;
    let ops: Vec<(&str, Op)> = vec![
        (
            "create",
            Box::new(|m: &Path| errno_of(&fs::File::create(m.join("new")))),
        ),
        (
            "create in subdir",
            Box::new(|m: &Path| errno_of(&fs::File::create(m.join("d/new")))),
        ),
        (
            "open existing for write",
            Box::new(|m: &Path| errno_of(&fs::OpenOptions::new().write(true).open(m.join("f")))),
        ),
        (
            "mkdir",
            Box::new(|m: &Path| errno_of(&fs::create_dir(m.join("nd")))),
        ),
        (
            "unlink",
            Box::new(|m: &Path| errno_of(&fs::remove_file(m.join("f")))),
        ),
        (
            "unlink lower",
            Box::new(|m: &Path| errno_of(&fs::remove_file(m.join("d/y")))),
        ),
        (
            "rmdir",
            Box::new(|m: &Path| errno_of(&fs::remove_dir(m.join("d")))),
        ),
        (
            "chmod",
            Box::new(|m: &Path| {
                errno_of(&fs::set_permissions(
                    m.join("g"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                ))
            }),
        ),
        (
            "chown",
            Box::new(|m: &Path| errno_of(&std::os::unix::fs::chown(m.join("g"), Some(1), None))),
        ),
        (
            "rename",
            Box::new(|m: &Path| errno_of(&fs::rename(m.join("f"), m.join("f2")))),
        ),
        (
            "symlink",
            Box::new(|m: &Path| errno_of(&std::os::unix::fs::symlink("x", m.join("sl")))),
        ),
        (
            "link",
            Box::new(|m: &Path| errno_of(&fs::hard_link(m.join("g"), m.join("g2")))),
        ),
        (
            "setxattr",
            Box::new(|m: &Path| errno_of(&common::lsetxattr(&m.join("g"), "user.x", b"1"))),
        ),
        (
            "truncate",
            Box::new(|m: &Path| {
                let c = common::cpath(&m.join("g"));
                let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
                if rc == 0 {
                    0
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap()
                }
            }),
        ),
    ];
    let mut bad = Vec::new();
    for (name, op) in &ops {
        let k = op(fx.k());
        let f = op(fx.f());
        if k != libc::EROFS || f != libc::EROFS {
            bad.push(format!(
                "{name}: kernel {} layerfs {}",
                errno_name(k),
                errno_name(f)
            ));
        }
    }
    assert!(bad.is_empty(), "expected EROFS:\n{}", bad.join("\n"));
    // Nothing changed.
    fx.compare().assert_ok();
    assert_eq!(read_string(fx.f(), "f"), "top");
}

// ------------------------------------------------------------------------------------------
// 10. command line
// ------------------------------------------------------------------------------------------

/// Runs the binary expecting failure; never leaves a mount behind.
fn expect_cli_failure(args: &[&OsStr], mnt: &Path) -> Result<common::RunOutput, String> {
    let out = common::run_layerfs(args, Duration::from_secs(30))?;
    let mounted = common::is_mounted(mnt);
    if mounted {
        common::unmount(mnt, true)?;
    }
    if out.status.success() || mounted {
        return Err(format!(
            "{args:?} should fail (status {}, mounted {mounted})\nstderr: {}",
            out.status, out.stderr
        ));
    }
    Ok(out)
}

#[test]
fn cli_errors() {
    if !common::mount_tests_required() {
        return;
    }
    let dir = common::temp_base();
    let base = fs::canonicalize(dir.path()).unwrap();
    let layers = common::materialize(
        &Stack::new(vec![
            Layer::new().file("a", "1", 0o644).dir("mnt", 0o755),
            Layer::new().file("b", "2", 0o644),
        ]),
        &base.join("layers"),
        Encoding::KERNEL,
    )
    .unwrap();
    let mnt = base.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let lower = format!("lowerdir={}:{}", layers[0].display(), layers[1].display());
    let mut failures = Vec::new();

    // Unknown option.
    match expect_cli_failure(
        &[
            OsStr::new("-o"),
            OsStr::new(&format!("{lower},bogus=1")),
            mnt.as_os_str(),
        ],
        &mnt,
    ) {
        Ok(out) if !out.stderr.contains("bogus") => failures.push(format!(
            "unknown option: message does not name it: {}",
            out.stderr
        )),
        Ok(_) => {}
        Err(e) => failures.push(format!("unknown option: {e}")),
    }

    // Missing lower dir.
    let missing = base.join("does-not-exist");
    match expect_cli_failure(
        &[
            OsStr::new("-o"),
            OsStr::new(&format!("{lower}:{}", missing.display())),
            mnt.as_os_str(),
        ],
        &mnt,
    ) {
        Ok(out) if !out.stderr.contains(&*missing.to_string_lossy()) => failures.push(format!(
            "missing lowerdir: message does not name {}: {}",
            missing.display(),
            out.stderr
        )),
        Ok(_) => {}
        Err(e) => failures.push(format!("missing lowerdir: {e}")),
    }

    // Work directory inside the upper directory (layerfs only; kernel overlayfs refuses it too:
    // the work files would show in the merged view).
    if !common::is_fuse_overlayfs() {
        let upper = base.join("upper");
        let work = upper.join("work");
        fs::create_dir_all(&work).unwrap();
        let opts = format!(
            "{lower},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        match expect_cli_failure(
            &[OsStr::new("-o"), OsStr::new(&opts), mnt.as_os_str()],
            &mnt,
        ) {
            Ok(out) if !out.stderr.contains("separate subtrees") => failures.push(format!(
                "workdir inside upperdir: message does not say so: {}",
                out.stderr
            )),
            Ok(_) => {}
            Err(e) => failures.push(format!("workdir inside upperdir: {e}")),
        }
    }

    // Mount point inside a layer (layerfs only: fuse-overlayfs accepts this).
    if common::is_fuse_overlayfs() {
        eprintln!("skipping mountpoint-inside-layer check for fuse-overlayfs");
    } else {
        let inner = layers[0].join("mnt");
        let l0 = layers[0].to_string_lossy();
        let i0 = inner.to_string_lossy();
        match expect_cli_failure(
            &[OsStr::new("-o"), OsStr::new(&lower), inner.as_os_str()],
            &inner,
        ) {
            Ok(out) => {
                // The inner path contains the layer path, so require the layer path on its own.
                let names_layer = out.stderr.replace(&*i0, "").contains(&*l0);
                if !out.stderr.contains(&*i0) || !names_layer {
                    failures.push(format!(
                        "mountpoint inside layer: message should name {i0} and {l0}: {}",
                        out.stderr
                    ));
                }
            }
            Err(e) => failures.push(format!("mountpoint inside layer: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Removes the /usr/local/bin/layerfs symlink on drop if we created it.
struct PathLink(Option<PathBuf>);

impl Drop for PathLink {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// `mount -t fuse.layerfs layerfs MNT -o lowerdir=...` via mount.fuse3. mount.fuse3 resets PATH
/// to the system directories, so this temporarily creates /usr/local/bin/layerfs -> the binary
/// under test (only if nothing exists there; it is removed afterwards). Skipped for
/// fuse-overlayfs and when /usr/local/bin/layerfs already exists and is not our binary.
#[test]
fn mount_helper_fuse_type() {
    if !common::mount_tests_required() {
        return;
    }
    if common::is_fuse_overlayfs() {
        eprintln!("skipped: mount -t fuse.layerfs is layerfs-only");
        return;
    }
    if !Path::new("/usr/sbin/mount.fuse3").exists() && !Path::new("/sbin/mount.fuse3").exists() {
        eprintln!("skipped: no mount.fuse3");
        return;
    }
    let bin = fs::canonicalize(common::layerfs_bin().unwrap()).unwrap();
    let link = Path::new("/usr/local/bin/layerfs");
    let _guard = match fs::symlink_metadata(link) {
        Ok(_) => {
            if fs::canonicalize(link).ok().as_deref() != Some(bin.as_path()) {
                eprintln!(
                    "skipped: {} exists and is not {}",
                    link.display(),
                    bin.display()
                );
                return;
            }
            PathLink(None)
        }
        Err(_) => {
            fs::create_dir_all("/usr/local/bin").unwrap();
            std::os::unix::fs::symlink(&bin, link).unwrap();
            PathLink(Some(link.to_path_buf()))
        }
    };
    let dir = common::temp_base();
    let base = fs::canonicalize(dir.path()).unwrap();
    let stack = Stack::new(vec![
        Layer::new().file("a", "top", 0o644),
        Layer::new()
            .file("a", "bottom", 0o644)
            .file("b", "b", 0o644),
    ]);
    let layers = common::materialize(&stack, &base.join("layers"), Encoding::KERNEL).unwrap();
    let mnt = base.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let lower = format!("lowerdir={}:{}", layers[0].display(), layers[1].display());
    let out = std::process::Command::new("mount")
        .args(["-t", "fuse.layerfs", "layerfs"])
        .arg(&mnt)
        .args(["-o", &lower])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let mounted = common::is_mounted(&mnt);
    let result = (|| -> Result<(), String> {
        if !out.status.success() {
            return Err(format!(
                "mount -t fuse.layerfs failed: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !mounted {
            return Err("mount returned success but nothing is mounted".into());
        }
        let a = fs::read_to_string(mnt.join("a")).map_err(|e| e.to_string())?;
        let b = fs::read_to_string(mnt.join("b")).map_err(|e| e.to_string())?;
        if a != "top" || b != "b" {
            return Err(format!("wrong contents: a={a:?} b={b:?}"));
        }
        Ok(())
    })();
    let un = common::unmount(&mnt, true);
    result.unwrap();
    un.unwrap();
}

// ------------------------------------------------------------------------------------------
// max_inodes: the daemon's node table stays bounded over walks of many files
// ------------------------------------------------------------------------------------------

/// `layerfs stats --json` of a live mount.
fn mount_stats(mnt: &Path) -> serde_json::Value {
    let out = common::run_layerfs(
        &[OsStr::new("stats"), OsStr::new("--json"), mnt.as_os_str()],
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(out.status.success(), "layerfs stats: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// Kills (by pid) and reaps a child process this test started.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unmounts a bind mount this test made.
struct BindGuard(PathBuf);

impl Drop for BindGuard {
    fn drop(&mut self) {
        if let Err(e) = common::unmount(&self.0, false) {
            eprintln!("error: {e}");
        }
    }
}

fn stat_u64(s: &serde_json::Value, key: &str) -> u64 {
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in stats: {s}"))
}

#[test]
fn max_inodes_bounds_nodes() {
    if !common::mount_tests_required() || common::is_fuse_overlayfs() {
        return;
    }
    const DIRS: usize = 20;
    const PER_DIR: usize = 1000;
    const MAX: u64 = 1000;
    let base = common::temp_base();
    // Two layers, so that every directory is merged: the top one holds a
    // few files of each directory with other contents.
    let (top, bottom) = (base.path().join("top"), base.path().join("bottom"));
    for d in 0..DIRS {
        fs::create_dir_all(top.join(format!("d{d:02}"))).unwrap();
        fs::create_dir_all(bottom.join(format!("d{d:02}"))).unwrap();
        for f in 0..PER_DIR {
            let name = format!("d{d:02}/f{f:04}");
            if f % 100 == 7 {
                fs::write(top.join(&name), format!("top {name}")).unwrap();
            }
            fs::write(bottom.join(&name), &name).unwrap();
        }
    }
    let content = |d: usize, f: usize| {
        let name = format!("d{d:02}/f{f:04}");
        match f % 100 {
            7 => format!("top {name}"),
            _ => name,
        }
    };
    let mnt = base.path().join("mnt");
    let m = common::Layerfs::mount(
        &[top.clone(), bottom.clone()],
        None,
        &mnt,
        &[&format!("max_inodes={MAX}")],
    )
    .unwrap();
    let mnt = m.path().to_path_buf();
    // One layer filesystem: the merged inode numbers are the layers' own.
    let probe = mnt.join("d00/f0000");
    let probe_ino = ino(&probe);
    assert_eq!(probe_ino, ino(&bottom.join("d00/f0000")));
    // What the kernel must keep however old: a working directory, an open
    // file, a bind mount on a file of the mount (a container runtime's
    // /etc/resolv.conf). Guards drop in reverse order: these go first.
    let cwd = mnt.join("d01");
    let sleeper = ChildGuard(
        std::process::Command::new("sleep")
            .arg("600")
            .current_dir(&cwd)
            .spawn()
            .unwrap(),
    );
    let mut open_file = fs::File::open(mnt.join("d03/f0003")).unwrap();
    let bind_src = base.path().join("bind-src");
    fs::write(&bind_src, "D02/F0002").unwrap();
    let bind_target = mnt.join("d02/f0002");
    let st = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&bind_src)
        .arg(&bind_target)
        .status()
        .unwrap();
    assert!(st.success(), "mount --bind");
    let bind = BindGuard(bind_target.clone());

    let mut peak = 0;
    for walk in 0..2 {
        for d in 0..DIRS {
            let dir = mnt.join(format!("d{d:02}"));
            let mut names: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let want: Vec<String> = (0..PER_DIR).map(|f| format!("f{f:04}")).collect();
            assert_eq!(names, want, "walk {walk}: listing of {}", dir.display());
            for f in 0..PER_DIR {
                let p = dir.join(format!("f{f:04}"));
                let md = fs::symlink_metadata(&p).unwrap();
                let c = content(d, f);
                assert_eq!(md.len(), c.len() as u64, "{}", p.display());
                let layer = if f % 100 == 7 { &top } else { &bottom };
                let rel = format!("d{d:02}/f{f:04}");
                if f % 97 == 0 {
                    assert_eq!(md.ino(), ino(&layer.join(&rel)), "inode of {rel}");
                    assert_eq!(fs::read_to_string(&p).unwrap(), c, "contents of {rel}");
                }
            }
            peak = peak.max(stat_u64(&mount_stats(&mnt), "inodes"));
        }
        // The pruner works behind the walk: the table gets back under the
        // bound once it has caught up.
        let settled = common::wait_until(Duration::from_secs(10), || {
            stat_u64(&mount_stats(&mnt), "inodes") <= MAX
        });
        let s = mount_stats(&mnt);
        assert!(settled, "walk {walk}: node table not bounded: {s}");
    }
    // Behind by at most a directory or two, never the whole tree.
    assert!(
        peak < (DIRS * PER_DIR) as u64 / 4,
        "peak of {peak} nodes for a bound of {MAX}"
    );
    let s = mount_stats(&mnt);
    assert!(stat_u64(&s, "prune_requests") > 0, "{s}");
    // The probe was forgotten (the kernel asks for it again) and keeps its
    // inode number.
    let before = stat_u64(&s, "lookups");
    assert_eq!(ino(&probe), probe_ino);
    assert_eq!(fs::read_to_string(&probe).unwrap(), "d00/f0000");
    let after = stat_u64(&mount_stats(&mnt), "lookups");
    assert!(after > before, "d00/f0000 was never forgotten");
    // Nothing in use was dropped.
    let link = fs::read_link(format!("/proc/{}/cwd", sleeper.0.id())).unwrap();
    assert_eq!(link, cwd, "working directory of a process in the mount");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut open_file, &mut s).unwrap();
    assert_eq!(s, "d03/f0003");
    assert!(common::is_mounted(&bind_target), "bind mount detached");
    assert_eq!(fs::read_to_string(&bind_target).unwrap(), "D02/F0002");
    drop((bind, open_file, sleeper));
    drop(m);
}
