//! Hostile-input tests of layer extraction (one per attack in issue 4),
//! plus the metadata extraction must keep. Each test extracts into
//! `T/layer` next to `T/outside` and checks that nothing outside changed.

mod store_fixtures;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use layerfs::store::extract::{ExtractError, ExtractOptions, ExtractStats, Limits, extract};
use store_fixtures::*;
use tar::EntryType;

struct Run {
    _t: tempfile::TempDir,
    layer: PathBuf,
    outside: PathBuf,
    result: Result<ExtractStats, ExtractError>,
}

fn run_with(tar: &[u8], privileged: bool, limits: Limits) -> Run {
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    let outside = t.path().join("outside");
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("file"), "original").unwrap();
    let fd = layerfs::sys::open_dir_path(&layer).unwrap();
    let result = extract(tar, fd.as_fd(), ExtractOptions { limits, privileged });
    Run {
        _t: t,
        layer,
        outside,
        result,
    }
}

fn run(tar: &[u8]) -> Run {
    run_with(tar, true, Limits::default())
}

impl Run {
    fn outside_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("file")],
            "outside dir changed"
        );
        assert_eq!(
            fs::read_to_string(self.outside.join("file")).unwrap(),
            "original"
        );
        let parent: Vec<_> = fs::read_dir(self.layer.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut parent = parent;
        parent.sort();
        assert_eq!(
            parent,
            vec!["layer", "outside"],
            "something written next to the layer"
        );
    }

    fn err(&self) -> String {
        match &self.result {
            Ok(_) => panic!("extraction succeeded"),
            Err(e) => e.to_string(),
        }
    }
}

fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    finish(b)
}

fn rel_outside(depth: usize) -> String {
    format!("{}outside", "../".repeat(depth))
}

#[test]
fn dotdot_traversal_is_refused() {
    let t = tar_of(|b| raw(b, b"../outside/evil", EntryType::Regular, b"", b"x", 0o644));
    let r = run(&t);
    assert!(
        matches!(r.result, Err(ExtractError::Traversal { .. })),
        "{:?}",
        r.result
    );
    assert!(r.err().contains("../outside/evil"));
    r.outside_untouched();
    let t = tar_of(|b| {
        raw(
            b,
            b"a/../../outside/evil",
            EntryType::Regular,
            b"",
            b"x",
            0o644,
        )
    });
    let r = run(&t);
    assert!(matches!(r.result, Err(ExtractError::Traversal { .. })));
    r.outside_untouched();
}

#[test]
fn absolute_paths_stay_inside() {
    let abs = format!("{}/evil", std::env::temp_dir().display());
    let t = tar_of(|b| raw(b, abs.as_bytes(), EntryType::Regular, b"", b"x", 0o644));
    let r = run(&t);
    r.result.as_ref().unwrap();
    let inside = r.layer.join(abs.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(inside).unwrap(), "x");
    r.outside_untouched();
}

#[test]
fn write_through_relative_symlink_is_refused() {
    let target = rel_outside(1);
    let t = tar_of(|b| {
        raw(
            b,
            b"link",
            EntryType::Symlink,
            target.as_bytes(),
            b"",
            0o777,
        );
        raw(b, b"link/evil", EntryType::Regular, b"", b"x", 0o644);
    });
    let r = run(&t);
    assert!(
        matches!(r.result, Err(ExtractError::ThroughSymlink { .. })),
        "{:?}",
        r.result
    );
    assert!(r.err().contains("link/evil"));
    r.outside_untouched();
}

#[test]
fn write_through_absolute_symlink_is_refused() {
    let t0 = tempfile::tempdir().unwrap();
    let target = t0.path().to_string_lossy().into_owned();
    let t = tar_of(|b| {
        raw(b, b"d", EntryType::Directory, b"", b"", 0o755);
        raw(
            b,
            b"d/link",
            EntryType::Symlink,
            target.as_bytes(),
            b"",
            0o777,
        );
        raw(b, b"d/link/evil", EntryType::Regular, b"", b"x", 0o644);
    });
    let r = run(&t);
    assert!(
        matches!(r.result, Err(ExtractError::ThroughSymlink { .. })),
        "{:?}",
        r.result
    );
    assert_eq!(fs::read_dir(t0.path()).unwrap().count(), 0);
    r.outside_untouched();
}

#[test]
fn write_through_symlink_chain_is_refused() {
    let t = tar_of(|b| {
        raw(b, b"a", EntryType::Symlink, b"b", b"", 0o777);
        raw(b, b"b", EntryType::Symlink, b"c/..", b"", 0o777);
        raw(b, b"c", EntryType::Symlink, b"../outside", b"", 0o777);
        raw(b, b"a/evil", EntryType::Regular, b"", b"x", 0o644);
        raw(b, b"c/evil2", EntryType::Directory, b"", b"", 0o755);
    });
    let r = run(&t);
    assert!(
        matches!(r.result, Err(ExtractError::ThroughSymlink { .. })),
        "{:?}",
        r.result
    );
    r.outside_untouched();
}

#[test]
fn file_over_symlink_replaces_the_symlink() {
    let target = format!("{}/file", rel_outside(1));
    let t = tar_of(|b| {
        raw(
            b,
            b"link",
            EntryType::Symlink,
            target.as_bytes(),
            b"",
            0o777,
        );
        raw(b, b"link", EntryType::Regular, b"", b"replaced", 0o644);
    });
    let r = run(&t);
    r.result.as_ref().unwrap();
    let m = fs::symlink_metadata(r.layer.join("link")).unwrap();
    assert!(m.is_file());
    assert_eq!(
        fs::read_to_string(r.layer.join("link")).unwrap(),
        "replaced"
    );
    r.outside_untouched();
}

#[test]
fn hardlink_outside_is_refused() {
    for target in [
        format!("{}/file", rel_outside(1)),
        "/etc/passwd".to_string(),
    ] {
        let t = tar_of(|b| raw(b, b"h", EntryType::Link, target.as_bytes(), b"", 0o644));
        let r = run(&t);
        assert!(
            matches!(r.result, Err(ExtractError::BadHardlink { .. })),
            "{target}: {:?}",
            r.result
        );
        assert!(r.err().contains(&target));
        r.outside_untouched();
    }
}

#[test]
fn hardlink_through_symlink_is_refused() {
    let t = tar_of(|b| {
        raw(b, b"dl", EntryType::Symlink, b"../outside", b"", 0o777);
        raw(b, b"h", EntryType::Link, b"dl/file", b"", 0o644);
    });
    let r = run(&t);
    assert!(
        matches!(r.result, Err(ExtractError::BadHardlink { .. })),
        "{:?}",
        r.result
    );
    assert!(r.err().contains("symlink"), "{}", r.err());
    r.outside_untouched();
    // A hard link to a symlink links the symlink itself: allowed, contained.
    let t = tar_of(|b| {
        raw(b, b"sl", EntryType::Symlink, b"../outside/file", b"", 0o777);
        raw(b, b"h", EntryType::Link, b"sl", b"", 0o644);
    });
    let r = run(&t);
    r.result.as_ref().unwrap();
    assert!(
        fs::symlink_metadata(r.layer.join("h"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    r.outside_untouched();
}

#[test]
fn pax_path_traversal_is_refused() {
    let t = tar_of(|b| {
        b.append_pax_extensions([("path", &b"../../outside/pax-evil"[..])])
            .unwrap();
        raw(b, b"innocent", EntryType::Regular, b"", b"x", 0o644);
    });
    let r = run(&t);
    assert!(
        matches!(r.result, Err(ExtractError::Traversal { .. })),
        "{:?}",
        r.result
    );
    assert!(r.err().contains("pax-evil"));
    r.outside_untouched();
    // GNU long link names that traverse are refused the same way.
    let long = format!("{}{}", "a/".repeat(60), "../".repeat(62));
    let t = tar_of(|b| {
        raw(b, b"f", EntryType::Regular, b"", b"x", 0o644);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "h", long.clone() + "outside/file")
            .unwrap_or_default();
    });
    let r = run(&t);
    assert!(r.result.is_err());
    r.outside_untouched();
}

#[test]
fn root_must_stay_a_directory() {
    for (name, kind, link) in [
        (&b"./"[..], EntryType::Regular, &b""[..]),
        (b".", EntryType::Symlink, b"/"),
        (b"/", EntryType::Link, b"x"),
    ] {
        let t = tar_of(|b| raw(b, name, kind, link, b"", 0o644));
        let r = run(&t);
        assert!(
            matches!(r.result, Err(ExtractError::RootNotDir { .. })),
            "{:?}",
            r.result
        );
        assert!(fs::symlink_metadata(&r.layer).unwrap().is_dir());
        r.outside_untouched();
    }
    // A directory entry for the root sets its metadata.
    let t = tar_of(|b| raw(b, b"./", EntryType::Directory, b"", b"", 0o750));
    let r = run(&t);
    r.result.as_ref().unwrap();
    assert_eq!(fs::metadata(&r.layer).unwrap().mode() & 0o7777, 0o750);
}

#[test]
fn invalid_whiteouts_are_refused() {
    for (name, kind) in [
        (&b".wh."[..], EntryType::Regular),
        (b"d/.wh..", EntryType::Regular),
        (b"d/.wh...", EntryType::Regular),
        (b".wh..wh.foo", EntryType::Regular),
        (b".wh.dir/", EntryType::Directory),
        (b".wh.x/file", EntryType::Regular),
        (b".wh.sym", EntryType::Symlink),
    ] {
        let t = tar_of(|b| raw(b, name, kind, b"target", b"", 0o644));
        let r = run(&t);
        assert!(
            matches!(r.result, Err(ExtractError::InvalidWhiteout { .. })),
            "{}: {:?}",
            String::from_utf8_lossy(name),
            r.result
        );
        r.outside_untouched();
    }
}

#[test]
fn whiteouts_are_kept_as_oci_files() {
    let t = layer_tar(&[
        E::Dir("d", 0o755),
        E::Opaque("d"),
        E::Whiteout("gone"),
        E::Whiteout("d/.hidden"),
    ]);
    let r = run(&t);
    r.result.as_ref().unwrap();
    let tree = tree_of(&r.layer);
    assert_eq!(tree.get(".wh.gone").map(String::as_str), Some("f 644 "));
    assert_eq!(
        tree.get("d/.wh..wh..opq").map(String::as_str),
        Some("f 644 ")
    );
    assert_eq!(
        tree.get("d/.wh..hidden").map(String::as_str),
        Some("f 644 ")
    );
    // The kernel's whiteout (char 0/0) is stored as .wh.NAME too.
    let t = tar_of(|b| raw(b, b"w", EntryType::Char, b"", b"", 0o644));
    let r = run(&t);
    r.result.as_ref().unwrap();
    assert!(r.layer.join(".wh.w").is_file());
    assert!(!r.layer.join("w").exists());
}

#[test]
fn duplicates_last_wins() {
    let t = tar_of(|b| {
        raw(b, b"a", EntryType::Regular, b"", b"first", 0o644);
        raw(b, b"a", EntryType::Regular, b"", b"second", 0o600);
        raw(b, b"d/", EntryType::Directory, b"", b"", 0o755);
        raw(b, b"d/x", EntryType::Regular, b"", b"x", 0o644);
        raw(b, b"d", EntryType::Regular, b"", b"now a file", 0o644);
        raw(b, b"f", EntryType::Regular, b"", b"file", 0o644);
        raw(b, b"f/", EntryType::Directory, b"", b"", 0o711);
        raw(b, b"f/y", EntryType::Regular, b"", b"y", 0o644);
        raw(b, b"k/", EntryType::Directory, b"", b"", 0o755);
        raw(b, b"k/z", EntryType::Regular, b"", b"z", 0o644);
        raw(b, b"k/", EntryType::Directory, b"", b"", 0o700);
    });
    let r = run(&t);
    r.result.as_ref().unwrap();
    let tree = tree_of(&r.layer);
    assert_eq!(tree["a"], "f 600 second");
    assert_eq!(tree["d"], "f 644 now a file");
    assert!(!tree.contains_key("d/x"));
    assert_eq!(tree["f"], "d 711");
    assert_eq!(tree["f/y"], "f 644 y");
    assert_eq!(tree["k"], "d 700");
    assert_eq!(tree["k/z"], "f 644 z");
}

fn xattr_tar() -> Vec<u8> {
    tar_of(|b| {
        b.append_pax_extensions([
            ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.fuseoverlayfs.opaque", b"y"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            ("SCHILY.xattr.user.keep", b"kept"),
        ])
        .unwrap();
        raw(b, b"f", EntryType::Regular, b"", b"x", 0o644);
    })
}

fn xattr_names(p: &Path) -> Vec<String> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let raw = layerfs::sys::llistxattr(&c).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[test]
fn privileged_xattrs_are_dropped() {
    let r = run_with(&xattr_tar(), false, Limits::default());
    let stats = r.result.as_ref().unwrap();
    let names = xattr_names(&r.layer.join("f"));
    assert!(names.contains(&"user.keep".to_string()), "{names:?}");
    for bad in [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "user.fuseoverlayfs.opaque",
        "security.capability",
    ] {
        assert!(!names.iter().any(|n| n == bad), "{bad} kept: {names:?}");
        assert!(
            stats.warnings.iter().any(|w| w.contains(bad)),
            "{bad} not reported"
        );
    }
    // As root, security.* is kept but overlay's own attributes never are.
    if layerfs::sys::geteuid() == 0 {
        let r = run_with(&xattr_tar(), true, Limits::default());
        r.result.as_ref().unwrap();
        let names = xattr_names(&r.layer.join("f"));
        assert!(
            names.contains(&"security.capability".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("overlay")), "{names:?}");
    }
}

#[test]
fn device_nodes_rootless_are_recorded() {
    let t = tar_of(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Char);
        h.set_path("null").unwrap();
        h.set_mode(0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        raw(b, b"fifo", EntryType::Fifo, b"", b"", 0o600);
    });
    let r = run_with(&t, false, Limits::default());
    r.result.as_ref().unwrap();
    let m = fs::symlink_metadata(r.layer.join("null")).unwrap();
    assert!(m.is_file() && m.len() == 0);
    let c =
        std::ffi::CString::new(r.layer.join("null").into_os_string().into_encoded_bytes()).unwrap();
    let v = layerfs::sys::lgetxattr(&c, c"user.containers.override_stat").unwrap();
    assert_eq!(v, b"0:0:0666:char-1-3");
    assert!(
        fs::symlink_metadata(r.layer.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    if layerfs::sys::geteuid() == 0 {
        let r = run_with(&t, true, Limits::default());
        r.result.as_ref().unwrap();
        let m = fs::symlink_metadata(r.layer.join("null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), libc::makedev(1, 3));
    }
}

#[test]
fn decompression_bomb_size_limit() {
    let big = vec![0u8; 4 << 20];
    let t = tar_of(|b| raw(b, b"zeros", EntryType::Regular, b"", &big, 0o644));
    let gz = compress(&t, Comp::Gzip);
    assert!(gz.len() < 64 << 10);
    let limits = Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    let dec = flate2::read::MultiGzDecoder::new(&gz[..]);
    let tmp = tempfile::tempdir().unwrap();
    let fd = layerfs::sys::open_dir_path(tmp.path()).unwrap();
    let r = extract(
        dec,
        fd.as_fd(),
        ExtractOptions {
            limits,
            privileged: false,
        },
    );
    assert!(matches!(r, Err(ExtractError::TooLarge { .. })), "{r:?}");
}

#[test]
fn decompression_bomb_entry_limit() {
    let t = tar_of(|b| {
        for i in 0..50 {
            raw(
                b,
                format!("f{i}").as_bytes(),
                EntryType::Regular,
                b"",
                b"",
                0o644,
            );
        }
    });
    let r = run_with(
        &t,
        true,
        Limits {
            max_entries: 10,
            ..Limits::default()
        },
    );
    assert!(
        matches!(r.result, Err(ExtractError::TooManyEntries { limit: 10 })),
        "{:?}",
        r.result
    );
}

#[test]
fn huge_extension_records_are_refused() {
    let big = vec![b'a'; 2 << 20];
    let t = tar_of(|b| {
        b.append_pax_extensions([("comment", &big[..])]).unwrap();
        raw(b, b"f", EntryType::Regular, b"", b"x", 0o644);
    });
    let r = run(&t);
    assert!(
        matches!(r.result, Err(ExtractError::MetadataTooLarge { .. })),
        "{:?}",
        r.result
    );
}

#[test]
fn truncated_archives_are_refused() {
    let data = vec![7u8; 10_000];
    let t = tar_of(|b| {
        raw(b, b"a", EntryType::Regular, b"", b"a", 0o644);
        raw(b, b"big", EntryType::Regular, b"", &data, 0o644);
    });
    // Inside file data.
    let r = run(&t[..512 * 3 + 4000]);
    assert!(
        matches!(r.result, Err(ExtractError::Truncated { .. })),
        "{:?}",
        r.result
    );
    assert!(r.err().contains("big"));
    // At a header boundary, before the end-of-archive blocks.
    let r = run(&t[..512 * 2]);
    assert!(
        matches!(r.result, Err(ExtractError::Truncated { entry: None })),
        "{:?}",
        r.result
    );
    // Inside a header.
    let r = run(&t[..512 * 2 + 100]);
    assert!(r.result.is_err());
    // Whole: fine.
    run(&t).result.unwrap();
}

#[test]
fn metadata_is_kept() {
    let long = format!("{}/file", "long-directory-name".repeat(8));
    let t = tar_of(|b| {
        raw(b, b"dir/", EntryType::Directory, b"", b"", 0o555);
        raw(b, b"dir/suid", EntryType::Regular, b"", b"s", 0o4755);
        raw(b, b"dir/hl", EntryType::Link, b"dir/suid", b"", 0o644);
        raw(b, b"abs", EntryType::Symlink, b"/usr/bin/env", b"", 0o777);
        b.append_pax_extensions([
            ("SCHILY.xattr.user.mime", &b"text/plain"[..]),
            ("mtime", b"1600000000.25"),
        ])
        .unwrap();
        raw(b, b"x", EntryType::Regular, b"", b"x", 0o640);
        raw_long(b, &long, b"deep");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_path("owned").unwrap();
        h.set_cksum();
        b.append(&h, &b"o"[..]).unwrap();
    });
    let r = run(&t);
    let stats = r.result.as_ref().unwrap();
    let tree = tree_of(&r.layer);
    assert_eq!(tree["dir"], "d 555");
    assert_eq!(tree["dir/suid"], "f 4755 s");
    assert_eq!(tree["abs"], "l /usr/bin/env");
    assert_eq!(tree[long.as_str()], "f 644 deep");
    let m = fs::metadata(r.layer.join("dir/hl")).unwrap();
    assert_eq!(
        m.ino(),
        fs::metadata(r.layer.join("dir/suid")).unwrap().ino()
    );
    let m = fs::metadata(r.layer.join("x")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 250_000_000));
    assert_eq!(
        xattr_names(&r.layer.join("x")),
        vec!["user.mime".to_string()]
    );
    assert_eq!(
        fs::metadata(r.layer.join("dir")).unwrap().mtime(),
        MTIME as i64
    );
    let o = fs::metadata(r.layer.join("owned")).unwrap();
    if layerfs::sys::geteuid() == 0 {
        assert_eq!((o.uid(), o.gid()), (1234, 5678));
    }
    assert_eq!(stats.content_bytes, 1 + 1 + 4 + 1);
}
