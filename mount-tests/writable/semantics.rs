//! Issue 8: the places where FUSE overlays so far break programs that work on kernel overlayfs.
//! Each test runs the same steps on kernel overlayfs (mounted with `redirect_dir=on`) and on the
//! mount under test, compares every result and the trees, the upper directories after unmount,
//! the same uppers mounted again, and the uppers rotated into the lower stack (see
//! `WFixture::finish`). With `LAYERFS_BIN=/usr/bin/fuse-overlayfs` they fail: it answers EXDEV
//! to directory renames and serves stale data to descriptors opened before a copy-up.
#![allow(unused_must_use)]

use crate::common::{Layer, Stack};
use crate::harness::*;
use std::path::Path;

type NamedStep<'a> = (&'a str, Box<dyn Fn(&Path) -> Res<String>>);

fn ok(r: Res<()>) -> Res<String> {
    r.map(|_| String::new())
}

fn listing(p: &Path) -> Res<String> {
    crate::common::list_names(p)
        .map(|v| {
            v.iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        })
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

fn read(p: &Path) -> Res<String> {
    std::fs::read(p)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

fn run_steps(name: &str, stack: &Stack, steps: &[NamedStep]) {
    if !init() {
        return;
    }
    let mut fx = WFixture::new(stack);
    let mut fails = Vec::new();
    for (what, f) in steps {
        let a = f(fx.k());
        let b = f(fx.f());
        eprintln!("kernel: {what}: {}", show_res(&a));
        if a != b {
            fails.push(format!(
                "{what}: kernel {} vs under test {}",
                show_res(&a),
                show_res(&b)
            ));
        }
    }
    fails.extend(fx.finish());
    assert_no_failures(name, &fails);
}

/// Directories that exist in lower layers move by redirect: within a directory, into another
/// one, again and again, back over their own whiteout, over an empty merged directory, swapped
/// with RENAME_EXCHANGE; their merged contents follow them, and rmdir works once they are
/// empty.
#[test]
fn lower_directory_renames() {
    let stack = Stack::new(vec![
        Layer::new()
            .file("src/top.txt", b"top", 0o644)
            .file("src/sub/deep/t.txt", b"t", 0o644)
            .dir("dst", 0o755)
            .file("dst/keep", b"k", 0o644),
        Layer::new()
            .file("src/mid.txt", b"mid", 0o644)
            .file("src/sub/s.txt", b"s", 0o644)
            .file("two/a/x", b"x", 0o644)
            .file("two/b/y", b"y", 0o644)
            .dir("emptymerged", 0o755)
            .file("gone/g", b"g", 0o644),
        Layer::new()
            .file("src/bottom.txt", b"bottom", 0o644)
            .file("src/sub/deep/b.txt", b"b", 0o644)
            .dir("emptymerged", 0o755)
            .file("rmme/only", b"o", 0o644),
    ]);
    let steps: Vec<NamedStep> = vec![
        (
            "rename within root",
            Box::new(|r| ok(rename2(&r.join("src"), &r.join("moved"), 0))),
        ),
        ("list moved", Box::new(|r| listing(&r.join("moved")))),
        (
            "read moved/bottom.txt",
            Box::new(|r| read(&r.join("moved/bottom.txt"))),
        ),
        (
            "old name is gone",
            Box::new(|r| ok(lstat(&r.join("src")).map(|_| ()))),
        ),
        (
            "rename again, into another directory",
            Box::new(|r| ok(rename2(&r.join("moved"), &r.join("dst/inner"), 0))),
        ),
        (
            "list dst/inner/sub/deep",
            Box::new(|r| listing(&r.join("dst/inner/sub/deep"))),
        ),
        (
            "rename a nested lower dir out of the moved one",
            Box::new(|r| ok(rename2(&r.join("dst/inner/sub"), &r.join("sub2"), 0))),
        ),
        (
            "list sub2/deep",
            Box::new(|r| listing(&r.join("sub2/deep"))),
        ),
        (
            "list dst/inner",
            Box::new(|r| listing(&r.join("dst/inner"))),
        ),
        (
            "create inside a moved dir",
            Box::new(|r| {
                ok(std::fs::write(r.join("sub2/deep/new.txt"), b"n")
                    .map_err(|e| e.raw_os_error().unwrap_or(0)))
            }),
        ),
        (
            "modify a lower file inside a moved dir",
            Box::new(|r| {
                ok(std::fs::write(r.join("dst/inner/mid.txt"), b"MID")
                    .map_err(|e| e.raw_os_error().unwrap_or(0)))
            }),
        ),
        (
            "back to its first name, over its whiteout",
            Box::new(|r| ok(rename2(&r.join("dst/inner"), &r.join("src"), 0))),
        ),
        ("list src", Box::new(|r| listing(&r.join("src")))),
        (
            "read src/mid.txt",
            Box::new(|r| read(&r.join("src/mid.txt"))),
        ),
        (
            "over an empty merged directory",
            Box::new(|r| ok(rename2(&r.join("two/a"), &r.join("emptymerged"), 0))),
        ),
        (
            "list emptymerged",
            Box::new(|r| listing(&r.join("emptymerged"))),
        ),
        (
            "RENAME_EXCHANGE of two lower dirs",
            Box::new(|r| {
                ok(rename2(
                    &r.join("two/b"),
                    &r.join("sub2"),
                    libc::RENAME_EXCHANGE,
                ))
            }),
        ),
        ("list two/b", Box::new(|r| listing(&r.join("two/b")))),
        ("list sub2", Box::new(|r| listing(&r.join("sub2")))),
        ("rm gone/g", Box::new(|r| ok(unlink(&r.join("gone/g"))))),
        ("rmdir gone", Box::new(|r| ok(rmdir(&r.join("gone"))))),
        (
            "rename onto a deleted dir's whiteout",
            Box::new(|r| ok(rename2(&r.join("rmme"), &r.join("gone"), 0))),
        ),
        (
            "rmdir of a renamed, non-empty dir",
            Box::new(|r| ok(rmdir(&r.join("gone")))),
        ),
        ("empty it", Box::new(|r| ok(unlink(&r.join("gone/only"))))),
        (
            "rmdir of the renamed dir",
            Box::new(|r| ok(rmdir(&r.join("gone")))),
        ),
        ("list /", Box::new(listing)),
        ("list two", Box::new(|r| listing(&r.join("two")))),
    ];
    run_steps("lower_directory_renames", &stack, &steps);
}

/// What a descriptor opened read-only on a lower file sees after another descriptor copied the
/// file up and changed it: `read()` returns the new data and `fstat` the new size, as on kernel
/// overlayfs since 4.19.
fn coherence_scenario(r: &Path) -> Res<String> {
    let p = r.join("data/file.txt");
    let mut seen = Vec::new();
    let ro = open(&p, libc::O_RDONLY, 0)?;
    seen.push(format!(
        "before: {:?}",
        String::from_utf8_lossy(&pread_all(&ro, 1 << 20)?)
    ));
    {
        let rw = open(&p, libc::O_RDWR, 0)?;
        pwrite(&rw, b"CHANGED through another descriptor, and longer", 0)?;
    }
    seen.push(format!(
        "after: {:?}",
        String::from_utf8_lossy(&pread_all(&ro, 1 << 20)?)
    ));
    seen.push(format!("fstat size: {}", fstat(&ro)?.st_size));
    // A second read-only descriptor, opened after the copy-up, agrees.
    let ro2 = open(&p, libc::O_RDONLY, 0)?;
    seen.push(format!(
        "new descriptor: {:?}",
        String::from_utf8_lossy(&pread_all(&ro2, 1 << 20)?)
    ));
    Ok(seen.join("; "))
}

#[test]
fn open_files_follow_copy_up() {
    let stack = Stack::new(vec![
        Layer::new().file("data/file.txt", b"lower data", 0o644),
        Layer::new().file("data/other", b"o", 0o644),
    ]);
    let steps: Vec<NamedStep> = vec![(
        "read-only descriptor across a copy-up by another descriptor",
        Box::new(coherence_scenario),
    )];
    run_steps("open_files_follow_copy_up", &stack, &steps);
}

/// A mapping made through such a descriptor after the change maps the new data on layerfs (one
/// page cache per file). Kernel overlayfs maps the lower file there (the new size, the old
/// bytes), so this is checked on layerfs alone.
#[test]
fn new_mapping_after_copy_up_sees_new_data() {
    if !init() || !layerfs_specific() {
        return;
    }
    let stack = Stack::new(vec![Layer::new().file("f", b"lower data", 0o644)]);
    let fx = WFixture::new(&stack);
    let p = fx.f().join("f");
    let ro = open(&p, libc::O_RDONLY, 0).expect("open ro");
    let rw = open(&p, libc::O_RDWR, 0).expect("open rw");
    let new = b"new data, longer than before";
    pwrite(&rw, new, 0).expect("pwrite");
    drop(rw);
    let len = fstat(&ro).expect("fstat").st_size as usize;
    assert_eq!(len, new.len());
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            ro.0,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap: {}", errname(errno()));
    let bytes = unsafe { std::slice::from_raw_parts(map as *const u8, len) }.to_vec();
    unsafe { libc::munmap(map, len) };
    assert_eq!(bytes, new);
}

/// Names, contents and link counts of `names`, and whether their inode number is still `ino`.
fn link_view(r: &Path, names: &[&str], ino: u64) -> Vec<String> {
    names
        .iter()
        .map(|n| match (lstat(&r.join(n)), read(&r.join(n))) {
            (Ok(st), Ok(data)) => format!(
                "{n}: {data:?} nlink {} {}",
                st.st_nlink,
                if st.st_ino == ino {
                    "same ino"
                } else {
                    "OTHER INO"
                }
            ),
            (Err(e), _) | (_, Err(e)) => format!("{n}: {}", errname(e)),
        })
        .collect()
}

/// The names of a lower hard link stay one file when one of them is copied up: the others
/// see the new data and inode number and the link counts are right, also after a remount
/// (kernel overlayfs with `index=on` is the reference).
#[test]
fn hard_links_survive_copy_up_and_remount() {
    if !init() {
        return;
    }
    let stack = Stack::new(vec![
        Layer::new().file("other", b"o", 0o644),
        Layer::new()
            .file("h1", b"data", 0o644)
            .hardlink("h2", "h1")
            .hardlink("h3", "h1")
            .hardlink("d/h4", "h1"),
    ]);
    let mut fx = WFixture::unmounted(&stack);
    let base = fx.base().to_path_buf();
    let mount = |fx: &mut WFixture| {
        fx.kmnt = Some(
            mount_kernel_opts(
                &fx.k_layers,
                Some((&fx.k_upper, &fx.k_work)),
                &base.join("mk"),
                &["redirect_dir=on", "index=on"],
            )
            .expect("kernel mount"),
        );
        fx.fmnt = Some(
            mount_impl(
                fx.which,
                &fx.f_layers,
                Some((&fx.f_upper, &fx.f_work)),
                &base.join("mf"),
            )
            .expect("mount under test"),
        );
    };
    let names = ["h1", "h2", "h3", "d/h4", "h5"];
    let mut fails = Vec::new();
    mount(&mut fx);
    let ino = |r: &Path| lstat(&r.join("h2")).expect("lstat h2").st_ino;
    let (ki, fi) = (ino(fx.k()), ino(fx.f()));
    let mut check = |fx: &WFixture, what: &str| {
        let (a, b) = (link_view(fx.k(), &names, ki), link_view(fx.f(), &names, fi));
        eprintln!("kernel, {what}: {a:?}");
        if a != b {
            fails.push(format!("{what}: kernel {a:?} vs under test {b:?}"));
        }
    };
    for r in [fx.k().to_path_buf(), fx.f().to_path_buf()] {
        // h1 and h2 are looked up before the copy-up, the others after.
        let fd = open(&r.join("h1"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open h1");
        write(&fd, b"+1").expect("append h1");
    }
    check(&fx, "after copy-up of h1");
    for r in [fx.k().to_path_buf(), fx.f().to_path_buf()] {
        unlink(&r.join("h2")).expect("unlink h2");
        link(&r.join("h3"), &r.join("h5")).expect("link h3 h5");
    }
    check(&fx, "after unlink h2, link h5");
    assert_no_failures("before remount", &fx.unmount());
    mount(&mut fx);
    check(&fx, "after remount");
    for r in [fx.k().to_path_buf(), fx.f().to_path_buf()] {
        let fd = open(&r.join("d/h4"), libc::O_WRONLY | libc::O_APPEND, 0).expect("open d/h4");
        write(&fd, b"+4").expect("append d/h4");
    }
    check(&fx, "after a write through d/h4");
    fails.extend(fx.unmount());
    assert_no_failures("hard_links_survive_copy_up_and_remount", &fails);
}
