//! Ownership (issue 8): id mapping options and user namespaces.
//!
//! - `uidmapping_gidmapping`: `-o uidmapping=C:H:N...,gidmapping=...` (fuse-overlayfs's
//!   options, as containers/storage passes them): ids C stored in the layers show as H through
//!   getattr, lookup and readdirplus; chown to H and objects created by H store C; ids outside
//!   the mapping show, and are stored, as the overflow id.
//! - `squash_options`: `squash_to_root`, `squash_to_uid=`, `squash_to_gid=`.
//! - `rootless_like_kernel_overlay`: inside `unshare -Urm` (only root mapped), kernel overlayfs
//!   with `-o userxattr` (the oracle) and layerfs on identical copies of one layer holding files
//!   owned by unmapped ids; every operation's result is compared. The differences that FUSE
//!   itself imposes (the kernel gives a FUSE inode with an unmapped owner an invalid owner, and
//!   the VFS refuses writes to such inodes before the daemon sees them) are listed in
//!   `FUSE_DIFFERENCES` with both errnos, so that any other difference, or a change of these,
//!   fails. The test re-runs this binary inside the namespace (`inner_rootless_side`).
//!
//! Needs root and /dev/fuse (else "skipped", unless LAYERFS_REQUIRE_MOUNT_TESTS=1).

mod common;

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Layer, Layerfs, Stack};

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

fn owned_stack() -> Stack {
    Stack::new(vec![
        Layer::new()
            .file("root", "r\n", 0o644)
            .file("one", "1\n", 0o644)
            .chown("one", 1, 1)
            .file("five", "5\n", 0o644)
            .chown("five", 5, 6)
            .file("outside", "o\n", 0o644)
            .chown("outside", 1000, 1000)
            .dir("shared", 0o777)
            .file("shared/f", "f\n", 0o644)
            .chown("shared/f", 2, 3),
    ])
}

const UIDS: &str = "uidmapping=0:1000:1:1:100000:10";
const GIDS: &str = "gidmapping=0:2000:1:1:200000:10";

#[test]
fn uidmapping_gidmapping() {
    if !common::mount_tests_required() || common::is_fuse_overlayfs() {
        return;
    }
    // Attributes reach the kernel through lookup/getattr, and with readdirplus also through
    // listings: both paths must map.
    for extra in ["readdirplus=off", "readdirplus=on"] {
        let dir = common::temp_base();
        let base = dir.path();
        let lowers = common::materialize(
            &owned_stack(),
            &base.join("layers"),
            common::Encoding::KERNEL,
        )
        .expect("materialize");
        let (upper, work) = (base.join("u"), base.join("w"));
        fs::create_dir_all(&upper).unwrap();
        fs::create_dir_all(&work).unwrap();
        let f = Layerfs::mount(
            &lowers,
            Some((&upper, &work)),
            &base.join("mf"),
            &[UIDS, GIDS, extra],
        )
        .expect("mount");
        let m = f.path();
        // List first, so that with readdirplus the attributes come from the listing.
        common::list_names(m).unwrap();
        let shown: &[(&str, (u32, u32))] = &[
            ("", (1000, 2000)),
            ("root", (1000, 2000)),
            ("one", (100000, 200000)),
            ("five", (100004, 200005)),
            ("outside", (65534, 65534)),
            ("shared/f", (100001, 200002)),
        ];
        for (p, want) in shown {
            assert_eq!(owner(&m.join(p)), *want, "{extra}: owner of /{p}");
        }

        // chown by host id H stores container id C.
        std::os::unix::fs::chown(m.join("root"), Some(100007), Some(200003)).unwrap();
        assert_eq!(owner(&m.join("root")), (100007, 200003));
        assert_eq!(owner(&upper.join("root")), (8, 4), "{extra}: stored owner");
        // An id outside the mapping is stored as the overflow id (as fuse-overlayfs does).
        std::os::unix::fs::lchown(m.join("five"), Some(4242), None).unwrap();
        assert_eq!(owner(&upper.join("five")), (65534, 6));
        assert_eq!(owner(&m.join("five")), (65534, 200005));
        // Copy-up keeps the stored owner.
        fs::write(m.join("shared/f"), "changed\n").unwrap();
        assert_eq!(owner(&upper.join("shared/f")), (2, 3));

        // New objects of a mapped caller (host 100003:200004) store 4:5.
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg("cd \"$1\" && : > file && mkdir dir && ln -s file link && mkfifo fifo")
            .arg("sh")
            .arg(m.join("shared"))
            .uid(100003)
            .gid(200004)
            .output()
            .expect("sh as a mapped user");
        assert!(
            out.status.success(),
            "{extra}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for n in ["file", "dir", "link", "fifo"] {
            assert_eq!(owner(&upper.join("shared").join(n)), (4, 5), "{extra}: {n}");
            assert_eq!(owner(&m.join("shared").join(n)), (100003, 200004), "{n}");
        }
        // Root of the host is outside this mapping: what it creates is stored as overflow.
        fs::write(m.join("by-host-root"), "x\n").unwrap();
        assert_eq!(owner(&upper.join("by-host-root")), (65534, 65534));
    }
}

#[test]
fn squash_options() {
    if !common::mount_tests_required() || common::is_fuse_overlayfs() {
        return;
    }
    type Owner = (u32, u32);
    let cases: &[(&[&str], Owner, Owner)] = &[
        // (options, owner shown for `one` (stored 1:1), for `outside` (stored 1000:1000))
        (&["squash_to_root"], (0, 0), (0, 0)),
        (&["squash_to_uid=7", "squash_to_gid=8"], (7, 8), (7, 8)),
        (&["squash_to_root", "squash_to_uid=7"], (7, 0), (7, 0)),
        (&["squash_to_gid=9", UIDS], (100000, 9), (65534, 9)),
    ];
    for (opts, one, outside) in cases {
        let dir = common::temp_base();
        let lowers = common::materialize(
            &owned_stack(),
            &dir.path().join("layers"),
            common::Encoding::KERNEL,
        )
        .expect("materialize");
        let f = Layerfs::mount(&lowers, None, &dir.path().join("mf"), opts).expect("mount");
        assert_eq!(owner(&f.path().join("one")), *one, "{opts:?}");
        assert_eq!(owner(&f.path().join("outside")), *outside, "{opts:?}");
        // What is stored is not touched.
        assert_eq!(owner(&lowers[0].join("one")), (1, 1));
    }
}

// ------------------------------------------------------------------------------------------
// Rootless: unmapped owners inside a user namespace
// ------------------------------------------------------------------------------------------

const INNER_ENV: &str = "LAYERFS_ROOTLESS_BASE";

/// One layer with files of ids the namespace will not map (1000), in `dir/l`, plus empty
/// `dir/u`, `dir/w`, `dir/m`.
fn rootless_layer(dir: &Path) -> io::Result<()> {
    for d in ["l", "u", "w", "m"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let l = dir.join("l");
    let file = |p: &str, mode: u32, uid: u32, gid: u32| -> io::Result<()> {
        fs::write(l.join(p), "a\n")?;
        std::os::unix::fs::chown(l.join(p), Some(uid), Some(gid))?;
        fs::set_permissions(l.join(p), fs::Permissions::from_mode(mode))
    };
    let dir_ = |p: &str, mode: u32, uid: u32| -> io::Result<()> {
        fs::create_dir(l.join(p))?;
        std::os::unix::fs::chown(l.join(p), Some(uid), Some(uid))?;
        fs::set_permissions(l.join(p), fs::Permissions::from_mode(mode))
    };
    file("f_unm", 0o644, 1000, 1000)?;
    file("f_unm666", 0o666, 1000, 1000)?;
    file("f_gunm666", 0o666, 0, 1000)?;
    file("f_gunm", 0o644, 0, 1000)?;
    file("f_root", 0o644, 0, 0)?;
    dir_("d_unm", 0o755, 1000)?;
    file("d_unm/x", 0o644, 1000, 1000)?;
    dir_("d_unm777", 0o777, 1000)?;
    file("d_unm777/x", 0o666, 1000, 1000)?;
    file("d_unm777/f_root", 0o666, 0, 0)?;
    std::os::unix::fs::symlink("f_root", l.join("s_unm"))?;
    std::os::unix::fs::lchown(l.join("s_unm"), Some(1000), Some(1000))
}

/// An operation's result: "ok VALUE" or the errno's name.
fn res<T: std::fmt::Debug>(r: io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => errno_str(e.raw_os_error().unwrap_or(-1)),
    }
}

fn errno_str(e: i32) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EACCES, "EACCES"),
        (libc::EINVAL, "EINVAL"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::EXDEV, "EXDEV"),
        (libc::EROFS, "EROFS"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("errno {e}"))
}

fn utime_now(p: &Path) -> io::Result<()> {
    let c = common::cpath(p);
    // SAFETY: valid path; NULL times means "now".
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

type Op = (&'static str, fn(&Path) -> String);

/// The operations, in order (later ones see earlier ones' effects).
fn rootless_ops() -> Vec<Op> {
    use std::os::unix::fs::{chown, lchown};
    vec![
        ("stat f_unm", |m| stat_of(m, "f_unm")),
        ("stat f_gunm666", |m| stat_of(m, "f_gunm666")),
        ("stat d_unm", |m| stat_of(m, "d_unm")),
        ("stat d_unm/x", |m| stat_of(m, "d_unm/x")),
        ("stat s_unm", |m| stat_of(m, "s_unm")),
        ("list /", |m| res(common::list_names(m))),
        ("read f_unm", |m| res(fs::read_to_string(m.join("f_unm")))),
        ("chown f_root to unmapped 1000", |m| {
            res(chown(m.join("f_root"), Some(1000), None))
        }),
        ("chown f_root 0:0 (copy-up)", |m| {
            res(chown(m.join("f_root"), Some(0), Some(0)))
        }),
        ("chown f_unm 0:0", |m| {
            res(chown(m.join("f_unm"), Some(0), Some(0)))
        }),
        ("chown f_unm 0", |m| {
            res(chown(m.join("f_unm"), Some(0), None))
        }),
        ("lchown s_unm 0:0", |m| {
            res(lchown(m.join("s_unm"), Some(0), Some(0)))
        }),
        ("chown d_unm 0:0", |m| {
            res(chown(m.join("d_unm"), Some(0), Some(0)))
        }),
        ("chmod f_unm", |m| {
            res(fs::set_permissions(
                m.join("f_unm"),
                fs::Permissions::from_mode(0o600),
            ))
        }),
        ("write f_unm (0644)", |m| append_to(m, "f_unm")),
        ("write f_unm666", |m| append_to(m, "f_unm666")),
        ("write f_gunm666", |m| append_to(m, "f_gunm666")),
        ("write f_gunm (owner root)", |m| append_to(m, "f_gunm")),
        ("chown f_gunm 0:0", |m| {
            res(chown(m.join("f_gunm"), Some(0), Some(0)))
        }),
        ("chgrp f_gunm 0", |m| {
            res(chown(m.join("f_gunm"), None, Some(0)))
        }),
        ("utime f_unm666", |m| res(utime_now(&m.join("f_unm666")))),
        ("setxattr f_unm666", |m| {
            res(common::lsetxattr(&m.join("f_unm666"), "user.k", b"v"))
        }),
        ("create in d_unm (0755)", |m| {
            res(fs::File::create(m.join("d_unm/new")).map(|_| ()))
        }),
        ("create in d_unm777", |m| {
            res(fs::File::create(m.join("d_unm777/new")).map(|_| ()))
        }),
        ("mkdir in d_unm777", |m| {
            res(fs::create_dir(m.join("d_unm777/sub")))
        }),
        ("write d_unm777/x", |m| append_to(m, "d_unm777/x")),
        // The file is mapped; its parent is not: the parent's copy-up fails.
        ("write d_unm777/f_root", |m| append_to(m, "d_unm777/f_root")),
        ("chmod d_unm777/f_root", |m| {
            res(fs::set_permissions(
                m.join("d_unm777/f_root"),
                fs::Permissions::from_mode(0o600),
            ))
        }),
        ("unlink d_unm/x", |m| {
            res(fs::remove_file(m.join("d_unm/x")))
        }),
        ("unlink d_unm777/x", |m| {
            res(fs::remove_file(m.join("d_unm777/x")))
        }),
        ("rmdir d_unm", |m| res(fs::remove_dir(m.join("d_unm")))),
        ("rename f_unm666", |m| {
            res(fs::rename(m.join("f_unm666"), m.join("renamed")))
        }),
        ("unlink f_unm", |m| res(fs::remove_file(m.join("f_unm")))),
    ]
}

fn stat_of(m: &Path, p: &str) -> String {
    res(fs::symlink_metadata(m.join(p)).map(|s| (s.uid(), s.gid(), s.mode() & 0o7777)))
}

fn append_to(m: &Path, p: &str) -> String {
    res(fs::OpenOptions::new()
        .append(true)
        .open(m.join(p))
        .and_then(|mut f| io::Write::write_all(&mut f, b"b")))
}

/// Differences FUSE imposes, as (operation, kernel overlayfs, layerfs). The kernel gives a FUSE
/// inode whose owner the mounter's namespace cannot name an invalid owner; the VFS then refuses
/// writes (EACCES), attribute changes that keep an invalid id (EOVERFLOW), xattr changes
/// (EPERM) and deletion (EOVERFLOW) before the daemon is asked. Kernel overlayfs inodes keep
/// the real (valid, unmapped) owner, so it refuses later, at copy-up (EOVERFLOW), or not at all
/// (a whiteout needs no copy-up). Every other result must be the kernel's.
const FUSE_DIFFERENCES: &[(&str, &str, &str)] = &[
    ("chown f_unm 0", "EPERM", "EOVERFLOW"),
    ("chmod f_unm", "EPERM", "EOVERFLOW"),
    ("write f_unm666", "EOVERFLOW", "EACCES"),
    ("write f_gunm666", "EOVERFLOW", "EACCES"),
    ("write f_gunm (owner root)", "EOVERFLOW", "EACCES"),
    ("utime f_unm666", "EOVERFLOW", "EACCES"),
    ("setxattr f_unm666", "EOVERFLOW", "EPERM"),
    ("create in d_unm777", "EOVERFLOW", "EACCES"),
    ("mkdir in d_unm777", "EOVERFLOW", "EACCES"),
    ("write d_unm777/x", "EOVERFLOW", "EACCES"),
    ("unlink d_unm/x", "EACCES", "EOVERFLOW"),
    ("rmdir d_unm", "ENOTEMPTY", "EOVERFLOW"),
    ("unlink f_unm", "ok ()", "EOVERFLOW"),
];

/// Unmounts on drop (inside the namespace).
struct Unmount(PathBuf, bool);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Err(e) = common::unmount(&self.0, self.1) {
            eprintln!("error: {e}");
        }
    }
}

/// Runs inside `unshare -Urm` (started by `rootless_like_kernel_overlay`); does nothing
/// otherwise.
#[test]
fn inner_rootless_side() {
    let Some(base) = std::env::var_os(INNER_ENV).map(PathBuf::from) else {
        return;
    };
    let (k, f) = (base.join("k"), base.join("f"));
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},userxattr",
            k.join("l").display(),
            k.join("u").display(),
            k.join("w").display()
        ))
        .arg(k.join("m"))
        .output()
        .expect("mount -t overlay");
    assert!(
        out.status.success(),
        "kernel overlay mount in the user namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _k = Unmount(k.join("m"), false);
    let fm = Layerfs::mount(
        &[f.join("l")],
        Some((&f.join("u"), &f.join("w"))),
        &f.join("m"),
        &[],
    )
    .expect("layerfs mount in the user namespace");
    let mut failures = Vec::new();
    for (name, op) in rootless_ops() {
        let (a, b) = (op(&k.join("m")), op(fm.path()));
        let known = FUSE_DIFFERENCES.iter().find(|(n, _, _)| *n == name);
        println!("{name:32} kernel {a:28} layerfs {b}");
        match known {
            None if a != b => failures.push(format!("{name}: kernel {a}, layerfs {b}")),
            Some((_, ka, kb)) if (a.as_str(), b.as_str()) != (*ka, *kb) => failures.push(format!(
                "{name}: kernel {a}, layerfs {b}; documented: kernel {ka}, layerfs {kb}"
            )),
            _ => {}
        }
    }
    // No failed copy-up left anything behind: the upper layer holds nothing the kernel's does
    // not, and the work directory is empty.
    let names = |p: &Path| common::list_names(p).unwrap_or_default();
    for n in names(&f.join("u")) {
        if !names(&k.join("u")).contains(&n) {
            failures.push(format!("layerfs upper has {n:?}, the kernel's does not"));
        }
    }
    let work = names(&f.join("w/work"));
    if !work.is_empty() {
        failures.push(format!("layerfs work directory not empty: {work:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rootless_like_kernel_overlay() {
    // Also meaningful with LAYERFS_BIN pointing at fuse-overlayfs: the
    // same operations, compared with kernel overlayfs.
    if !common::mount_tests_required() {
        return;
    }
    let dir = common::temp_base();
    // The namespace's root is host root, so the layers stay readable; only 1000 is unmapped.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for side in ["k", "f"] {
        rootless_layer(&dir.path().join(side)).expect("prepare layer");
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args(["-Urm", "--"])
        .arg(exe)
        .args([
            "--exact",
            "inner_rootless_side",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, dir.path())
        .output()
        .expect("unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "inside the user namespace:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the inner test did not run:\n{text}"
    );
}
