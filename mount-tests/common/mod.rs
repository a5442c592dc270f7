//! Shared harness for the mount tests: a small DSL describing a layer stack, materialization of
//! that stack on disk in several whiteout/opaque encodings, mount guards for kernel overlayfs (the
//! oracle) and for layerfs, and tree comparison helpers.
//!
//! Conventions:
//! - A [`Stack`] lists layers top first (`layers[0]` is the topmost lower layer, like the leftmost
//!   entry of `lowerdir=`).
//! - [`materialize`] writes layer `i` (0-based, top first) into `DIR/l{i+1}`, so `l1` is the top.
//! - The binary under test is `$LAYERFS_BIN` if set, else the `layerfs` binary built by cargo
//!   (only known when this file is compiled inside the layerfs package).
//! - `LAYERFS_REQUIRE_MOUNT_TESTS=1` turns "cannot mount here" into a failure instead of a skip.
//! - `LAYERFS_STRICT_DIR_INO=1` makes directory st_ino mismatches fail (otherwise only printed).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// Environment
// ------------------------------------------------------------------------------------------

/// The layerfs binary to test: `$LAYERFS_BIN`, else cargo's `CARGO_BIN_EXE_layerfs` when this
/// harness is compiled as part of the layerfs package.
pub fn layerfs_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAYERFS_BIN")
        && !p.is_empty()
    {
        return Some(PathBuf::from(p));
    }
    option_env!("CARGO_BIN_EXE_layerfs").map(PathBuf::from)
}

/// True when the binary under test is fuse-overlayfs (used as a stand-in during development):
/// layerfs-specific checks are skipped then.
pub fn is_fuse_overlayfs() -> bool {
    layerfs_bin()
        .and_then(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().contains("fuse-overlayfs"))
        })
        .unwrap_or(false)
}

/// Returns true when mount tests can run here. When they cannot (not root, no /dev/fuse, no
/// binary), prints "skipped" and returns false, unless `LAYERFS_REQUIRE_MOUNT_TESTS=1`, in which
/// case it panics.
pub fn mount_tests_required() -> bool {
    let required = std::env::var("LAYERFS_REQUIRE_MOUNT_TESTS").as_deref() == Ok("1");
    let mut why = Vec::new();
    if unsafe { libc::geteuid() } != 0 {
        why.push("not running as root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        why.push("/dev/fuse does not exist".to_string());
    }
    match layerfs_bin() {
        None => why.push("no layerfs binary (set LAYERFS_BIN)".to_string()),
        Some(b) if !b.exists() => {
            why.push(format!("layerfs binary {} does not exist", b.display()))
        }
        Some(_) => {}
    }
    if why.is_empty() {
        return true;
    }
    if required {
        panic!("mount tests required but cannot run: {}", why.join("; "));
    }
    println!("skipped: {}", why.join("; "));
    eprintln!("skipped: {}", why.join("; "));
    false
}

/// `if !common::mount_tests_required() { return; }` as a one-liner.
#[macro_export]
macro_rules! require_mount {
    () => {
        if !common::mount_tests_required() {
            return;
        }
    };
}

// ------------------------------------------------------------------------------------------
// Layer DSL
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A hard link at `path` to `target`, another path of the same layer.
    Hardlink {
        path: String,
        target: String,
    },
    Fifo {
        path: String,
        mode: u32,
    },
    Xattr {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    /// A whiteout for `path` (hides `path` in the layers below).
    Whiteout {
        path: String,
    },
    /// Marks directory `path` opaque (creating it with mode 0755 if needed).
    Opaque {
        path: String,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Mtime {
        path: String,
        secs: i64,
        nsecs: i64,
    },
}

#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub entries: Vec<Entry>,
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, e: Entry) -> &mut Self {
        self.entries.push(e);
        self
    }
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: path.into(),
            mode,
        });
        self
    }
    pub fn file(mut self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Self {
        self.entries.push(Entry::File {
            path: path.into(),
            content: content.as_ref().to_vec(),
            mode,
        });
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }
    pub fn fifo(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Fifo {
            path: path.into(),
            mode,
        });
        self
    }
    pub fn xattr(mut self, path: &str, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.entries.push(Entry::Xattr {
            path: path.into(),
            name: name.into(),
            value: value.as_ref().to_vec(),
        });
        self
    }
    pub fn whiteout(mut self, path: &str) -> Self {
        self.entries.push(Entry::Whiteout { path: path.into() });
        self
    }
    pub fn opaque(mut self, path: &str) -> Self {
        self.entries.push(Entry::Opaque { path: path.into() });
        self
    }
    pub fn chown(mut self, path: &str, uid: u32, gid: u32) -> Self {
        self.entries.push(Entry::Chown {
            path: path.into(),
            uid,
            gid,
        });
        self
    }
    pub fn mtime(mut self, path: &str, secs: i64) -> Self {
        self.entries.push(Entry::Mtime {
            path: path.into(),
            secs,
            nsecs: 0,
        });
        self
    }
    pub fn mtime_ns(mut self, path: &str, secs: i64, nsecs: i64) -> Self {
        self.entries.push(Entry::Mtime {
            path: path.into(),
            secs,
            nsecs,
        });
        self
    }
}

/// A stack of layers, top first.
#[derive(Clone, Debug, Default)]
pub struct Stack {
    pub layers: Vec<Layer>,
}

impl Stack {
    pub fn new(layers: Vec<Layer>) -> Self {
        Self { layers }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutEncoding {
    /// A character device 0/0 named NAME.
    Chardev,
    /// An empty regular file `.wh.NAME` (OCI/aufs style).
    WhFile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueEncoding {
    /// `trusted.overlay.opaque=y`
    TrustedXattr,
    /// `user.overlay.opaque=y`
    UserXattr,
    /// `user.fuseoverlayfs.opaque=y`
    FuseOverlayfsXattr,
    /// A `.wh..wh..opq` file inside the directory.
    WhOpqFile,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub whiteout: WhiteoutEncoding,
    pub opaque: OpaqueEncoding,
}

impl Encoding {
    /// The only encoding kernel overlayfs (without `userxattr`) understands.
    pub const KERNEL: Encoding = Encoding {
        whiteout: WhiteoutEncoding::Chardev,
        opaque: OpaqueEncoding::TrustedXattr,
    };
    pub const fn new(whiteout: WhiteoutEncoding, opaque: OpaqueEncoding) -> Self {
        Encoding { whiteout, opaque }
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path contains NUL")
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ctx<T>(r: io::Result<T>, what: &str, p: &Path) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display())))
}

fn check(rc: libc::c_int, what: &str, p: &Path) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", p.display()),
        ));
    }
    Ok(())
}

/// Creates the missing ancestors of `rel` inside `root` with mode 0755.
fn ensure_parents(root: &Path, rel: &str) -> io::Result<()> {
    let mut cur = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} exists and is not a directory",
                    cur.display()
                )));
            }
            Err(_) => {
                ctx(fs::create_dir(&cur), "mkdir", &cur)?;
                ctx(
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)),
                    "chmod",
                    &cur,
                )?;
            }
        }
    }
    Ok(())
}

/// Creates (truncating) a regular file with `content`, exact `mode` and mtime DEFAULT_MTIME,
/// using fd-based calls (this runs 100,000s of times in the big tests).
fn write_file(p: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut f = ctx(
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(p),
        "create",
        p,
    )?;
    if !content.is_empty() {
        ctx(f.write_all(content), "write", p)?;
    }
    ctx(
        f.set_permissions(fs::Permissions::from_mode(mode)),
        "fchmod",
        p,
    )?;
    ctx(futimens_mtime(f.as_raw_fd(), DEFAULT_MTIME), "futimens", p)
}

/// Times for futimens/utimensat that set the mtime and leave the atime alone.
fn mtime_only(secs: i64, nsecs: i64) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nsecs as _,
        },
    ]
}

/// Sets the mtime of open file `fd` to `secs`, leaving its atime alone.
pub fn futimens_mtime(fd: std::os::fd::RawFd, secs: i64) -> io::Result<()> {
    let ts = mtime_only(secs, 0);
    // SAFETY: a two-element timespec array; a bad fd is an error return.
    if unsafe { libc::futimens(fd, ts.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    ctx(
        fs::set_permissions(p, fs::Permissions::from_mode(mode)),
        "chmod",
        p,
    )
}

pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    // Keep the raw errno (tests compare it); callers add context.
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lsetxattr_ctx(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    ctx(lsetxattr(p, name, value), &format!("setxattr {name}"), p)
}

fn split_parent(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// The mtime given to every materialized entry without an explicit one.
pub const DEFAULT_MTIME: i64 = 1_600_000_000;

/// Writes one layer into `dir` in the given encoding.
pub fn materialize_layer(layer: &Layer, dir: &Path, enc: Encoding) -> io::Result<()> {
    ctx(fs::create_dir_all(dir), "mkdir", dir)?;
    set_mode(dir, 0o755)?;
    let mut modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut chowns: Vec<(PathBuf, u32, u32)> = Vec::new();
    let mut mtimes: Vec<(PathBuf, i64, i64)> = Vec::new();
    let mut xattrs: Vec<(PathBuf, String, Vec<u8>)> = Vec::new();
    // Every created entry gets a fixed mtime so two copies of a stack are identical; explicit
    // Mtime entries come later in the list and win.
    let mut default_mtimes: Vec<(PathBuf, i64, i64)> = Vec::new();
    for e in &layer.entries {
        match e {
            Entry::Dir { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::Fifo { path, .. }
            | Entry::Opaque { path } => {
                default_mtimes.push((dir.join(path), DEFAULT_MTIME, 0));
            }
            _ => {}
        }
        match e {
            Entry::Dir { path, mode } => {
                ensure_parents(dir, path)?;
                let p = dir.join(path);
                if !p.is_dir() {
                    ctx(fs::create_dir(&p), "mkdir", &p)?;
                }
                set_mode(&p, *mode)?;
                modes.push((p, *mode));
            }
            Entry::File {
                path,
                content,
                mode,
            } => {
                ensure_parents(dir, path)?;
                let p = dir.join(path);
                write_file(&p, content, *mode)?;
                modes.push((p, *mode));
            }
            Entry::Symlink { path, target } => {
                ensure_parents(dir, path)?;
                let p = dir.join(path);
                ctx(std::os::unix::fs::symlink(target, &p), "symlink", &p)?;
            }
            Entry::Hardlink { path, target } => {
                ensure_parents(dir, path)?;
                let p = dir.join(path);
                ctx(fs::hard_link(dir.join(target), &p), "link", &p)?;
            }
            Entry::Fifo { path, mode } => {
                ensure_parents(dir, path)?;
                let p = dir.join(path);
                let c = cpath(&p);
                check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, "mkfifo", &p)?;
                set_mode(&p, *mode)?;
                modes.push((p, *mode));
            }
            Entry::Xattr { path, name, value } => {
                xattrs.push((dir.join(path), name.clone(), value.clone()));
            }
            Entry::Whiteout { path } => {
                ensure_parents(dir, path)?;
                match enc.whiteout {
                    WhiteoutEncoding::Chardev => {
                        let p = dir.join(path);
                        let c = cpath(&p);
                        let rc =
                            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
                        check(rc, "mknod", &p)?;
                    }
                    WhiteoutEncoding::WhFile => {
                        let (parent, name) = split_parent(path);
                        let p = dir.join(parent).join(format!(".wh.{name}"));
                        ctx(fs::write(&p, b""), "write", &p)?;
                        set_mode(&p, 0o644)?;
                    }
                }
            }
            Entry::Opaque { path } => {
                ensure_parents(dir, path)?;
                let p = dir.join(path);
                if !p.is_dir() {
                    ctx(fs::create_dir(&p), "mkdir", &p)?;
                    set_mode(&p, 0o755)?;
                }
                match enc.opaque {
                    OpaqueEncoding::TrustedXattr => {
                        lsetxattr_ctx(&p, "trusted.overlay.opaque", b"y")?
                    }
                    OpaqueEncoding::UserXattr => lsetxattr_ctx(&p, "user.overlay.opaque", b"y")?,
                    OpaqueEncoding::FuseOverlayfsXattr => {
                        lsetxattr_ctx(&p, "user.fuseoverlayfs.opaque", b"y")?
                    }
                    OpaqueEncoding::WhOpqFile => {
                        let f = p.join(".wh..wh..opq");
                        ctx(fs::write(&f, b""), "write", &f)?;
                        set_mode(&f, 0o644)?;
                    }
                }
            }
            Entry::Chown { path, uid, gid } => chowns.push((dir.join(path), *uid, *gid)),
            Entry::Mtime { path, secs, nsecs } => mtimes.push((dir.join(path), *secs, *nsecs)),
        }
    }
    for (p, uid, gid) in &chowns {
        ctx(
            std::os::unix::fs::lchown(p, Some(*uid), Some(*gid)),
            "lchown",
            p,
        )?;
    }
    // chown clears setuid/setgid: re-apply the modes.
    if !chowns.is_empty() {
        for (p, mode) in &modes {
            set_mode(p, *mode)?;
        }
    }
    for (p, name, value) in &xattrs {
        lsetxattr_ctx(p, name, value)?;
    }
    default_mtimes.extend(mtimes);
    for (p, secs, nsecs) in &default_mtimes {
        let c = cpath(p);
        let ts = mtime_only(*secs, *nsecs);
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(rc, "utimensat", p)?;
    }
    Ok(())
}

/// Writes every layer of `stack` into `dir/l1` (top) .. `dir/lN` (bottom) and returns those
/// paths, top first.
pub fn materialize(stack: &Stack, dir: &Path, enc: Encoding) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, layer) in stack.layers.iter().enumerate() {
        let d = dir.join(format!("l{}", i + 1));
        materialize_layer(layer, &d, enc)?;
        out.push(d);
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Mounts
// ------------------------------------------------------------------------------------------

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True if `target` is a mount point according to /proc/self/mountinfo.
pub fn is_mounted(target: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let t = target.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == t)
}

/// Polls `f` every 20 ms until it holds (true) or `timeout` passed (false).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_quiet(prog: &str, args: &[&OsStr]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {:?}: {}: {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Unmounts `target`: `umount` (retried while busy), then `fusermount3 -u` for FUSE mounts, then
/// `umount -l`; waits until the mount point is gone from /proc/self/mountinfo.
pub fn unmount(target: &Path, fuse: bool) -> Result<(), String> {
    if !is_mounted(target) {
        return Ok(());
    }
    let t = target.as_os_str();
    let mut errs = Vec::new();
    for attempt in 0..5u64 {
        match run_quiet("umount", &[t]) {
            Ok(()) => {}
            Err(e) => errs.push(e),
        }
        if wait_until(Duration::from_millis(500), || !is_mounted(target)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
    }
    if fuse {
        if let Err(e) = run_quiet("fusermount3", &[OsStr::new("-u"), t]) {
            errs.push(e);
        }
        if wait_until(Duration::from_secs(2), || !is_mounted(target)) {
            return Ok(());
        }
    }
    if let Err(e) = run_quiet("umount", &[OsStr::new("-l"), t]) {
        errs.push(e);
    }
    if wait_until(Duration::from_secs(10), || !is_mounted(target)) {
        eprintln!(
            "warning: {} needed a lazy unmount: {}",
            target.display(),
            errs.join("; ")
        );
        return Ok(());
    }
    Err(format!(
        "could not unmount {}: {}",
        target.display(),
        errs.join("; ")
    ))
}

/// Unmounts on drop (also while unwinding from a panic).
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    fuse: bool,
    active: bool,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.target
    }
    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        unmount(&self.target, self.fuse)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("error: {e}");
        }
    }
}

/// `lowerdir=` syntax: the paths joined by `:`.
pub fn join_lowers(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn canonical_target(target: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    fs::canonicalize(target).map_err(|e| format!("canonicalize {}: {e}", target.display()))
}

/// Kernel overlayfs mount (the oracle).
#[derive(Debug)]
pub struct KernelOverlay {
    pub guard: MountGuard,
}

impl KernelOverlay {
    /// `mount -t overlay overlay -o lowerdir=A:B[,upperdir=U,workdir=W] TARGET`. Without an upper
    /// the mount is read-only (the kernel then needs at least two lower layers).
    pub fn mount(
        lowers: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
    ) -> Result<Self, String> {
        let target = canonical_target(target)?;
        let mut opts = format!("lowerdir={}", join_lowers(lowers));
        if let Some((u, w)) = upper_work {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        run_quiet(
            "mount",
            &[
                OsStr::new("-t"),
                OsStr::new("overlay"),
                OsStr::new("overlay"),
                OsStr::new("-o"),
                OsStr::new(&opts),
                target.as_os_str(),
            ],
        )?;
        if !wait_until(Duration::from_secs(5), || is_mounted(&target)) {
            return Err(format!("{} not in mountinfo after mount", target.display()));
        }
        Ok(Self {
            guard: MountGuard {
                target,
                fuse: false,
                active: true,
            },
        })
    }
    pub fn path(&self) -> &Path {
        self.guard.path()
    }
}

/// Output of one run of the layerfs binary.
#[derive(Debug)]
pub struct RunOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the layerfs binary with `args`, waiting at most `timeout` for it to exit. Output goes to
/// files rather than pipes so a daemon child that keeps stdio open cannot block us. Kills the
/// process (by its pid, which we started) on timeout.
pub fn run_layerfs(args: &[&OsStr], timeout: Duration) -> Result<RunOutput, String> {
    let bin = layerfs_bin().ok_or("no layerfs binary")?;
    let out_f = tempfile::tempfile().map_err(|e| e.to_string())?;
    let err_f = tempfile::tempfile().map_err(|e| e.to_string())?;
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out_f.try_clone().map_err(|e| e.to_string())?)
        .stderr(err_f.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} {:?} did not exit within {:?}",
                bin.display(),
                args,
                timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |mut f: fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.seek(io::SeekFrom::Start(0));
        let _ = f.read_to_string(&mut s);
        s
    };
    Ok(RunOutput {
        status,
        stdout: read(out_f),
        stderr: read(err_f),
    })
}

/// A layerfs (FUSE) mount.
#[derive(Debug)]
pub struct Layerfs {
    pub guard: MountGuard,
}

impl Layerfs {
    /// `BIN -o lowerdir=A:B[,upperdir=U,workdir=W][,EXTRA..] TARGET`; the binary returns once the
    /// mount is live.
    pub fn mount(
        lowers: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
        extra_opts: &[&str],
    ) -> Result<Self, String> {
        let target = canonical_target(target)?;
        let mut opts = format!("lowerdir={}", join_lowers(lowers));
        if let Some((u, w)) = upper_work {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        for o in extra_opts {
            opts.push(',');
            opts.push_str(o);
        }
        // Created first so that whatever happens (error, timeout, panic) no mount is left.
        let guard = MountGuard {
            target: target.clone(),
            fuse: true,
            active: true,
        };
        let out = run_layerfs(
            &[OsStr::new("-o"), OsStr::new(&opts), target.as_os_str()],
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            drop(guard);
            return Err(format!(
                "layerfs -o {opts} {} failed: {}\nstdout: {}\nstderr: {}",
                target.display(),
                out.status,
                out.stdout,
                out.stderr
            ));
        }
        if !wait_until(Duration::from_secs(5), || is_mounted(&target)) {
            return Err(format!(
                "layerfs exited successfully but {} is not mounted\nstderr: {}",
                target.display(),
                out.stderr
            ));
        }
        Ok(Self { guard })
    }
    pub fn path(&self) -> &Path {
        self.guard.path()
    }
}

// ------------------------------------------------------------------------------------------
// Fixture: one stack materialized twice and mounted by the kernel and by layerfs
// ------------------------------------------------------------------------------------------

pub fn temp_base() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("layerfs-mt-")
        .tempdir_in("/var/tmp")
        .expect("create tempdir in /var/tmp")
}

pub struct Fixture {
    // Field order matters for drop: mounts first, then the directory.
    pub kernel: Option<KernelOverlay>,
    pub layerfs: Option<Layerfs>,
    pub kernel_layers: Vec<PathBuf>,
    pub layerfs_layers: Vec<PathBuf>,
    pub encoding: Encoding,
    dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// Materializes `stack` twice under a fresh tempdir: `k/` in kernel encoding and `f/` in
    /// `enc`, then mounts kernel overlayfs on `mk/` and layerfs on `mf/` (both read-only).
    pub fn new(stack: &Stack, enc: Encoding) -> Fixture {
        Self::build(stack, enc, false)
    }

    /// Like [`Fixture::new`], but when `enc` is the kernel encoding both (read-only) mounts use
    /// the same layer directories, halving the setup time of huge stacks.
    pub fn new_shared(stack: &Stack, enc: Encoding) -> Fixture {
        Self::build(stack, enc, true)
    }

    fn build(stack: &Stack, enc: Encoding, share: bool) -> Fixture {
        let dir = temp_base();
        let base = dir.path().to_path_buf();
        let kernel_layers =
            materialize(stack, &base.join("k"), Encoding::KERNEL).expect("materialize kernel copy");
        let layerfs_layers = if share && enc == Encoding::KERNEL {
            kernel_layers.clone()
        } else {
            materialize(stack, &base.join("f"), enc).expect("materialize layerfs copy")
        };
        let mut fx = Fixture {
            kernel: None,
            layerfs: None,
            kernel_layers,
            layerfs_layers,
            encoding: enc,
            dir: Some(dir),
        };
        fx.kernel = Some(
            KernelOverlay::mount(&fx.kernel_layers, None, &base.join("mk"))
                .expect("kernel overlay mount"),
        );
        fx.layerfs = Some(
            Layerfs::mount(&fx.layerfs_layers, None, &base.join("mf"), &[]).expect("layerfs mount"),
        );
        fx
    }

    pub fn base(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
    /// Kernel overlay mount point.
    pub fn k(&self) -> &Path {
        self.kernel.as_ref().unwrap().path()
    }
    /// layerfs mount point.
    pub fn f(&self) -> &Path {
        self.layerfs.as_ref().unwrap().path()
    }
    pub fn kernel_side(&self) -> Side<'_> {
        Side {
            mnt: self.k(),
            layers: &self.kernel_layers,
        }
    }
    pub fn layerfs_side(&self) -> Side<'_> {
        Side {
            mnt: self.f(),
            layers: &self.layerfs_layers,
        }
    }
    /// Full comparison kernel vs layerfs.
    pub fn compare(&self) -> Report {
        full_compare(
            &self.kernel_side(),
            &self.layerfs_side(),
            &CompareOptions::default(),
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mut ok = true;
        if let Some(mut m) = self.layerfs.take()
            && let Err(e) = m.guard.unmount()
        {
            eprintln!("error: {e}");
            ok = false;
        }
        if let Some(mut m) = self.kernel.take()
            && let Err(e) = m.guard.unmount()
        {
            eprintln!("error: {e}");
            ok = false;
        }
        if !ok {
            // Never recurse into a live mount while deleting.
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!(
                    "leaving {} behind because a mount is still live",
                    p.display()
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Tree scanning and comparison
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
    Unknown,
}

pub fn kind_of(ft: &fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        Kind::Unknown
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    pub mtime: (i64, i64),
    /// d_ino from readdir of the parent (st_ino for the root).
    pub d_ino: u64,
    /// d_type from readdir of the parent, when the filesystem reports one.
    pub d_kind: Option<Kind>,
    pub target: Option<PathBuf>,
    pub content: Option<Vec<u8>>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub root: PathBuf,
    /// Relative path ("" for the root) -> node.
    pub nodes: BTreeMap<PathBuf, Node>,
    /// Errors that prevented scanning part of the tree.
    pub errors: Vec<String>,
}

pub fn llistxattr(p: &Path) -> io::Result<Vec<OsString>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 4096];
    loop {
        let n = unsafe {
            libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                buf.resize(buf.len() * 4, 0);
                continue;
            }
            return Err(e);
        }
        return Ok(buf[..n as usize]
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| OsStr::from_bytes(s).to_os_string())
            .collect());
    }
}

pub fn lgetxattr(p: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let r = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 20 {
                buf.resize(buf.len() * 4, 0);
                continue;
            }
            return Err(e);
        }
        buf.truncate(r as usize);
        return Ok(buf);
    }
}

#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Read and compare regular file contents.
    pub contents: bool,
    /// Read and compare user.* xattrs.
    pub xattrs: bool,
    /// Compare st_size of directories (kernel: the size of the topmost layer's directory).
    pub dir_sizes: bool,
    /// Compare st_nlink of directories (kernel: 1 for merged directories).
    pub dir_nlink: bool,
    /// user.* xattrs with these prefixes are ignored (overlay metadata in other encodings).
    pub ignore_xattr_prefixes: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            contents: true,
            xattrs: true,
            dir_sizes: false,
            dir_nlink: false,
            ignore_xattr_prefixes: vec!["user.overlay.".into(), "user.fuseoverlayfs.".into()],
        }
    }
}

fn scan_node(path: &Path, d_ino: u64, d_kind: Option<Kind>, opts: &CompareOptions) -> Node {
    let mut errors = Vec::new();
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Node {
                kind: d_kind.unwrap_or(Kind::Unknown),
                mode: 0,
                uid: 0,
                gid: 0,
                size: 0,
                nlink: 0,
                ino: 0,
                dev: 0,
                rdev: 0,
                mtime: (0, 0),
                d_ino,
                d_kind,
                target: None,
                content: None,
                xattrs: BTreeMap::new(),
                errors: vec![format!("lstat: {e}")],
            };
        }
    };
    let kind = kind_of(&md.file_type());
    let mut target = None;
    let mut content = None;
    match kind {
        Kind::Symlink => match fs::read_link(path) {
            Ok(t) => target = Some(t),
            Err(e) => errors.push(format!("readlink: {e}")),
        },
        Kind::File if opts.contents => match fs::read(path) {
            Ok(c) => content = Some(c),
            Err(e) => errors.push(format!("read: {e}")),
        },
        _ => {}
    }
    let mut xattrs = BTreeMap::new();
    match if opts.xattrs {
        llistxattr(path)
    } else {
        Ok(Vec::new())
    } {
        Ok(names) => {
            for n in names {
                let s = n.to_string_lossy();
                if !s.starts_with("user.") {
                    continue;
                }
                if opts.ignore_xattr_prefixes.iter().any(|p| s.starts_with(p)) {
                    continue;
                }
                match lgetxattr(path, &n) {
                    Ok(v) => {
                        xattrs.insert(n, v);
                    }
                    Err(e) => errors.push(format!("getxattr {s}: {e}")),
                }
            }
        }
        Err(e) => errors.push(format!("listxattr: {e}")),
    }
    Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        nlink: md.nlink(),
        ino: md.ino(),
        dev: md.dev(),
        rdev: md.rdev(),
        mtime: (md.mtime(), md.mtime_nsec()),
        d_ino,
        d_kind,
        target,
        content,
        xattrs,
        errors,
    }
}

/// Walks `root` (readdir order sorted by name; no symlink following) and records every entry.
pub fn scan_tree(root: &Path, opts: &CompareOptions) -> Scan {
    let mut scan = Scan {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let root_ino = fs::symlink_metadata(root).map(|m| m.ino()).unwrap_or(0);
    let rn = scan_node(root, root_ino, Some(Kind::Dir), opts);
    scan.nodes.insert(PathBuf::new(), rn);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) => {
                scan.errors.push(format!("readdir {}: {e}", rel.display()));
                continue;
            }
        };
        let mut ents = Vec::new();
        for ent in rd {
            match ent {
                Ok(ent) => {
                    let dk = ent.file_type().ok().map(|t| kind_of(&t));
                    ents.push((ent.file_name(), ent.ino(), dk));
                }
                Err(e) => {
                    scan.errors.push(format!("readdir {}: {e}", rel.display()));
                    break;
                }
            }
        }
        ents.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, d_ino, dk) in ents {
            let r = rel.join(&name);
            let node = scan_node(&root.join(&r), d_ino, dk, opts);
            if node.kind == Kind::Dir {
                subdirs.push(r.clone());
            }
            if scan.nodes.insert(r.clone(), node).is_some() {
                scan.errors
                    .push(format!("duplicate readdir entry {}", r.display()));
            }
        }
        // Push in reverse so the walk is depth-first in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    scan
}

fn show(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        "/".to_string()
    } else {
        format!("/{}", p.display())
    }
}

fn short_bytes(v: &[u8]) -> String {
    if v.len() <= 40 {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        format!(
            "{:?}..({} bytes)",
            String::from_utf8_lossy(&v[..40]),
            v.len()
        )
    }
}

/// All differences between two scans (names, types, modes, owners, sizes, contents, symlink
/// targets, user.* xattrs, nlink and mtime of non-directories).
pub fn diff_scans(a: &Scan, b: &Scan, opts: &CompareOptions) -> Vec<String> {
    let mut out = Vec::new();
    for e in &a.errors {
        out.push(format!("A scan error: {e}"));
    }
    for e in &b.errors {
        out.push(format!("B scan error: {e}"));
    }
    let keys: BTreeSet<&PathBuf> = a.nodes.keys().chain(b.nodes.keys()).collect();
    for k in keys {
        let parent_in = |s: &Scan| k.parent().is_none_or(|p| s.nodes.contains_key(p));
        let (x, y) = match (a.nodes.get(k), b.nodes.get(k)) {
            (Some(x), Some(y)) => (x, y),
            (Some(x), None) => {
                if parent_in(b) {
                    out.push(format!("{}: only in A ({:?})", show(k), x.kind));
                }
                continue;
            }
            (None, Some(y)) => {
                if parent_in(a) {
                    out.push(format!("{}: only in B ({:?})", show(k), y.kind));
                }
                continue;
            }
            (None, None) => unreachable!(),
        };
        let p = show(k);
        for e in &x.errors {
            out.push(format!("{p}: A error: {e}"));
        }
        for e in &y.errors {
            out.push(format!("{p}: B error: {e}"));
        }
        if x.kind != y.kind {
            out.push(format!("{p}: type {:?} vs {:?}", x.kind, y.kind));
            continue;
        }
        let dir = x.kind == Kind::Dir;
        if x.mode != y.mode {
            out.push(format!("{p}: mode {:#o} vs {:#o}", x.mode, y.mode));
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            out.push(format!(
                "{p}: owner {}:{} vs {}:{}",
                x.uid, x.gid, y.uid, y.gid
            ));
        }
        if (!dir || opts.dir_sizes) && x.size != y.size {
            out.push(format!("{p}: size {} vs {}", x.size, y.size));
        }
        if (!dir || opts.dir_nlink) && x.nlink != y.nlink {
            out.push(format!("{p}: nlink {} vs {}", x.nlink, y.nlink));
        }
        if !dir && x.mtime != y.mtime {
            out.push(format!("{p}: mtime {:?} vs {:?}", x.mtime, y.mtime));
        }
        if matches!(x.kind, Kind::Char | Kind::Block) && x.rdev != y.rdev {
            out.push(format!("{p}: rdev {:#x} vs {:#x}", x.rdev, y.rdev));
        }
        if x.target != y.target {
            out.push(format!(
                "{p}: symlink target {:?} vs {:?}",
                x.target, y.target
            ));
        }
        if x.content != y.content {
            // Read errors were already reported above.
            if let (Some(c), Some(d)) = (&x.content, &y.content) {
                out.push(format!(
                    "{p}: content {} vs {}",
                    short_bytes(c),
                    short_bytes(d)
                ));
            }
        }
        if x.xattrs != y.xattrs {
            let fmt = |m: &BTreeMap<OsString, Vec<u8>>| {
                m.iter()
                    .map(|(k, v)| format!("{}={}", k.to_string_lossy(), short_bytes(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out.push(format!(
                "{p}: xattrs [{}] vs [{}]",
                fmt(&x.xattrs),
                fmt(&y.xattrs)
            ));
        }
    }
    out
}

pub fn format_diffs(title: &str, diffs: &[String]) -> String {
    let mut s = format!("{title}: {} difference(s)", diffs.len());
    for d in diffs.iter().take(50) {
        s.push_str("\n  ");
        s.push_str(d);
    }
    if diffs.len() > 50 {
        s.push_str(&format!("\n  ... and {} more", diffs.len() - 50));
    }
    s
}

/// Compares two trees (see [`diff_scans`]); Err lists the first 50 differences with paths.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    compare_trees_with(a, b, &CompareOptions::default())
}

pub fn compare_trees_with(a: &Path, b: &Path, opts: &CompareOptions) -> Result<(), String> {
    let sa = scan_tree(a, opts);
    let sb = scan_tree(b, opts);
    let d = diff_scans(&sa, &sb, opts);
    if d.is_empty() {
        Ok(())
    } else {
        Err(format_diffs(
            &format!("A={} B={}", a.display(), b.display()),
            &d,
        ))
    }
}

/// Inode consistency inside one mount, from two walks: d_ino == st_ino, d_type == lstat type,
/// st_ino stable across walks, st_dev the same everywhere, and no st_ino shared by unrelated
/// entries (entries sharing one must be non-directories with nlink >= the number of names).
pub fn ino_consistency(s1: &Scan, s2: &Scan) -> Vec<String> {
    let mut out = Vec::new();
    let root_dev = s1.nodes.get(Path::new("")).map(|n| n.dev);
    let mut by_ino: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    for (k, n) in &s1.nodes {
        if !n.errors.is_empty() && n.ino == 0 {
            continue;
        }
        let p = show(k);
        if n.d_ino != n.ino {
            out.push(format!("{p}: d_ino {} != st_ino {}", n.d_ino, n.ino));
        }
        if let Some(dk) = n.d_kind
            && dk != n.kind
            && dk != Kind::Unknown
        {
            out.push(format!("{p}: d_type {:?} != lstat type {:?}", dk, n.kind));
        }
        if Some(n.dev) != root_dev {
            out.push(format!(
                "{p}: st_dev {:#x} != root st_dev {:?}",
                n.dev, root_dev
            ));
        }
        match s2.nodes.get(k) {
            Some(m) if m.ino != n.ino => out.push(format!(
                "{p}: st_ino changed between walks: {} -> {}",
                n.ino, m.ino
            )),
            Some(m) if m.d_ino != n.d_ino => out.push(format!(
                "{p}: d_ino changed between walks: {} -> {}",
                n.d_ino, m.d_ino
            )),
            None => out.push(format!("{p}: missing in second walk")),
            _ => {}
        }
        by_ino.entry(n.ino).or_default().push(k);
    }
    for k in s2.nodes.keys() {
        if !s1.nodes.contains_key(k) {
            out.push(format!("{}: appeared in second walk", show(k)));
        }
    }
    let mut groups: Vec<_> = by_ino.into_iter().filter(|(_, v)| v.len() > 1).collect();
    groups.sort();
    for (ino, paths) in groups {
        let nodes: Vec<&Node> = paths.iter().map(|p| &s1.nodes[*p]).collect();
        let bad = nodes
            .iter()
            .any(|n| n.kind == Kind::Dir || n.nlink < paths.len() as u64);
        if bad {
            out.push(format!(
                "st_ino {ino} shared by unrelated entries: {}",
                paths
                    .iter()
                    .zip(&nodes)
                    .map(|(p, n)| format!("{} ({:?}, nlink {})", show(p), n.kind, n.nlink))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

pub fn check_ino_consistency(root: &Path) -> Result<(), String> {
    let opts = CompareOptions {
        contents: false,
        xattrs: false,
        ..Default::default()
    };
    let s1 = scan_tree(root, &opts);
    let s2 = scan_tree(root, &opts);
    let d = ino_consistency(&s1, &s2);
    if d.is_empty() {
        Ok(())
    } else {
        Err(format_diffs(
            &format!("inode consistency of {}", root.display()),
            &d,
        ))
    }
}

/// A mount plus the layer directories it was made from (top first).
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    pub mnt: &'a Path,
    pub layers: &'a [PathBuf],
}

/// Map st_ino -> (layer index, relative path) over the layer directories.
pub fn layer_ino_map(layers: &[PathBuf]) -> HashMap<u64, (usize, PathBuf)> {
    let opts = CompareOptions {
        contents: false,
        xattrs: false,
        ..Default::default()
    };
    let mut m = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        let s = scan_tree(l, &opts);
        for (k, n) in s.nodes {
            m.entry(n.ino).or_insert((i, k));
        }
    }
    m
}

/// The st_ino layerfs must report: for each path of the oracle mount, find which layer file the
/// oracle's st_ino belongs to, and take the st_ino of the same file in the other copy of the
/// layers. Returns (non-directory mismatches, directory mismatches).
pub fn compare_inos(
    oracle: &Side,
    oracle_scan: &Scan,
    other: &Side,
    other_scan: &Scan,
) -> (Vec<String>, Vec<String>) {
    let map = layer_ino_map(oracle.layers);
    let mut nondir = Vec::new();
    let mut dir = Vec::new();
    for (k, n) in &oracle_scan.nodes {
        let Some(m) = other_scan.nodes.get(k) else {
            continue;
        };
        let p = show(k);
        let sink = if n.kind == Kind::Dir {
            &mut dir
        } else {
            &mut nondir
        };
        let Some((li, rel)) = map.get(&n.ino) else {
            sink.push(format!(
                "{p}: oracle st_ino {} is not the inode of any layer file",
                n.ino
            ));
            continue;
        };
        let expect = match fs::symlink_metadata(other.layers[*li].join(rel)) {
            Ok(md) => md.ino(),
            Err(e) => {
                sink.push(format!(
                    "{p}: layer file l{}/{}: {e}",
                    li + 1,
                    rel.display()
                ));
                continue;
            }
        };
        if m.ino != expect {
            sink.push(format!(
                "{p}: st_ino {} but expected {} (inode of l{}/{}, as the kernel reports)",
                m.ino,
                expect,
                li + 1,
                rel.display()
            ));
        }
    }
    (nondir, dir)
}

/// Result of comparing an oracle (kernel) mount with a layerfs mount.
#[derive(Debug, Default)]
pub struct Report {
    pub content: Vec<String>,
    pub kernel_consistency: Vec<String>,
    pub layerfs_consistency: Vec<String>,
    pub ino_nondir: Vec<String>,
    pub ino_dir: Vec<String>,
    pub entries: usize,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = format!("compared {} entries", self.entries);
        for (t, v) in [
            ("tree differences (A=kernel, B=layerfs)", &self.content),
            ("kernel inode consistency", &self.kernel_consistency),
            ("layerfs inode consistency", &self.layerfs_consistency),
            ("st_ino of non-directories", &self.ino_nondir),
            ("st_ino of directories", &self.ino_dir),
        ] {
            if !v.is_empty() {
                s.push('\n');
                s.push_str(&format_diffs(t, v));
            }
        }
        s
    }

    /// Panics on any difference except directory st_ino mismatches, which are printed (and fail
    /// only with `LAYERFS_STRICT_DIR_INO=1`).
    pub fn assert_ok(&self) {
        let strict = std::env::var("LAYERFS_STRICT_DIR_INO").as_deref() == Ok("1");
        let fail = !self.content.is_empty()
            || !self.kernel_consistency.is_empty()
            || !self.layerfs_consistency.is_empty()
            || !self.ino_nondir.is_empty()
            || (strict && !self.ino_dir.is_empty());
        if fail {
            panic!("{}", self.summary());
        }
        if !self.ino_dir.is_empty() {
            eprintln!(
                "note (not failing): {}",
                format_diffs("st_ino of directories", &self.ino_dir)
            );
        }
    }

    /// Like assert_ok, but ignoring the st_ino comparison with the kernel entirely.
    pub fn assert_ok_ignoring_inos(&self) {
        if !self.content.is_empty()
            || !self.kernel_consistency.is_empty()
            || !self.layerfs_consistency.is_empty()
        {
            panic!("{}", self.summary());
        }
    }
}

/// Compares everything between the oracle mount and the other mount.
pub fn full_compare(oracle: &Side, other: &Side, opts: &CompareOptions) -> Report {
    let quick = CompareOptions {
        contents: false,
        xattrs: false,
        ..opts.clone()
    };
    // The two mounts are walked in parallel.
    let ((k1, k2), (l1, l2)) = std::thread::scope(|s| {
        let k = s.spawn(|| (scan_tree(oracle.mnt, opts), scan_tree(oracle.mnt, &quick)));
        let l = (scan_tree(other.mnt, opts), scan_tree(other.mnt, &quick));
        (k.join().expect("kernel scan panicked"), l)
    });
    let (ino_nondir, ino_dir) = compare_inos(oracle, &k1, other, &l1);
    Report {
        content: diff_scans(&k1, &l1, opts),
        kernel_consistency: ino_consistency(&k1, &k2),
        layerfs_consistency: ino_consistency(&l1, &l2),
        ino_nondir,
        ino_dir,
        entries: k1.nodes.len(),
    }
}

// ------------------------------------------------------------------------------------------
// Small helpers for tests
// ------------------------------------------------------------------------------------------

/// errno of a failed io::Result (0 on success).
pub fn errno_of<T>(r: &io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

pub fn errno_name(e: i32) -> String {
    let s = unsafe { std::ffi::CStr::from_ptr(libc::strerror(e)) };
    format!("{e} ({})", s.to_string_lossy())
}

/// Sorted names in a directory (without . and ..).
pub fn list_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut v = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// One entry as returned by libc readdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirent {
    pub name: OsString,
    pub ino: u64,
    pub d_type: u8,
    /// telldir() before reading this entry.
    pub pos: i64,
}

/// Reads a whole directory with libc opendir/readdir, recording telldir positions.
pub fn libc_readdir(dir: &Path) -> io::Result<Vec<RawDirent>> {
    let c = cpath(dir);
    let d = unsafe { libc::opendir(c.as_ptr()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let res = loop {
        let pos = unsafe { libc::telldir(d) } as i64;
        unsafe { *libc::__errno_location() = 0 };
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            let en = errno();
            break if en == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(en))
            };
        }
        let e = unsafe { &*e };
        let name = unsafe { std::ffi::CStr::from_ptr(e.d_name.as_ptr()) };
        out.push(RawDirent {
            name: OsStr::from_bytes(name.to_bytes()).to_os_string(),
            ino: e.d_ino,
            d_type: e.d_type,
            pos,
        });
    };
    unsafe { libc::closedir(d) };
    res.map(|_| out)
}

/// Opens `dir`, seekdir(pos), and reads up to `n` entries.
pub fn libc_readdir_from(dir: &Path, pos: i64, n: usize) -> io::Result<Vec<OsString>> {
    let c = cpath(dir);
    let d = unsafe { libc::opendir(c.as_ptr()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    // Read a little first so the stream has state, then seek.
    unsafe {
        libc::readdir64(d);
        libc::seekdir(d, pos as libc::c_long);
    }
    let mut out = Vec::new();
    while out.len() < n {
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            break;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        out.push(OsStr::from_bytes(name.to_bytes()).to_os_string());
    }
    unsafe { libc::closedir(d) };
    Ok(out)
}

/// Reads a directory with raw getdents64 calls using a buffer of `bufsize` bytes (small buffers
/// force many round trips). Returns (name, d_ino, d_off).
pub fn getdents_small(dir: &Path, bufsize: usize) -> io::Result<Vec<(OsString, u64, i64)>> {
    let f = fs::File::open(dir)?;
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut buf = vec![0u8; bufsize];
    let mut out = Vec::new();
    loop {
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            let ino = u64::from_ne_bytes(buf[off..off + 8].try_into().unwrap());
            let doff = i64::from_ne_bytes(buf[off + 8..off + 16].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[off + 16..off + 18].try_into().unwrap()) as usize;
            let name_bytes = &buf[off + 19..off + reclen];
            let end = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            out.push((
                OsStr::from_bytes(&name_bytes[..end]).to_os_string(),
                ino,
                doff,
            ));
            off += reclen;
        }
    }
    Ok(out)
}

pub fn assert_exists(root: &Path, rel: &str) {
    if let Err(e) = fs::symlink_metadata(root.join(rel)) {
        panic!("{}/{rel} should exist: {e}", root.display());
    }
}

pub fn assert_absent(root: &Path, rel: &str) {
    let r = fs::symlink_metadata(root.join(rel));
    assert_eq!(
        errno_of(&r),
        libc::ENOENT,
        "{}/{rel} should not exist (got {:?})",
        root.display(),
        r.map(|m| m.file_type())
    );
}

pub fn read_string(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel))
        .unwrap_or_else(|e| panic!("read {}/{rel}: {e}", root.display()))
}
