//! Targeted writable-layer tests. Each one runs the same steps on the kernel overlay mount and
//! on the mount under test and compares every result, checks explicit expectations (they must
//! hold on the kernel side, which validates the test), then compares the merged trees, the upper
//! directories after unmount, and that `work/` is empty.
#![allow(unused_must_use)]

use crate::common::{Layer, Stack};
use crate::harness::*;
use std::fmt::Debug;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A named step of a test, run on each mount.
type NamedStep<'a> = (&'a str, Box<dyn Fn(&Path) -> Res<()>>);

fn kind_at(p: &Path) -> Result<(u32, u64), String> {
    let st = lstat(p).map_err(|e| format!("lstat {}: {}", p.display(), errname(e)))?;
    Ok((st.st_mode & libc::S_IFMT, st.st_rdev))
}

fn is_whiteout(p: &Path) -> Result<(), String> {
    match kind_at(p)? {
        (libc::S_IFCHR, 0) => Ok(()),
        (m, r) => Err(format!(
            "{} should be a whiteout (char 0/0) but has type {:o} rdev {r:#x}",
            p.display(),
            m >> 12
        )),
    }
}

fn regular_files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn create_file(p: &Path, data: &[u8], mode: u32) -> Res<()> {
    let fd = open(p, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode)?;
    write(&fd, data)?;
    Ok(())
}

fn read_path(p: &Path) -> Res<Vec<u8>> {
    let fd = open(p, libc::O_RDONLY, 0)?;
    read_all(&fd, 64 << 20)
}

// ------------------------------------------------------------------------------------------

#[test]
fn unlink_lower_file_writes_whiteout_without_copy_up() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("top", b"t", 0o644),
        Layer::new()
            .file("d/f", vec![b'x'; 100_000], 0o644)
            .file("d/g", b"g", 0o644)
            .symlink("d/s", "f"),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    for p in ["d/f", "top", "d/s"] {
        t.both(&fx, &format!("unlink {p}"), |r| unlink(&r.join(p)));
    }
    t.both(&fx, "lstat d/f", |r| lstat(&r.join("d/f")).map(|_| ()));
    t.both(&fx, "unlink d/f again", |r| unlink(&r.join("d/f")));
    t.both(&fx, "readdir d", |r| {
        crate::common::list_names(&r.join("d")).map_err(|e| e.raw_os_error())
    });
    t.expect_both(&fx, |_, up| {
        is_whiteout(&up.join("d/f"))?;
        is_whiteout(&up.join("top"))?;
        is_whiteout(&up.join("d/s"))?;
        let files = regular_files_under(up);
        if !files.is_empty() {
            return Err(format!("unlink copied files up: {files:?}"));
        }
        Ok(())
    });
    // An upper-only file: unlink leaves nothing behind.
    t.both(&fx, "create new", |r| {
        create_file(&r.join("new"), b"n", 0o644)
    });
    t.both(&fx, "unlink new", |r| unlink(&r.join("new")));
    t.expect_both(&fx, |_, up| match lstat(&up.join("new")) {
        Err(libc::ENOENT) => Ok(()),
        r => Err(format!(
            "upper/new after unlink of an upper-only file: {}",
            show_res(&r.map(|s| stat_summary(&s)))
        )),
    });
    t.finish("unlink_lower_file_writes_whiteout_without_copy_up", &mut fx);
}

#[test]
fn rmdir_of_merged_dir() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("d/a", b"a", 0o644).whiteout("e/x"),
        Layer::new()
            .file("d/b", b"b", 0o644)
            .file("d/sub/c", b"c", 0o644)
            .file("e/x", b"x", 0o644)
            .dir("em", 0o755)
            .opaque("op")
            .file("op/gone", b"", 0o644),
        Layer::new().file("op/hidden", b"h", 0o644),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    let steps: &[(&str, &str, i32)] = &[
        ("rmdir", "d", libc::ENOTEMPTY),
        ("unlink", "d/a", 0),
        ("rmdir", "d", libc::ENOTEMPTY),
        ("unlink", "d/b", 0),
        ("rmdir", "d", libc::ENOTEMPTY),
        ("rmdir", "d/sub", libc::ENOTEMPTY),
        ("unlink", "d/sub/c", 0),
        ("rmdir", "d/sub", 0),
        ("rmdir", "d", 0),
        ("rmdir", "d", libc::ENOENT),
        // Only whited-out entries below: empty.
        ("rmdir", "e", 0),
        ("rmdir", "em", 0),
        // Opaque dir: the layer below the opaque one does not count.
        ("rmdir", "op", libc::ENOTEMPTY),
        ("unlink", "op/gone", 0),
        ("rmdir", "op", 0),
        ("rmdir", "top-missing", libc::ENOENT),
    ];
    for (i, (what, p, want)) in steps.iter().enumerate() {
        let f = |r: &Path| match *what {
            "rmdir" => rmdir(&r.join(p)),
            _ => unlink(&r.join(p)),
        };
        let (a, b) = t.both(&fx, &format!("step {i}: {what} {p}"), f);
        let got = |x: &Res<()>| x.err().unwrap_or(0);
        t.expect(
            true,
            got(&a) == *want,
            format!("step {i}: {what} {p} = {}", show_res(&a)),
        );
        t.expect(
            false,
            got(&b) == *want,
            format!(
                "step {i}: {what} {p}: under test {} (want {})",
                show_res(&b),
                if *want == 0 {
                    "Ok".into()
                } else {
                    errname(*want)
                }
            ),
        );
    }
    t.both(&fx, "readdir /", |r| {
        crate::common::list_names(r).map_err(|e| e.raw_os_error())
    });
    t.expect_both(&fx, |_, up| {
        for p in ["d", "e", "em", "op"] {
            is_whiteout(&up.join(p))?;
        }
        Ok(())
    });
    t.finish("rmdir_of_merged_dir", &mut fx);
}

#[test]
fn mkdir_over_whiteout_is_opaque() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().whiteout("w"),
        Layer::new()
            .file("d/old", b"o", 0o644)
            .file("w/inner", b"i", 0o644)
            .file("ff", b"file", 0o644)
            .dir("keep", 0o755)
            .file("keep/k", b"k", 0o644),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    t.both(&fx, "unlink d/old", |r| unlink(&r.join("d/old")));
    t.both(&fx, "rmdir d", |r| rmdir(&r.join("d")));
    t.both(&fx, "mkdir d", |r| mkdir(&r.join("d"), 0o755));
    t.both(&fx, "readdir d", |r| {
        crate::common::list_names(&r.join("d")).map_err(|e| e.raw_os_error())
    });
    t.both(&fx, "lstat d/old", |r| lstat(&r.join("d/old")).map(|_| ()));
    // Whiteout in a lower layer (not in the upper).
    t.both(&fx, "mkdir w", |r| mkdir(&r.join("w"), 0o755));
    t.both(&fx, "readdir w", |r| {
        crate::common::list_names(&r.join("w")).map_err(|e| e.raw_os_error())
    });
    // Over the whiteout of a regular file.
    t.both(&fx, "unlink ff", |r| unlink(&r.join("ff")));
    t.both(&fx, "mkdir ff", |r| mkdir(&r.join("ff"), 0o700));
    t.both(&fx, "mkdir new", |r| mkdir(&r.join("new"), 0o755));
    t.both(&fx, "mkdir new/sub", |r| mkdir(&r.join("new/sub"), 0o755));
    // Inside a merged dir (copy-up of the parent, which must stay non-opaque).
    t.both(&fx, "mkdir keep/n", |r| mkdir(&r.join("keep/n"), 0o755));
    t.both(&fx, "readdir keep", |r| {
        crate::common::list_names(&r.join("keep")).map_err(|e| e.raw_os_error())
    });
    t.expect_both(&fx, |_, up| {
        let op = |p: &str| opaque_of(&up.join(p));
        if op("d").as_deref() != Some(b"y".as_slice()) {
            return Err(format!(
                "upper/d (mkdir over a whiteout) opaque = {:?}, want \"y\"",
                op("d")
            ));
        }
        if op("ff").as_deref() != Some(b"y".as_slice()) {
            return Err(format!(
                "upper/ff (mkdir over a file whiteout) opaque = {:?}, want \"y\"",
                op("ff")
            ));
        }
        for p in ["new/sub", "keep"] {
            if op(p).is_some() {
                return Err(format!("upper/{p} should not be opaque: {:?}", op(p)));
            }
        }
        Ok(())
    });
    // With redirect_dir=on the kernel also marks new directories in merged ones opaque (an
    // optimization); layerfs does not where nothing exists below (issue 3).
    if layerfs_specific() {
        for p in ["new", "keep/n"] {
            if let Some(v) = opaque_of(&fx.f_upper.join(p)) {
                t.fails
                    .push(format!("upper/{p} should not be opaque: {v:?}"));
            }
        }
    }
    t.finish("mkdir_over_whiteout_is_opaque", &mut fx);
}

#[test]
fn whiteout_names_are_refused() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("a", b"a", 0o644),
        Layer::new().file("d/b", b"b", 0o644),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    let ops: Vec<NamedStep> = vec![
        (
            "create .wh.foo",
            Box::new(|r: &Path| create_file(&r.join(".wh.foo"), b"", 0o644)),
        ),
        (
            "create d/.wh.foo",
            Box::new(|r: &Path| create_file(&r.join("d/.wh.foo"), b"", 0o644)),
        ),
        (
            "mkdir .wh.dir",
            Box::new(|r: &Path| mkdir(&r.join(".wh.dir"), 0o755)),
        ),
        (
            "symlink .wh.s",
            Box::new(|r: &Path| symlink("a", &r.join(".wh.s"))),
        ),
        (
            "mkfifo .wh.p",
            Box::new(|r: &Path| mkfifo(&r.join(".wh.p"), 0o644)),
        ),
        (
            "link a .wh.l",
            Box::new(|r: &Path| link(&r.join("a"), &r.join(".wh.l"))),
        ),
        (
            "rename a .wh.r",
            Box::new(|r: &Path| rename2(&r.join("a"), &r.join(".wh.r"), 0)),
        ),
        (
            "create .wh..wh..opq",
            Box::new(|r: &Path| create_file(&r.join("d/.wh..wh..opq"), b"", 0o644)),
        ),
    ];
    for (what, f) in &ops {
        let k = f(fx.k());
        eprintln!("kernel: {what}: {}", show_res(&k));
        if layerfs_specific() {
            let b = f(fx.f());
            if b != Err(libc::EINVAL) {
                t.fails.push(format!(
                    "{what}: layerfs {} (documented: EINVAL)",
                    show_res(&b)
                ));
            }
        }
    }
    if layerfs_specific() {
        // Nothing named .wh.* may have reached the upper dir of layerfs.
        let _ = fx.unmount();
        let bad: Vec<_> =
            crate::common::scan_tree(&fx.f_upper, &crate::common::CompareOptions::default())
                .nodes
                .keys()
                .filter(|k| {
                    k.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
                })
                .cloned()
                .collect();
        if !bad.is_empty() {
            t.fails
                .push(format!("layerfs upper has .wh.* entries: {bad:?}"));
        }
    }
    // The kernel side diverges on purpose: no tree comparison here.
    assert_no_failures("whiteout_names_are_refused", &t.fails);
}

#[test]
fn copy_up_preserves_metadata() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("top", b"t", 0o644),
        Layer::new()
            .file("f", b"file content\n", 0o640)
            .chown("f", 1000, 1001)
            .xattr("f", "user.a", b"1")
            .xattr("f", "user.b", vec![7u8; 3000])
            .mtime_ns("f", 1_111_111_111, 123_456_789)
            .file("g", b"append here", 0o4750)
            .chown("g", 1000, 1000)
            .xattr("g", "user.g", b"g")
            .mtime("g", 1_100_000_000)
            .symlink("s", "some/target/../x")
            .chown("s", 1000, 1000)
            .mtime("s", 1_222_222_222)
            .dir("d", 0o710)
            .chown("d", 1000, 1000)
            .xattr("d", "user.d", b"dir")
            .file("d/inner", b"inner", 0o600)
            .mtime("d/inner", 1_300_000_000)
            .mtime("d", 1_333_333_333)
            .fifo("p", 0o640)
            .chown("p", 1000, 1001)
            .mtime("p", 1_444_444_444),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    // Triggers that copy up without changing the data or mtime.
    t.both(&fx, "setxattr f user.c", |r| {
        lsetxattr(&r.join("f"), "user.c", b"3", 0)
    });
    t.both(&fx, "lchown s -1:1002", |r| {
        lchown(&r.join("s"), u32::MAX, 1002)
    });
    t.both(&fx, "chmod d/inner 0604", |r| {
        chmod(&r.join("d/inner"), 0o604)
    });
    t.both(&fx, "lchown p -1:1001", |r| {
        lchown(&r.join("p"), u32::MAX, 1001)
    });
    // A data change: mtime becomes now, the rest is kept (root keeps setuid on write).
    t.both(&fx, "append g", |r| {
        let fd = open(&r.join("g"), libc::O_WRONLY | libc::O_APPEND, 0)?;
        write(&fd, b"+")
    });
    for p in ["f", "s", "d", "d/inner", "p", "g"] {
        t.both(&fx, &format!("lstat {p}"), |r| {
            lstat(&r.join(p)).map(|s| stat_summary(&s))
        });
    }
    t.both(&fx, "readlink s", |r| {
        fs::read_link(r.join("s")).map_err(|e| e.raw_os_error())
    });
    t.expect_both(&fx, |_, up| {
        let st =
            |p: &str| lstat(&up.join(p)).map_err(|e| format!("lstat upper/{p}: {}", errname(e)));
        let f = st("f")?;
        if (
            f.st_mode & 0o7777,
            f.st_uid,
            f.st_gid,
            f.st_mtime,
            f.st_mtime_nsec,
        ) != (0o640, 1000, 1001, 1_111_111_111, 123_456_789)
        {
            return Err(format!("upper/f: {}", stat_summary(&f)));
        }
        for (n, v) in [
            ("user.a", b"1".to_vec()),
            ("user.b", vec![7u8; 3000]),
            ("user.c", b"3".to_vec()),
        ] {
            if lgetxattr(&up.join("f"), n).ok() != Some(v) {
                return Err(format!("upper/f: xattr {n} missing or wrong"));
            }
        }
        // layerfs copies metadata only (metacopy): the data stays below.
        let metacopy = lgetxattr(&up.join("f"), "trusted.overlay.metacopy").is_ok()
            && f.st_size == b"file content\n".len() as i64;
        if !metacopy && fs::read(up.join("f")).ok().as_deref() != Some(b"file content\n".as_slice())
        {
            return Err("upper/f: content".into());
        }
        let s = st("s")?;
        if (s.st_uid, s.st_gid, s.st_mtime) != (1000, 1002, 1_222_222_222) {
            return Err(format!("upper/s: {}", stat_summary(&s)));
        }
        if fs::read_link(up.join("s")).ok() != Some(PathBuf::from("some/target/../x")) {
            return Err("upper/s: target".into());
        }
        let d = st("d")?;
        if (d.st_mode & 0o7777, d.st_uid, d.st_gid, d.st_mtime)
            != (0o710, 1000, 1000, 1_333_333_333)
        {
            return Err(format!(
                "upper/d (copied-up parent): mode {:o} {}:{} mtime {}",
                d.st_mode & 0o7777,
                d.st_uid,
                d.st_gid,
                d.st_mtime
            ));
        }
        if lgetxattr(&up.join("d"), "user.d").ok().as_deref() != Some(b"dir".as_slice()) {
            return Err("upper/d: xattr user.d".into());
        }
        let i = st("d/inner")?;
        if (i.st_mode & 0o7777, i.st_mtime) != (0o604, 1_300_000_000) {
            return Err(format!("upper/d/inner: {}", stat_summary(&i)));
        }
        let p = st("p")?;
        if (
            p.st_mode & libc::S_IFMT,
            p.st_mode & 0o7777,
            p.st_uid,
            p.st_gid,
            p.st_mtime,
        ) != (libc::S_IFIFO, 0o640, 1000, 1001, 1_444_444_444)
        {
            return Err(format!("upper/p: {}", stat_summary(&p)));
        }
        let g = st("g")?;
        if (g.st_mode & 0o7777, g.st_uid, g.st_gid) != (0o4750, 1000, 1000)
            || lgetxattr(&up.join("g"), "user.g").is_err()
        {
            return Err(format!("upper/g: {}", stat_summary(&g)));
        }
        if fs::read(up.join("g")).ok().as_deref() != Some(b"append here+".as_slice()) {
            return Err("upper/g: content".into());
        }
        Ok(())
    });
    t.finish("copy_up_preserves_metadata", &mut fx);
}

#[test]
fn sparse_copy_up_stays_sparse() {
    if !init() {
        return;
    }
    const GIB: u64 = 1 << 30;
    let stack = Stack::new(vec![
        Layer::new().file("small", b"s", 0o644),
        Layer::new().dir("d", 0o755),
    ]);
    let mut fx = WFixture::unmounted(&stack);
    for l in [&fx.k_layers[1], &fx.f_layers[1]] {
        let f = fs::File::create(l.join("d/sparse")).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", GIB / 2).unwrap();
        f.set_len(GIB).unwrap();
    }
    fx.mount().unwrap();
    let mut t = Checks::new();
    t.both(&fx, "append 1 byte", |r| {
        let fd = open(&r.join("d/sparse"), libc::O_WRONLY | libc::O_APPEND, 0)?;
        write(&fd, b"!")?;
        fstat(&fd).map(|s| s.st_size)
    });
    let tail = |r: &Path| -> Res<Vec<u8>> {
        let fd = open(&r.join("d/sparse"), libc::O_RDONLY, 0)?;
        let mut out = Vec::new();
        for (off, len) in [(0u64, 6usize), (GIB / 2 - 2, 10), (GIB - 3, 10)] {
            let mut b = vec![0u8; len];
            let n = unsafe { libc::pread(fd.0, b.as_mut_ptr() as *mut _, len, off as i64) };
            if n < 0 {
                return Err(errno());
            }
            b.truncate(n as usize);
            out.push(b);
        }
        Ok(out.concat())
    };
    t.both(&fx, "read head/middle/tail", tail);
    let mut blocks = Vec::new();
    for (name, up) in [("kernel", &fx.k_upper), ("under test", &fx.f_upper)] {
        let (b, size) = blocks_and_size(&up.join("d/sparse"));
        eprintln!(
            "{name}: upper d/sparse size {size} st_blocks {b} ({} KiB allocated)",
            b / 2
        );
        blocks.push((b, size));
    }
    t.expect(
        true,
        blocks[0].1 == GIB + 1,
        format!("kernel upper size {}", blocks[0].1),
    );
    t.expect(
        false,
        blocks[1].1 == GIB + 1,
        format!("upper size {} want {}", blocks[1].1, GIB + 1),
    );
    let limit = 16 << 20; // bytes
    t.expect(
        false,
        blocks[1].0 * 512 < limit,
        format!(
            "copy-up of a 1 GiB sparse file allocated {} KiB in the upper (kernel: {} KiB)",
            blocks[1].0 / 2,
            blocks[0].0 / 2
        ),
    );
    // No whole-file comparison of 1 GiB: drop the file from both sides before finish().
    t.both(&fx, "unlink d/sparse", |r| unlink(&r.join("d/sparse")));
    t.finish("sparse_copy_up_stays_sparse", &mut fx);
}

#[test]
fn hardlinks_in_upper() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("lf", b"lower", 0o644),
        Layer::new()
            .file("h1", b"pair", 0o644)
            .hardlink("h2", "h1")
            .dir("d", 0o755),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    let nl = |r: &Path, p: &str| lstat(&r.join(p)).map(|s| (s.st_nlink, s.st_size));
    t.both(&fx, "create a", |r| {
        create_file(&r.join("a"), b"first", 0o644)
    });
    t.both(&fx, "link a d/b", |r| link(&r.join("a"), &r.join("d/b")));
    t.both(&fx, "nlink a, d/b", |r| (nl(r, "a"), nl(r, "d/b")));
    t.expect_both(&fx, |m, _| {
        let (a, b) = (lstat(&m.join("a")).unwrap(), lstat(&m.join("d/b")).unwrap());
        if a.st_ino != b.st_ino || a.st_nlink != 2 {
            return Err(format!(
                "a and d/b: ino {} vs {}, nlink {}",
                a.st_ino, b.st_ino, a.st_nlink
            ));
        }
        Ok(())
    });
    t.both(&fx, "write via d/b", |r| {
        let fd = open(&r.join("d/b"), libc::O_WRONLY, 0)?;
        pwrite(&fd, b"FIRST!", 0)
    });
    t.both(&fx, "read a", |r| read_path(&r.join("a")));
    t.both(&fx, "link lf lf2 (copy-up + link)", |r| {
        link(&r.join("lf"), &r.join("lf2"))
    });
    t.both(&fx, "nlink lf, lf2", |r| (nl(r, "lf"), nl(r, "lf2")));
    t.both(&fx, "unlink a", |r| unlink(&r.join("a")));
    t.both(&fx, "nlink d/b", |r| nl(r, "d/b"));
    t.both(&fx, "rename d/b c", |r| {
        rename2(&r.join("d/b"), &r.join("c"), 0)
    });
    t.both(&fx, "link c d/b2", |r| link(&r.join("c"), &r.join("d/b2")));
    t.both(&fx, "nlink c d/b2", |r| (nl(r, "c"), nl(r, "d/b2")));
    t.finish("hardlinks_in_upper", &mut fx);
}

#[test]
fn fstat_of_open_unlinked_file() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("l1", b"lower one", 0o644),
        Layer::new()
            .file("l2", b"lower two", 0o644)
            .file("l3", b"lower three", 0o644),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    let run_nlink = |r: &Path, name: &str, create: bool, flags: i32, nlink: bool| -> Res<String> {
        let p = r.join(name);
        if create {
            create_file(&p, b"upper", 0o644)?;
        }
        let fd = open(&p, flags, 0)?;
        unlink(&p)?;
        let s1 = fstat(&fd)?;
        let w = if flags & libc::O_ACCMODE != libc::O_RDONLY {
            pwrite(&fd, b"+more", s1.st_size as u64)? as i64
        } else {
            -1
        };
        let s2 = fstat(&fd)?;
        let data = pread_all(&fd, 1 << 20)?;
        let gone = lstat(&p).err();
        let nl = |n: u64| if nlink { n.to_string() } else { "-".into() };
        Ok(format!(
            "nlink {} size {} / wrote {w} / nlink {} size {} mode {:o} / data {:?} / lstat after: {:?}",
            nl(s1.st_nlink as u64),
            s1.st_size,
            nl(s2.st_nlink as u64),
            s2.st_size,
            s2.st_mode & 0o7777,
            String::from_utf8_lossy(&data),
            gone.map(errname)
        ))
    };
    let run = |r: &Path, name: &str, create: bool, flags: i32| -> Res<String> {
        run_nlink(r, name, create, flags, true)
    };
    let (k, _) = t.both(&fx, "upper file", |r| run(r, "u", true, libc::O_RDWR));
    eprintln!("kernel, upper file: {k:?}");
    let (k, _) = t.both(&fx, "lower file opened O_RDWR", |r| {
        run(r, "l1", false, libc::O_RDWR)
    });
    eprintln!("kernel, lower file O_RDWR: {k:?}");
    // With the writeback cache the kernel keeps its own ctime, so an unlink
    // no longer makes it ask for attributes again: it shows the nlink it
    // counted down itself (0), not the lower file's (1).
    let nlink = !writeback_mode();
    let (k, _) = t.both(&fx, "lower file opened O_RDONLY", |r| {
        run_nlink(r, "l2", false, libc::O_RDONLY, nlink)
    });
    eprintln!("kernel, lower file O_RDONLY: {k:?}");
    t.both(&fx, "readdir /", |r| {
        crate::common::list_names(r).map_err(|e| e.raw_os_error())
    });
    t.finish("fstat_of_open_unlinked_file", &mut fx);
}

#[test]
fn names_of_255_bytes() {
    if !init() {
        return;
    }
    let n255 = |c: char| c.to_string().repeat(255);
    let (a, b, c, d) = (n255('a'), n255('b'), n255('c'), n255('d'));
    let stack = Stack::new(vec![
        Layer::new().file("top", b"t", 0o644),
        Layer::new()
            .file(&a, b"long lower", 0o644)
            .file(&format!("dd/{b}"), b"x", 0o644),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    t.both(&fx, "read 255", |r| read_path(&r.join(&a)));
    t.both(&fx, "unlink 255 (lower)", |r| unlink(&r.join(&a)));
    t.both(&fx, "create 255", |r| {
        create_file(&r.join(&c), b"new", 0o644)
    });
    t.both(&fx, "create 256", |r| {
        create_file(&r.join(format!("{c}x")), b"new", 0o644)
    });
    t.both(&fx, "mkdir 255", |r| mkdir(&r.join(&d), 0o755));
    t.both(&fx, "rename 255 -> 255 in dir", |r| {
        rename2(&r.join(&c), &r.join(&d).join(&a), 0)
    });
    t.both(&fx, "symlink 255", |r| symlink(&b, &r.join(&b)));
    t.both(&fx, "rename lower 255", |r| {
        rename2(&r.join("dd").join(&b), &r.join("dd").join(&c), 0)
    });
    t.both(&fx, "link 255", |r| {
        link(&r.join("dd").join(&c), &r.join("dd").join(&a))
    });
    t.both(&fx, "readdir /", |r| {
        crate::common::list_names(r).map_err(|e| e.raw_os_error())
    });
    t.both(&fx, "readdir dd", |r| {
        crate::common::list_names(&r.join("dd")).map_err(|e| e.raw_os_error())
    });
    t.finish("names_of_255_bytes", &mut fx);
}

#[test]
fn erofs_without_upperdir() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("a", b"a", 0o644).dir("d", 0o755),
        Layer::new().file("b", b"b", 0o644).file("d/c", b"c", 0o644),
    ]);
    let fx = WFixture::unmounted(&stack);
    let base = fx.base().to_path_buf();
    let k = mount_kernel(&fx.k_layers, None, &base.join("rk")).expect("kernel mount");
    let f = mount_impl(fx.which, &fx.f_layers, None, &base.join("rf")).expect("mount under test");
    let (kr, fr) = (k.path().to_path_buf(), f.path().to_path_buf());
    let mut fails = Vec::new();
    let ops: Vec<NamedStep> = vec![
        (
            "create new",
            Box::new(|r: &Path| create_file(&r.join("new"), b"", 0o644)),
        ),
        (
            "open a O_WRONLY",
            Box::new(|r: &Path| open(&r.join("a"), libc::O_WRONLY, 0).map(|_| ())),
        ),
        (
            "open b O_RDWR",
            Box::new(|r: &Path| open(&r.join("b"), libc::O_RDWR, 0).map(|_| ())),
        ),
        (
            "open a O_RDONLY",
            Box::new(|r: &Path| open(&r.join("a"), libc::O_RDONLY, 0).map(|_| ())),
        ),
        ("truncate a", Box::new(|r: &Path| truncate(&r.join("a"), 0))),
        ("mkdir x", Box::new(|r: &Path| mkdir(&r.join("x"), 0o755))),
        ("unlink d/c", Box::new(|r: &Path| unlink(&r.join("d/c")))),
        ("rmdir d", Box::new(|r: &Path| rmdir(&r.join("d")))),
        (
            "rename a z",
            Box::new(|r: &Path| rename2(&r.join("a"), &r.join("z"), 0)),
        ),
        ("chmod a", Box::new(|r: &Path| chmod(&r.join("a"), 0o600))),
        ("lchown a", Box::new(|r: &Path| lchown(&r.join("a"), 1, 1))),
        (
            "utimens a",
            Box::new(|r: &Path| utimens(&r.join("a"), (1, 0), (2, 0), false)),
        ),
        (
            "setxattr a",
            Box::new(|r: &Path| lsetxattr(&r.join("a"), "user.x", b"1", 0)),
        ),
        (
            "removexattr a",
            Box::new(|r: &Path| lremovexattr(&r.join("a"), "user.x")),
        ),
        ("symlink s", Box::new(|r: &Path| symlink("a", &r.join("s")))),
        (
            "link a l",
            Box::new(|r: &Path| link(&r.join("a"), &r.join("l"))),
        ),
        ("mkfifo p", Box::new(|r: &Path| mkfifo(&r.join("p"), 0o644))),
    ];
    for (what, op) in &ops {
        let (a, b) = (op(&kr), op(&fr));
        if a != b {
            fails.push(format!(
                "{what}: kernel {} vs under test {}",
                show_res(&a),
                show_res(&b)
            ));
        }
        if *what != "open a O_RDONLY" && a != Err(libc::EROFS) {
            panic!("test bug: kernel {what}: {}", show_res(&a));
        }
    }
    drop(f);
    drop(k);
    for l in &fx.f_layers {
        if let Err(e) = crate::common::compare_trees(
            &fx.k_layers[0]
                .parent()
                .unwrap()
                .join(l.file_name().unwrap()),
            l,
        ) {
            fails.push(format!("a lower layer changed: {e}"));
        }
    }
    assert_no_failures("erofs_without_upperdir", &fails);
}

#[test]
fn o_append_semantics() {
    let Some(mut fx) = fixture_over(Layer::new().file("lf", b"0123456789", 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    t.both(
        &fx,
        "append sequence on a lower file",
        |r| -> Res<Vec<i64>> {
            let p = r.join("lf");
            let a = open(&p, libc::O_WRONLY | libc::O_APPEND, 0)?;
            let b = open(&p, libc::O_RDWR | libc::O_APPEND, 0)?;
            let plain = open(&p, libc::O_WRONLY, 0)?;
            let mut sizes = Vec::new();
            pwrite(&a, b"P", 0)?; // pwrite ignores the offset with O_APPEND on Linux
            sizes.push(fstat(&a)?.st_size);
            unsafe { libc::lseek(a.0, 0, libc::SEEK_SET) };
            write(&a, b"A")?;
            sizes.push(unsafe { libc::lseek(a.0, 0, libc::SEEK_CUR) });
            write(&b, b"BB")?;
            write(&a, b"AAA")?;
            sizes.push(fstat(&b)?.st_size);
            write(&plain, b"__")?; // overwrite at 0
            pwrite(&plain, b"Z", 100)?; // extends with a hole
            write(&a, b"end")?;
            sizes.push(fstat(&plain)?.st_size);
            Ok(sizes)
        },
    );
    t.both(&fx, "read lf", |r| read_path(&r.join("lf")));
    t.both(&fx, "create O_APPEND", |r| -> Res<i64> {
        let fd = open(
            &r.join("d/n"),
            libc::O_CREAT | libc::O_WRONLY | libc::O_APPEND,
            0o644,
        )?;
        write(&fd, b"one")?;
        pwrite(&fd, b"two", 0)?;
        Ok(fstat(&fd)?.st_size)
    });
    t.both(&fx, "read d/n", |r| read_path(&r.join("d/n")));
    t.finish("o_append_semantics", &mut fx);
}

#[test]
fn shared_writable_mmap() {
    let Some(mut fx) = fixture_over(Layer::new().file("lm", vec![b'.'; 10000], 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    let mm = |p: &Path, create: bool, sync: bool| -> Res<Vec<u8>> {
        if create {
            create_file(p, &vec![b'-'; 8192], 0o644)?;
        }
        let fd = open(p, libc::O_RDWR, 0)?;
        let len = fstat(&fd)?.st_size as usize;
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.0,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return Err(errno());
        }
        let s = unsafe { std::slice::from_raw_parts_mut(m as *mut u8, len) };
        s[100..105].copy_from_slice(b"HELLO");
        s[5000..5005].copy_from_slice(b"WORLD");
        if sync {
            unsafe { libc::msync(m, len, libc::MS_SYNC) };
        }
        // Read through a separate fd while still mapped.
        let other = open(p, libc::O_RDONLY, 0)?;
        let seen = pread_all(&other, 1 << 20)?;
        unsafe { libc::munmap(m, len) };
        Ok(seen)
    };
    let (k, f) = t.both(
        &fx,
        "mmap upper file, read via another fd (no msync)",
        |r| mm(&r.join("d/new"), true, false),
    );
    t.expect(
        true,
        k.as_ref()
            .is_ok_and(|v| &v[100..105] == b"HELLO" && &v[5000..5005] == b"WORLD"),
        "kernel mmap write visible",
    );
    t.expect(
        false,
        f.as_ref()
            .is_ok_and(|v| &v[100..105] == b"HELLO" && &v[5000..5005] == b"WORLD"),
        format!(
            "mmap write to an upper file not visible via read: {:?}",
            f.map(|v| String::from_utf8_lossy(&v[95..110]).into_owned())
        ),
    );
    let (_, f) = t.both(&fx, "mmap lower file (copy-up at open), msync", |r| {
        mm(&r.join("lm"), false, true)
    });
    t.expect(
        false,
        f.as_ref().is_ok_and(|v| &v[100..105] == b"HELLO"),
        "mmap write to a copied-up file not visible via read",
    );
    t.both(&fx, "read lm by path", |r| read_path(&r.join("lm")));
    t.finish("shared_writable_mmap", &mut fx);
}

#[test]
fn rename_rules() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new()
            .file("ld/top", b"t", 0o644)
            .file("f", b"f", 0o644),
        Layer::new()
            .file("ld/below", b"b", 0o644)
            .dir("empty_lower", 0o755)
            .file("g", b"g", 0o644),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    let steps: Vec<NamedStep> = vec![
        (
            "rename lower dir",
            Box::new(|r: &Path| rename2(&r.join("ld"), &r.join("ld2"), 0)),
        ),
        (
            "rename empty lower dir",
            Box::new(|r: &Path| rename2(&r.join("empty_lower"), &r.join("el2"), 0)),
        ),
        ("mkdir up", Box::new(|r: &Path| mkdir(&r.join("up"), 0o755))),
        (
            "create up/x",
            Box::new(|r: &Path| create_file(&r.join("up/x"), b"x", 0o644)),
        ),
        (
            "rename upper dir",
            Box::new(|r: &Path| rename2(&r.join("up"), &r.join("up2"), 0)),
        ),
        (
            "rename upper dir into lower dir",
            Box::new(|r: &Path| rename2(&r.join("up2"), &r.join("ld/up3"), 0)),
        ),
        (
            "rename upper dir over lower empty dir",
            Box::new(|r: &Path| rename2(&r.join("ld/up3"), &r.join("empty_lower"), 0)),
        ),
        (
            "rename lower file",
            Box::new(|r: &Path| rename2(&r.join("g"), &r.join("ld/g2"), 0)),
        ),
        (
            "NOREPLACE onto existing",
            Box::new(|r: &Path| rename2(&r.join("f"), &r.join("ld/g2"), libc::RENAME_NOREPLACE)),
        ),
        (
            "NOREPLACE onto whiteout",
            Box::new(|r: &Path| rename2(&r.join("f"), &r.join("g"), libc::RENAME_NOREPLACE)),
        ),
        (
            "EXCHANGE lower file with upper file",
            Box::new(|r: &Path| {
                rename2(&r.join("ld/below"), &r.join("ld/g2"), libc::RENAME_EXCHANGE)
            }),
        ),
        (
            "EXCHANGE with missing",
            Box::new(|r: &Path| {
                rename2(&r.join("ld/top"), &r.join("nothere"), libc::RENAME_EXCHANGE)
            }),
        ),
        (
            "EXCHANGE file with lower dir",
            Box::new(|r: &Path| rename2(&r.join("g"), &r.join("ld"), libc::RENAME_EXCHANGE)),
        ),
        (
            "EXCHANGE file with upper dir",
            Box::new(|r: &Path| {
                rename2(&r.join("g"), &r.join("empty_lower"), libc::RENAME_EXCHANGE)
            }),
        ),
        (
            "rename file over dir",
            Box::new(|r: &Path| rename2(&r.join("ld/top"), &r.join("empty_lower"), 0)),
        ),
        (
            "rename dir over file",
            Box::new(|r: &Path| rename2(&r.join("empty_lower"), &r.join("ld/top"), 0)),
        ),
        (
            "rename into own subdir",
            Box::new(|r: &Path| rename2(&r.join("g"), &r.join("g/sub"), 0)),
        ),
        (
            "both flags",
            Box::new(|r: &Path| {
                rename2(
                    &r.join("g"),
                    &r.join("ld/top"),
                    libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE,
                )
            }),
        ),
        (
            "RENAME_WHITEOUT",
            Box::new(|r: &Path| rename2(&r.join("ld/top"), &r.join("tw"), libc::RENAME_WHITEOUT)),
        ),
        (
            "rename to self",
            Box::new(|r: &Path| rename2(&r.join("ld/top"), &r.join("ld/top"), 0)),
        ),
    ];
    for (what, f) in &steps {
        let (a, _) = t.both(&fx, what, f);
        eprintln!("kernel: {what}: {}", show_res(&a));
    }
    t.both(&fx, "readdir /", |r| {
        crate::common::list_names(r).map_err(|e| e.raw_os_error())
    });
    t.finish("rename_rules", &mut fx);
}

// ------------------------------------------------------------------------------------------
// POSIX permissions as another uid
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum ChildOp {
    OpenRead,
    OpenWrite,
    Append,
    Truncate,
    Create,
    Mkdir,
    Unlink,
    Chmod,
    SetXattr,
    UtimeNow,
    UtimeExplicit,
}

/// Runs `op` on `p` in a forked child with uid/gid 1000 (no supplementary groups); returns 0
/// or the errno. Only raw syscalls run in the child (the test process is multithreaded).
fn as_uid_1000(op: ChildOp, p: &std::ffi::CStr) -> i32 {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            let e = || *libc::__errno_location();
            let p = p.as_ptr();
            let code = if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(1000, 1000, 1000) != 0
                || libc::setresuid(1000, 1000, 1000) != 0
            {
                200
            } else {
                let r = match op {
                    ChildOp::OpenRead => libc::open(p, libc::O_RDONLY),
                    ChildOp::OpenWrite => libc::open(p, libc::O_WRONLY),
                    ChildOp::Append => {
                        let fd = libc::open(p, libc::O_WRONLY | libc::O_APPEND);
                        if fd >= 0 && libc::write(fd, b"+".as_ptr() as *const _, 1) != 1 {
                            -1
                        } else {
                            fd
                        }
                    }
                    ChildOp::Truncate => libc::truncate(p, 0),
                    ChildOp::Create => {
                        libc::open(p, libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL, 0o640)
                    }
                    ChildOp::Mkdir => libc::mkdir(p, 0o755),
                    ChildOp::Unlink => libc::unlink(p),
                    ChildOp::Chmod => libc::chmod(p, 0o600),
                    ChildOp::SetXattr => {
                        libc::lsetxattr(p, c"user.x".as_ptr(), b"1".as_ptr() as *const _, 1, 0)
                    }
                    ChildOp::UtimeNow => libc::utimensat(libc::AT_FDCWD, p, std::ptr::null(), 0),
                    ChildOp::UtimeExplicit => {
                        let ts = [
                            libc::timespec {
                                tv_sec: 5,
                                tv_nsec: 0,
                            },
                            libc::timespec {
                                tv_sec: 5,
                                tv_nsec: 0,
                            },
                        ];
                        libc::utimensat(libc::AT_FDCWD, p, ts.as_ptr(), 0)
                    }
                };
                if r < 0 { e() } else { 0 }
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child did not exit normally");
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 200, "could not switch to uid 1000");
    code
}

#[test]
fn posix_permissions_as_other_uid() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new()
            .file("secret", b"s", 0o600)
            .file("open", b"o", 0o666),
        Layer::new()
            .dir("rootdir", 0o755)
            .file("rootdir/f", b"f", 0o644)
            .dir("pub", 0o777)
            .file("ro644", b"r", 0o644)
            .file("mine", b"m", 0o644)
            .chown("mine", 1000, 1000),
    ]);
    let mut fx = WFixture::new(&stack);
    let mut t = Checks::new();
    use ChildOp::*;
    let ops: &[(&str, i32, ChildOp, &str)] = &[
        ("open secret O_RDONLY", libc::EACCES, OpenRead, "secret"),
        ("append to a 0666 file", 0, Append, "open"),
        ("truncate secret", libc::EACCES, Truncate, "secret"),
        (
            "create in a root 0755 dir",
            libc::EACCES,
            Create,
            "rootdir/new",
        ),
        ("create in a 0777 dir", 0, Create, "pub/new"),
        ("mkdir in a 0777 dir", 0, Mkdir, "pub/newdir"),
        ("unlink in a root dir", libc::EACCES, Unlink, "rootdir/f"),
        ("chmod a root file", libc::EPERM, Chmod, "ro644"),
        ("chmod own lower file", 0, Chmod, "mine"),
        (
            "open a 0644 root file O_WRONLY",
            libc::EACCES,
            OpenWrite,
            "ro644",
        ),
        ("setxattr user.x on a 0666 root file", 0, SetXattr, "open"),
        ("utimensat(NULL) on a 0666 root file", 0, UtimeNow, "open"),
        (
            "utimensat(explicit) on a 0666 root file",
            libc::EPERM,
            UtimeExplicit,
            "open",
        ),
    ];
    for (what, want, op, p) in ops {
        let a = as_uid_1000(*op, &cstr(&fx.k().join(p)));
        let b = as_uid_1000(*op, &cstr(&fx.f().join(p)));
        let s = |x: i32| if x == 0 { "Ok".to_string() } else { errname(x) };
        t.expect(true, a == *want, format!("{what}: kernel {}", s(a)));
        if a != b {
            t.fails.push(format!(
                "{what} as uid 1000: kernel {} vs under test {}",
                s(a),
                s(b)
            ));
        }
    }
    t.expect_both(&fx, |m, _| {
        let st = lstat(&m.join("pub/new")).map_err(|e| format!("pub/new: {}", errname(e)))?;
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (1000, 1000, 0o640) {
            return Err(format!(
                "pub/new created by uid 1000: {}",
                stat_summary(&st)
            ));
        }
        Ok(())
    });
    t.finish("posix_permissions_as_other_uid", &mut fx);
}

#[allow(dead_code)]
fn _unused(_: &WFixture) -> u64 {
    fs::metadata("/").map(|m| m.ino()).unwrap_or(0)
}

/// Lower hard links stay linked across copy-up (kernel overlayfs's index=on
/// behaviour; the kernel reference here runs index=off, where copy-up breaks
/// the link, so this checks layerfs alone): writing through one name is seen
/// through every other name, which report one inode.
#[test]
fn lower_hardlinks_stay_linked_after_copy_up() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("lf", b"lower", 0o644),
        Layer::new()
            .file("h1", b"pair", 0o644)
            .hardlink("h2", "h1")
            .hardlink("h4", "h1"),
    ]);
    let fx = WFixture::new(&stack);
    let m = fx
        .fmnt
        .as_ref()
        .expect("layerfs mount")
        .path()
        .to_path_buf();
    let h2_before = lstat(&m.join("h2")).expect("lstat h2");
    link(&m.join("h1"), &m.join("h3")).expect("link h1 h3");
    let fd = open(&m.join("h3"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open h3");
    write(&fd, b"+3").expect("append h3");
    drop(fd);
    for p in ["h1", "h2", "h3", "h4"] {
        assert_eq!(read_path(&m.join(p)).expect(p), b"pair+3".to_vec(), "{p}");
        let st = lstat(&m.join(p)).expect(p);
        assert_eq!(st.st_ino, h2_before.st_ino, "{p} keeps the inode number");
    }
}

/// A file keeps its inode number across copy-up, and after unmount and
/// mount again (the copy records its origin, as kernel overlayfs does); the
/// readdir d_ino agrees with st_ino. Checked on both mounts.
#[test]
fn inode_numbers_survive_copy_up_and_remount() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("top", b"t", 0o644),
        Layer::new()
            .file("f", b"lower", 0o644)
            .symlink("s", "f")
            .dir("d", 0o755)
            .file("d/g", b"g", 0o644),
    ]);
    let mut fx = WFixture::new(&stack);
    let names = ["f", "s", "d", "d/g"];
    let inos = |root: &Path| -> Vec<u64> {
        names
            .iter()
            .map(|p| lstat(&root.join(p)).expect(p).st_ino)
            .collect()
    };
    let roots = [fx.k().to_path_buf(), fx.f().to_path_buf()];
    let before: Vec<Vec<u64>> = roots.iter().map(|r| inos(r)).collect();
    for r in &roots {
        let fd = open(&r.join("f"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open f");
        write(&fd, b"+").expect("append f");
        lchown(&r.join("s"), 5, 5).expect("chown s");
        let fd = open(&r.join("d/g"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open d/g");
        write(&fd, b"+").expect("append d/g");
    }
    let after: Vec<Vec<u64>> = roots.iter().map(|r| inos(r)).collect();
    assert_eq!(before, after, "st_ino changed at copy-up (kernel, layerfs)");
    let problems = fx.unmount();
    assert!(problems.is_empty(), "{problems:?}");
    fx.mount().expect("remount");
    let roots = [fx.k().to_path_buf(), fx.f().to_path_buf()];
    let remounted: Vec<Vec<u64>> = roots.iter().map(|r| inos(r)).collect();
    assert_eq!(
        before, remounted,
        "st_ino changed across remount (kernel, layerfs)"
    );
    for r in &roots {
        for e in fs::read_dir(r).expect("readdir") {
            let e = e.expect("entry");
            let st = lstat(&e.path()).expect("lstat");
            use std::os::unix::fs::DirEntryExt;
            assert_eq!(
                e.ino(),
                st.st_ino,
                "d_ino vs st_ino of {}",
                e.path().display()
            );
        }
    }
}

/// chmod, chown, utimens and xattr changes of a lower file copy its metadata only (kernel
/// overlayfs's metacopy, marked with `trusted.overlay.metacopy`): the data stays below and is
/// read from there, also after a remount; the first write copies the data in.
#[test]
fn metadata_changes_copy_no_data() {
    if !init() || !layerfs_specific() {
        return;
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let stack = Stack::new(vec![
        Layer::new().file("top", b"t", 0o644),
        Layer::new()
            .file("f", &big, 0o644)
            .file("g", b"small", 0o600),
    ]);
    let mut fx = WFixture::new(&stack);
    let m = fx.f().to_path_buf();
    chmod(&m.join("f"), 0o600).expect("chmod f");
    lchown(&m.join("g"), 1000, 1000).expect("chown g");
    let metacopy = |p: &Path| lgetxattr(p, "trusted.overlay.metacopy").is_ok();
    let allocated = |p: &Path| lstat(p).expect("lstat").st_blocks as u64 * 512;
    assert!(
        metacopy(&fx.f_upper.join("f")),
        "upper/f is not a metadata-only copy"
    );
    assert!(
        allocated(&fx.f_upper.join("f")) < 64 * 1024,
        "upper/f holds data"
    );
    assert_eq!(read_path(&m.join("f")).expect("read f"), big);
    assert_eq!(
        lstat(&m.join("f")).expect("lstat f").st_mode & 0o7777,
        0o600
    );
    assert!(
        allocated(&m.join("f")) >= big.len() as u64 / 2,
        "st_blocks of f"
    );
    assert_no_failures("before remount", &fx.unmount());
    fx.mount().expect("remount");
    let m = fx.f().to_path_buf();
    assert_eq!(read_path(&m.join("f")).expect("read f after remount"), big);
    assert_eq!(read_path(&m.join("g")).expect("read g"), b"small".to_vec());
    let fd = open(&m.join("f"), libc::O_WRONLY, 0).expect("open f for writing");
    pwrite(&fd, b"HEAD", 0).expect("pwrite");
    drop(fd);
    let mut want = big.clone();
    want[..4].copy_from_slice(b"HEAD");
    assert_eq!(read_path(&m.join("f")).expect("read f after write"), want);
    assert!(
        !metacopy(&fx.f_upper.join("f")),
        "upper/f still marked after a write"
    );
    assert_eq!(fs::read(fx.f_upper.join("f")).expect("read upper/f"), want);
    assert_eq!(
        lstat(&m.join("f")).expect("lstat f").st_mode & 0o7777,
        0o600
    );
    truncate(&m.join("g"), 2).expect("truncate g");
    assert_eq!(read_path(&m.join("g")).expect("read g"), b"sm".to_vec());
}

/// chmod and chown of a lower file that cannot become a metadata-only copy (a hard link: its
/// other names join the copy) copy its data with it, on kernel overlayfs and layerfs.
#[test]
fn chmod_of_a_lower_hard_link_keeps_its_data() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("top", b"t", 0o644),
        Layer::new()
            .file("h1", b"linked data", 0o644)
            .hardlink("h2", "h1")
            .file("u", b"second set", 0o644)
            .hardlink("u2", "u"),
    ]);
    let fx = WFixture::new(&stack);
    for r in [fx.k().to_path_buf(), fx.f().to_path_buf()] {
        chmod(&r.join("h1"), 0o600).expect("chmod h1");
        lchown(&r.join("u"), 1000, 1000).expect("chown u");
        for (p, want) in [
            ("h1", &b"linked data"[..]),
            ("h2", b"linked data"),
            ("u", b"second set"),
            ("u2", b"second set"),
        ] {
            assert_eq!(
                read_path(&r.join(p)).expect(p),
                want.to_vec(),
                "{} lost its data",
                r.join(p).display()
            );
        }
    }
}

/// chown(path, -1, -1) changes nothing but still moves the ctime, of an upper file as of a
/// lower one (which it copies up), on kernel overlayfs and layerfs.
#[test]
fn chown_to_the_same_ids_moves_ctime() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![Layer::new().file("lower", b"l", 0o644)]);
    let fx = WFixture::new(&stack);
    let ctime = |p: &Path| {
        let st = lstat(p).expect("lstat");
        (st.st_ctime, st.st_ctime_nsec)
    };
    for r in [fx.k().to_path_buf(), fx.f().to_path_buf()] {
        create_file(&r.join("upper"), b"u", 0o644).expect("create upper");
        for name in ["upper", "lower"] {
            let p = r.join(name);
            let before = ctime(&p);
            std::thread::sleep(std::time::Duration::from_millis(20));
            lchown(&p, u32::MAX, u32::MAX).expect("chown -1 -1");
            assert_ne!(ctime(&p), before, "ctime of {}", p.display());
        }
    }
}

/// fuse-overlayfs's and kernel overlayfs's options do what they say: `noxattrs=1` (xattrs
/// unsupported), `static_nlink` (directories report 1), `redirect_dir=follow` (renaming a lower
/// directory is EXDEV), `metacopy=off` (chmod copies the data), `userxattr` (overlay marks in
/// user.overlay.* even as root). Layerfs alone: the kernel mounts with other defaults.
#[test]
fn drop_in_options_do_what_they_say() {
    if !init() || !layerfs_specific() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("top", b"t", 0o644),
        Layer::new()
            .dir("d", 0o755)
            .file("d/x", b"x", 0o644)
            .dir("gone", 0o755)
            .file("f", b"lower data", 0o644),
    ]);
    let mut fx = WFixture::unmounted(&stack);
    let (layers, upper, work) = (fx.f_layers.clone(), fx.f_upper.clone(), fx.f_work.clone());
    let target = fx.base().join("mf");
    let opts = "noxattrs=1,static_nlink,redirect_dir=follow,metacopy=off";
    fx.fmnt = Some(mount_layerfs(&layers, Some((&upper, &work)), &target, &[opts]).expect("mount"));
    let m = target.clone();
    assert_eq!(lgetxattr(&m.join("f"), "user.x"), Err(libc::EOPNOTSUPP));
    assert_eq!(
        lsetxattr(&m.join("f"), "user.x", b"1", 0),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(lstat(&m.join("d")).expect("lstat d").st_nlink, 1);
    assert_eq!(rename2(&m.join("d"), &m.join("e"), 0), Err(libc::EXDEV));
    chmod(&m.join("f"), 0o600).expect("chmod f");
    assert_eq!(
        fs::read(upper.join("f")).expect("read upper/f"),
        b"lower data"
    );
    assert_eq!(
        lgetxattr(&upper.join("f"), "trusted.overlay.metacopy"),
        Err(libc::ENODATA),
        "metacopy=off made a metadata-only copy"
    );
    let mut mnt = fx.fmnt.take().expect("mount");
    mnt.unmount().expect("unmount");
    fx.fmnt = Some(
        mount_layerfs(&layers, Some((&upper, &work)), &target, &["userxattr"]).expect("remount"),
    );
    rmdir(&m.join("gone")).expect("rmdir gone");
    mkdir(&m.join("gone"), 0o755).expect("mkdir gone");
    assert_eq!(
        lgetxattr(&upper.join("gone"), "user.overlay.opaque"),
        Ok(b"y".to_vec())
    );
    assert_eq!(
        lgetxattr(&upper.join("gone"), "trusted.overlay.opaque"),
        Err(libc::ENODATA)
    );
    rename2(&m.join("d"), &m.join("e"), 0).expect("rename d e (redirect_dir=on by default)");
    assert_eq!(read_path(&m.join("e/x")).expect("read e/x"), b"x".to_vec());
    assert!(lgetxattr(&upper.join("e"), "user.overlay.redirect").is_ok());
    let mut mnt = fx.fmnt.take().expect("mount");
    mnt.unmount().expect("unmount");
    fx.fmnt = Some(
        mount_layerfs(
            &layers,
            Some((&upper, &work)),
            &target,
            &["redirect_dir=nofollow"],
        )
        .expect("remount nofollow"),
    );
    assert_eq!(lstat(&m.join("e")).map(|_| ()), Err(libc::EPERM));
    assert_eq!(
        read_path(&m.join("f")).expect("read f"),
        b"lower data".to_vec()
    );
}

/// A writable mount of one lower layer holding `f` ("lower"), its daemon in
/// the foreground: `child` is the daemon, its output goes to `log`.
struct ForegroundMount {
    _base: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    m: Mnt,
    child: std::process::Child,
}

fn foreground_mount() -> ForegroundMount {
    let base = crate::common::temp_base();
    let p = |n: &str| base.path().join(n);
    let (lower, upper, work, mnt, log) = (p("l"), p("u"), p("w"), p("m"), p("daemon.log"));
    for d in [&lower, &upper, &work] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(lower.join("f"), b"lower").unwrap();
    let uw = Some((upper.as_path(), work.as_path()));
    let mut m = mount_layerfs_foreground(std::slice::from_ref(&lower), uw, &mnt, &log)
        .unwrap_or_else(|e| panic!("{e}"));
    let child = m.child.take().expect("foreground child");
    ForegroundMount {
        _base: base,
        lower,
        upper,
        work,
        mnt,
        log,
        m,
        child,
    }
}

impl ForegroundMount {
    /// umount(2) itself (the umount command may stat the mount point, which
    /// needs the daemon); the mount guard no longer unmounts.
    fn umount(&mut self) -> Result<(), i32> {
        let target = cstr(self.m.path());
        let r = rc(unsafe { libc::umount2(target.as_ptr(), 0) });
        self.m.disarm();
        r
    }

    /// Waits up to 10 s for the daemon to exit, killing it if it does not;
    /// whether it exited by itself.
    fn wait_exit(&mut self) -> bool {
        let child = &mut self.child;
        let exited = wait_until(std::time::Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited
    }
}

/// `umount`, then a new mount at the same path while the old daemon is still on its way out:
/// the old daemon must not take the new mount down when its session ends (fuser 0.18.0 called
/// umount(2) on the path again; see vendor/fuser/PATCHES.md). The old daemon is held stopped
/// across the umount and the new mount, which opens the window of that race for certain; the
/// kernel needs no answer from it for the umount (nothing is dirty or in flight).
#[test]
fn new_mount_survives_exit_of_previous_daemon_at_same_path() {
    if !init() || !layerfs_specific() {
        return;
    }
    let mut old = foreground_mount();
    let pid = old.child.id() as libc::pid_t;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let umounted = old.umount();
    let uw = Some((old.upper.as_path(), old.work.as_path()));
    let new = umounted
        .map_err(errname)
        .and_then(|()| mount_layerfs(std::slice::from_ref(&old.lower), uw, &old.mnt, &[]));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let exited = old.wait_exit();
    let mut new = new.unwrap_or_else(|e| panic!("umount, then mount again: {e}"));
    assert!(exited, "the old daemon did not exit after its umount");
    assert!(
        crate::common::is_mounted(new.path()),
        "the new mount at {} is gone after the old daemon exited; old daemon's log: {}",
        old.mnt.display(),
        fs::read_to_string(&old.log).unwrap_or_default()
    );
    assert_eq!(read_path(&new.path().join("f")), Ok(b"lower".to_vec()));
    new.unmount().unwrap_or_else(|e| panic!("{e}"));
}

/// Threads of process `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// With the fuse module's io_uring switch on, requests are served by one
/// queue thread per CPU; the tree behaves the same, and unmounting ends the
/// queue threads and the daemon.
#[test]
fn io_uring_queues_serve_requests_and_end_with_the_mount() {
    if !init() || !layerfs_specific() {
        return;
    }
    let enabled = fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|s| s.trim() == "Y")
        && !std::env::var("LAYERFS_TEST_OPTS").is_ok_and(|o| o.contains("uring="));
    let mut fm = foreground_mount();
    let mut fails = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            fails.push(format!("{what}: {detail}"));
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The mount is live before the daemon has started all its threads.
    let pid = fm.child.id();
    if enabled {
        wait_until(std::time::Duration::from_secs(5), || {
            threads_named(pid, "fuser-q") >= cpus
        });
    }
    let queues = threads_named(pid, "fuser-q");
    if enabled {
        check(
            "a queue thread per CPU",
            queues >= cpus,
            format!("{queues} for {cpus} CPUs"),
        );
    } else {
        check("no queue threads", queues == 0, format!("{queues}"));
    }
    let p = fm.m.path().to_path_buf();
    let os = |r: std::io::Result<()>| r.map_err(|e| e.raw_os_error().unwrap_or(0));
    let appended = fs::OpenOptions::new()
        .append(true)
        .open(p.join("f"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"));
    check(
        "append to a lower file",
        appended.is_ok(),
        format!("{appended:?}"),
    );
    let r = read_path(&p.join("f"));
    check(
        "read it back",
        r == Ok(b"lower+".to_vec()),
        format!("{r:?}"),
    );
    let r = create_file(&p.join("n"), &[7u8; 200_000], 0o640);
    check("create", r.is_ok(), format!("{r:?}"));
    let r = read_path(&p.join("n"));
    check(
        "read 200 kB back",
        r == Ok(vec![7u8; 200_000]),
        format!("{:?}", r.map(|v| v.len())),
    );
    let r = os(fs::rename(p.join("n"), p.join("n2")));
    check("rename", r.is_ok(), format!("{r:?}"));
    let r = os(fs::remove_file(p.join("n2")));
    check("unlink", r.is_ok(), format!("{r:?}"));
    let r = os(fs::metadata(p.join("n2")).map(|_| ()));
    check(
        "lookup of the removed name",
        r == Err(libc::ENOENT),
        format!("{r:?}"),
    );
    let umounted = fm.umount();
    check("umount", umounted.is_ok(), format!("{umounted:?}"));
    let exited = fm.wait_exit();
    let log = fs::read_to_string(&fm.log).unwrap_or_default();
    check("the daemon exits after umount", exited, log);
    assert_no_failures("io_uring queues", &fails);
}
