//! The harness shared by the runner tests (run.rs) and the commit tests
//! (commit.rs): who runs the commands, the requirements check, `Env`, a
//! private store per test driven through the layerfs binary, and the tar
//! builders of the test images (a busybox root filesystem).

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tar::{EntryType, Header};

pub(crate) const BUSYBOX: &str = "/bin/busybox";

/// Who runs the commands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct As {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

pub(crate) fn lookup_user(name: &str) -> Option<As> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns NULL or a pointer valid until the next call;
    // the fields are copied at once.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            return None;
        }
        Some(As {
            uid: (*pw).pw_uid,
            gid: (*pw).pw_gid,
        })
    }
}

/// The unprivileged user to test as, or why the tests cannot run.
pub(crate) fn test_user() -> Result<As, String> {
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid != 0 {
        return Ok(As { uid, gid });
    }
    let name = std::env::var("LAYERFS_TEST_USER").unwrap_or_else(|_| "tester".into());
    lookup_user(&name).ok_or_else(|| {
        format!("no user {name} to run as (useradd -m {name}, or set LAYERFS_TEST_USER)")
    })
}

pub(crate) fn requirements() -> Result<As, String> {
    if fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return Err("/dev/fuse is not usable".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Err(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ));
    }
    test_user()
}

/// Returns the user to run as, or None after printing why the test is skipped.
pub(crate) fn setup() -> Option<As> {
    match requirements() {
        Ok(a) => Some(a),
        Err(why) => {
            if std::env::var("LAYERFS_REQUIRE_MOUNT_TESTS").as_deref() == Ok("1") {
                panic!("runner tests cannot run: {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

pub(crate) fn bin() -> PathBuf {
    std::env::var_os("LAYERFS_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_layerfs")))
}

/// A store owned by the test user, with the busybox images loaded.
pub(crate) struct Env {
    pub(crate) who: As,
    pub(crate) dir: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new(who: As) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-run-")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let c = CString::new(dir.path().to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), who.uid, who.gid) }, 0);
        let e = Env { who, dir };
        fs::write(e.path("busybox.tar"), crate::busybox_layer()).unwrap();
        let tar = e.path("busybox.tar");
        e.ok(&["import", tar.to_str().unwrap(), "busybox"]);
        e
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--root").arg(self.store()).args(args);
        c.current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("XDG_DATA_HOME");
        // SAFETY: plain getter.
        if unsafe { libc::getuid() } == 0 {
            c.uid(self.who.uid).gid(self.who.gid);
        }
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and expects exit status 0; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "layerfs {args:?}: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Container directories in the store.
    pub(crate) fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.store().join("containers"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Uppers may hold files of other ids: remove through layerfs rm.
        let names = self.containers();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(names.iter().map(String::as_str));
            let _ = self.run(&args);
        }
    }
}

pub(crate) fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

pub(crate) fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let h = header(path, EntryType::Regular, mode, data.len() as u64);
    b.append(&h, data).unwrap();
}

pub(crate) fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let h = header(path, EntryType::Directory, mode, 0);
    b.append(&h, &[][..]).unwrap();
}

/// A root filesystem: busybox with a link per applet, passwd, group.
pub(crate) fn busybox_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, "./", 0o755);
    for d in [
        "bin", "etc", "proc", "sys", "dev", "root", "home", "home/app", "srv", "var",
    ] {
        add_dir(&mut b, d, 0o755);
    }
    add_dir(&mut b, "tmp", 0o1777);
    add_file(&mut b, "bin/busybox", 0o755, &fs::read(BUSYBOX).unwrap());
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" || applet.is_empty() {
            continue;
        }
        let mut h = header(&format!("bin/{applet}"), EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox").unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    );
    add_file(
        &mut b,
        "etc/group",
        0o644,
        b"root:x:0:\nwheel:x:10:app\napp:x:1000:\n",
    );
    add_file(&mut b, "bin/notexec", 0o644, b"#!/bin/sh\necho no\n");
    b.into_inner().unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
