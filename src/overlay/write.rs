//! The writable upper layer: copy-up, whiteouts, opaque directories, and
//! every operation that changes the tree.
//!
//! Owns: the work directory (`WORKDIR/work`, cleaned at mount), the choice of
//! whiteout and opaque encodings, and the copy-up locks.
//! Does not own: reading (see `fs.rs`), FUSE replies.
//!
//! Invariants:
//! - lower layers are never written; every change lands in layer 0;
//! - a copy-up is built under a temporary name in the work directory and
//!   renamed into place, so the upper layer never holds a partial file under
//!   its final name; by default the copy is fsynced before the rename;
//! - parents are copied up before children, and a copy-up lock is held only
//!   for one object at a time (no nesting, so no lock-order cycles);
//! - a name that exists below the upper layer is never simply removed: a
//!   whiteout replaces it.
//!
//! Lock order: `copy_locks[i]` may be held while taking `nodes` shard guards
//! and cache mutexes (leaves), never the other way round.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info, warn};

use super::fs::{Found, Loc, Overlay, is_internal_xattr};
use super::idmap::NsOwners;
use super::layers::Stack;
use super::reaper::Reaper;
use super::rules::{self, Place, Redirect};
use super::trace::CopyMethod;
use super::types::{Ino, LayerIdx};
use crate::sys::{self, Errno, FileKind, SetTime, Stat, SysResult};

const UPPER: LayerIdx = LayerIdx(0);
const COPY_LOCKS: usize = 64;

/// The hard-link index, in the work directory. When a lower file with
/// several names is copied up, its copy is also linked here under a name
/// made of the lower file's device and inode numbers, so that its other
/// names join the copy when they are looked up, in this mount or a later
/// one (kernel overlayfs's `index=on` idea; its own `index/` directory,
/// keyed by file handles, is left alone). The copy's `layerfs.nlink` xattr
/// holds how its reported link count differs from its upper one: the index
/// entry is not a name, names still only below are.
const INDEX_DIR: &CStr = c"layerfs-index";

/// The index name of lower file `dev`/`ino`.
fn index_key(dev: u64, ino: u64) -> CString {
    CString::new(format!("{dev:x}-{ino:x}")).unwrap_or_default()
}

/// Opens (creating it if needed) the hard-link index and removes entries
/// no name refers to any more: only the index holds them and no lower name
/// is left to join them.
fn open_index(workdir: BorrowedFd<'_>, nlink_xattr: &CStr) -> SysResult<Arc<OwnedFd>> {
    match sys::mkdirat(workdir, INDEX_DIR, 0o700) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let fd = sys::openat(
        workdir,
        INDEX_DIR,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    for e in sys::read_dir(fd.as_fd())? {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        let name = sys::cstr(OsStr::from_bytes(&e.name))?;
        let Ok(st) = sys::fstatat(fd.as_fd(), &name) else {
            continue;
        };
        let delta = read_delta(fd.as_fd(), &name, nlink_xattr);
        if st.nlink <= 1 && delta.unwrap_or(-1) < 0 {
            debug!("index: dropping {}", name.to_string_lossy());
            let _ = sys::unlinkat(fd.as_fd(), &name, 0);
        }
    }
    Ok(Arc::new(fd))
}

/// The link-count difference recorded on an indexed copy, if any.
fn read_delta(dirfd: BorrowedFd<'_>, name: &CStr, xattr: &CStr) -> Option<i64> {
    let v = sys::getxattr_at(dirfd, name, xattr).ok()?;
    std::str::from_utf8(&v).ok()?.trim().parse().ok()
}

/// Makes the changes of `a` to the upper object at `loc` (`open_fd`: the
/// object open, if it is). The first change to fail stops the rest.
fn apply_setattr(a: &SetAttr, loc: &Loc, open_fd: Option<&Arc<OwnedFd>>) -> SysResult<()> {
    if let Some(size) = a.size {
        match open_fd {
            Some(fd) => sys::ftruncate(fd.as_fd(), size)?,
            None => {
                let fd = sys::openat(
                    loc.fd.as_fd(),
                    &loc.name,
                    libc::O_WRONLY | libc::O_NOFOLLOW,
                    0,
                )?;
                sys::ftruncate(fd.as_fd(), size)?;
            }
        }
    }
    if a.uid.is_some() || a.gid.is_some() {
        sys::fchownat(
            loc.fd.as_fd(),
            &loc.name,
            a.uid.unwrap_or(u32::MAX),
            a.gid.unwrap_or(u32::MAX),
        )?;
    }
    if let Some(mode) = a.mode {
        sys::fchmodat(loc.fd.as_fd(), &loc.name, mode & 0o7777)?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        sys::utimensat(
            loc.fd.as_fd(),
            &loc.name,
            a.atime.unwrap_or(SetTime::Omit),
            a.mtime.unwrap_or(SetTime::Omit),
        )?;
    }
    Ok(())
}

/// How much of a file a copy-up takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyData {
    /// Contents and metadata.
    Full,
    /// Metadata only: the caller truncates it to zero next.
    Truncated,
    /// Metadata only, the contents staying below until the first write
    /// (kernel overlayfs's metacopy): for chmod, chown, utimens and xattr
    /// changes. Falls back to [`CopyData::Full`] where a metacopy cannot be
    /// recorded or would not help (empty files, hard links).
    Meta,
}

/// How deletions are recorded in the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// A character device 0/0 when mknod of it is allowed, else `.wh.` files.
    #[default]
    Auto,
    /// Character device 0/0 (kernel overlayfs's encoding).
    Chardev,
    /// An empty `.wh.NAME` file (the OCI encoding; needs no privileges).
    File,
}

/// Renamed directories (kernel overlayfs's `redirect_dir=`): whether a
/// rename of a directory that exists below records a redirect, and whether
/// existing redirects are followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RedirectDir {
    /// Such renames move the directory by redirect; redirects are followed.
    #[default]
    On,
    /// Such renames are EXDEV (`mv` copies instead); existing redirects
    /// are followed. The kernel's `off` is this with its default
    /// `redirect_always_follow=Y`.
    Follow,
    /// Such renames are EXDEV and redirects are not followed: looking up
    /// a directory that has one is EPERM, as on the kernel.
    NoFollow,
}

impl RedirectDir {
    pub fn creates(self) -> bool {
        self == RedirectDir::On
    }

    pub fn follows(self) -> bool {
        self != RedirectDir::NoFollow
    }
}

/// Metadata-only copy-up (kernel overlayfs's `metacopy=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Metacopy {
    /// chmod, chown, utimens and xattr changes of a lower file copy its
    /// metadata only, where the upper layer can mark such a copy.
    #[default]
    On,
    /// Every copy-up takes the data. Existing metadata-only copies are
    /// still read as such.
    Off,
}

/// Which xattr namespace holds the overlay's marks in the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XattrNamespace {
    /// `trusted.overlay.*` where the daemon may write it (root in the
    /// initial namespace), else `user.overlay.*`.
    #[default]
    Auto,
    /// Always `user.overlay.*` (kernel overlayfs's `userxattr`).
    User,
}

/// Settings of the writable side.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpperOptions {
    /// Skip fsync on copy-up and make fsync a no-op.
    pub volatile: bool,
    pub whiteout: WhiteoutMode,
    pub redirect_dir: RedirectDir,
    pub metacopy: Metacopy,
    pub xattrs: XattrNamespace,
}

/// Who asks for a new object: it will be owned by them.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

/// Attribute changes requested by `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

impl SetAttr {
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// How opaque directories are marked in the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpaqueMode {
    Xattr(&'static CStr),
    MarkerFile,
}

/// The writable side of a mount.
pub struct Upper {
    work: Arc<OwnedFd>,
    /// Where a copy-up records the merged inode number it was made for.
    origin_xattr: &'static CStr,
    /// The hard-link index (see [`INDEX_DIR`]), if the work directory has
    /// one, and the xattr of an indexed copy's link-count difference.
    index: Option<Arc<OwnedFd>>,
    nlink_xattr: &'static CStr,
    /// Where a renamed directory records its place below (kernel
    /// overlayfs's `overlay.redirect`); `None` when the upper filesystem
    /// takes no overlay xattrs, and such renames are EXDEV.
    redirect_xattr: Option<&'static CStr>,
    /// What marks a metadata-only copy (kernel overlayfs's
    /// `overlay.metacopy`): its data is still read from the layer below.
    /// `None` when the upper layer takes no overlay xattrs.
    metacopy_xattr: Option<&'static CStr>,
    /// Whether copy-ups may be metadata-only (existing ones are honoured
    /// either way).
    metacopy: Metacopy,
    chardev_whiteouts: bool,
    opaque: OpaqueMode,
    volatile: bool,
    tmp_counter: AtomicU64,
    copy_locks: Box<[Mutex<()>]>,
    /// The ids of the daemon's user namespace; `None` in the initial one.
    ns: Option<NsOwners>,
    /// Drops references to removed upper files off the request path.
    reaper: Reaper,
    /// The daemon's (uid, gid): what owns an object it creates (the group
    /// of a setgid parent aside, which the kernel applies either way).
    creds: (u32, u32),
}

/// Removes everything inside directory `fd` (not the directory itself).
fn clear_dir(fd: BorrowedFd<'_>) -> SysResult<()> {
    let rd = sys::openat(fd, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for e in sys::read_dir(rd.as_fd())? {
        let name = sys::cstr(OsStr::from_bytes(&e.name))?;
        remove_tree(rd.as_fd(), &name)?;
    }
    Ok(())
}

/// Removes `name` in `dirfd`, recursively if it is a directory.
fn remove_tree(dirfd: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    match sys::unlinkat(dirfd, name, 0) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(e) if e == Errno::EISDIR || e == Errno::EPERM => {}
        Err(e) => return Err(e),
    }
    let sub = sys::openat(
        dirfd,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    clear_dir(sub.as_fd())?;
    drop(sub);
    sys::unlinkat(dirfd, name, libc::AT_REMOVEDIR)
}

impl Upper {
    /// Opens `WORKDIR/work`, empties it (leftovers of an interrupted copy-up),
    /// and probes which encodings this filesystem and these privileges allow.
    pub fn prepare(stack: &Stack, opts: UpperOptions) -> SysResult<Upper> {
        let workdir = stack.work.clone().ok_or(Errno::EINVAL)?;
        match sys::mkdirat(workdir.as_fd(), c"work", 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let work = Arc::new(sys::openat(
            workdir.as_fd(),
            c"work",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?);
        clear_dir(work.as_fd())?;
        // Work and upper must share a filesystem: copy-up renames across them.
        let wst = sys::fstat(work.as_fd())?;
        let ust = sys::fstat(stack.layers[0].root.as_fd())?;
        if wst.dev != ust.dev {
            return Err(Errno::EXDEV);
        }
        let probe = c"#probe";
        let mknod_ok = sys::mknodat(work.as_fd(), probe, libc::S_IFCHR | 0o600, 0).is_ok();
        let _ = sys::unlinkat(work.as_fd(), probe, 0);
        let chardev_whiteouts = match opts.whiteout {
            WhiteoutMode::Auto => mknod_ok,
            WhiteoutMode::Chardev => true,
            WhiteoutMode::File => false,
        };
        sys::mkdirat(work.as_fd(), probe, 0o700)?;
        let path = sys::proc_fd_path(work.as_fd(), Some(probe));
        let trusted = opts.xattrs == XattrNamespace::Auto
            && sys::lsetxattr(&path, c"trusted.overlay.opaque", b"y", 0).is_ok();
        let opaque = if trusted {
            OpaqueMode::Xattr(c"trusted.overlay.opaque")
        } else if sys::lsetxattr(&path, c"user.overlay.opaque", b"y", 0).is_ok() {
            OpaqueMode::Xattr(c"user.overlay.opaque")
        } else {
            OpaqueMode::MarkerFile
        };
        let _ = sys::unlinkat(work.as_fd(), probe, libc::AT_REMOVEDIR);
        // trusted.* also works on symlinks and devices, user.* does not.
        let origin_xattr = match opaque {
            OpaqueMode::Xattr(x) if x.to_bytes().starts_with(b"trusted.") => {
                c"trusted.layerfs.origin"
            }
            _ => c"user.layerfs.origin",
        };
        let nlink_xattr = match origin_xattr.to_bytes().starts_with(b"trusted.") {
            true => c"trusted.layerfs.nlink",
            false => c"user.layerfs.nlink",
        };
        let index = match open_index(workdir.as_fd(), nlink_xattr) {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(
                    "no hard-link index in the work directory ({e}): names of a lower hard link join its copy only while mounted"
                );
                None
            }
        };
        let redirect_xattr = match opaque {
            _ if !opts.redirect_dir.creates() => None,
            OpaqueMode::Xattr(x) if x.to_bytes().starts_with(b"trusted.") => {
                Some(c"trusted.overlay.redirect")
            }
            OpaqueMode::Xattr(_) => Some(c"user.overlay.redirect"),
            OpaqueMode::MarkerFile => None,
        };
        let metacopy_xattr = match opaque {
            OpaqueMode::Xattr(x) if x.to_bytes().starts_with(b"trusted.") => {
                Some(c"trusted.overlay.metacopy")
            }
            OpaqueMode::Xattr(_) => Some(c"user.overlay.metacopy"),
            OpaqueMode::MarkerFile => None,
        };
        info!("upper layer: chardev whiteouts {chardev_whiteouts}, opaque {opaque:?}");
        Ok(Upper {
            work,
            origin_xattr,
            index,
            nlink_xattr,
            redirect_xattr,
            metacopy_xattr,
            metacopy: opts.metacopy,
            chardev_whiteouts,
            opaque,
            volatile: opts.volatile,
            tmp_counter: AtomicU64::new(0),
            copy_locks: (0..COPY_LOCKS).map(|_| Mutex::new(())).collect(),
            ns: NsOwners::current(),
            creds: sys::ns::getuid_gid_effective(),
            reaper: Reaper::default(),
        })
    }

    pub(super) fn origin_xattr(&self) -> &'static CStr {
        self.origin_xattr
    }

    fn tmp_name(&self) -> CString {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#{n:x}")).unwrap_or_default()
    }

    fn lock(&self, ino: Ino) -> MutexGuard<'_, ()> {
        let i = (ino.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % COPY_LOCKS;
        self.copy_locks[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the upper directory holds under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpperEntry {
    Nothing,
    /// A character device 0/0.
    ChardevWhiteout,
    /// A `.wh.NAME` file beside an absent NAME.
    FileWhiteout,
    Object(FileKind),
}

/// The redirect a directory's upper copy carries, among its redirects.
fn upper_redirect(redirects: Option<&[Redirect]>) -> Option<&Place> {
    redirects?
        .iter()
        .find(|r| r.after == UPPER)
        .map(|r| &r.place)
}

fn wh_name(name: &[u8]) -> SysResult<CString> {
    let mut v = rules::WH_PREFIX.to_vec();
    v.extend_from_slice(name);
    sys::cstr(OsStr::from_bytes(&v))
}

/// Copies data from `src` to `dst`: a reflink when the filesystem shares
/// blocks, else `copy_file_range` over the data segments only, so holes stay
/// holes. Returns how the data moved.
fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> SysResult<CopyMethod> {
    if size == 0 {
        return Ok(CopyMethod::Metadata);
    }
    if sys::ficlone(dst, src).is_ok() {
        return Ok(CopyMethod::Reflink);
    }
    let mut method = CopyMethod::CopyFileRange;
    let mut off: u64 = 0;
    while off < size {
        let data = match sys::lseek(src, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(e) if e.0 == libc::ENXIO => break,
            // No SEEK_DATA support: treat the rest as data.
            Err(_) => off,
        };
        let hole = match sys::lseek(src, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(size),
            Err(_) => size,
        };
        method = method.combine(copy_range(src, dst, data, hole)?);
        off = hole.max(data + 1);
    }
    sys::ftruncate(dst, size)?;
    Ok(method)
}

fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> SysResult<CopyMethod> {
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(1 << 30);
        match sys::copy_file_range(src, pos, dst, pos, want) {
            Ok(0) => return Ok(CopyMethod::CopyFileRange),
            Ok(n) => pos += n as u64,
            Err(e)
                if [libc::EXDEV, libc::ENOSYS, libc::EINVAL, libc::EOPNOTSUPP].contains(&e.0) =>
            {
                let mut buf = vec![0u8; 1 << 20];
                while pos < end {
                    let n = ((end - pos) as usize).min(buf.len());
                    let got = sys::pread(src, &mut buf[..n], pos)?;
                    if got == 0 {
                        break;
                    }
                    sys::pwrite(dst, &buf[..got], pos)?;
                    pos += got as u64;
                }
                return Ok(CopyMethod::ReadWrite);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(CopyMethod::CopyFileRange)
}

/// Copies the extended attributes of `src` to `dst` (each a directory fd
/// and a name), leaving out the overlay's own. Attributes the upper
/// filesystem or our privileges refuse are skipped, as kernel overlayfs does
/// for ENOTSUP.
fn copy_xattrs(src: (BorrowedFd<'_>, &CStr), dst: (BorrowedFd<'_>, &CStr)) -> SysResult<()> {
    let names = match sys::listxattr_at(src.0, src.1) {
        Ok(n) => n,
        Err(e) if e.0 == libc::EOPNOTSUPP => return Ok(()),
        Err(e) => return Err(e),
    };
    for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if is_internal_xattr(n) {
            continue;
        }
        let cn = sys::cstr(OsStr::from_bytes(n))?;
        let v = match sys::getxattr_at(src.0, src.1, &cn) {
            Ok(v) => v,
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = sys::setxattr_at(dst.0, dst.1, &cn, &v, 0) {
            if [libc::EPERM, libc::EOPNOTSUPP, libc::EACCES].contains(&e.0) {
                debug!(
                    "copy-up: skipping xattr {}: {e}",
                    String::from_utf8_lossy(n)
                );
                continue;
            }
            return Err(e);
        }
    }
    Ok(())
}

impl Overlay {
    fn upper(&self) -> SysResult<&Upper> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    /// What the upper directory `pfd` holds under `name`.
    fn upper_entry(&self, pfd: &OwnedFd, name: &[u8]) -> SysResult<UpperEntry> {
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        match sys::fstatat(pfd.as_fd(), &cname) {
            Ok(st) if st.is_whiteout() => return Ok(UpperEntry::ChardevWhiteout),
            Ok(st) => return Ok(UpperEntry::Object(st.kind())),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        match sys::fstatat(pfd.as_fd(), &wh_name(name)?) {
            Ok(_) => Ok(UpperEntry::FileWhiteout),
            Err(Errno::ENOENT | Errno::ENAMETOOLONG) => Ok(UpperEntry::Nothing),
            Err(e) => Err(e),
        }
    }

    /// True if some layer below the upper one would show `name` in `parent`
    /// (ignoring whiteouts in the upper layer itself).
    fn exists_below(&self, parent: Ino, name: &[u8]) -> SysResult<bool> {
        let layers = self.node_info(parent)?.layers;
        let below: Vec<LayerIdx> = layers.iter().copied().filter(|l| *l != UPPER).collect();
        if below.is_empty() {
            return Ok(false);
        }
        Ok(self.resolve_in(parent, &below, name)?.is_some())
    }

    /// The upper-layer fd of directory `ino`, copying it (and its parents) up
    /// first if needed.
    fn upper_dir(&self, ino: Ino) -> SysResult<Arc<OwnedFd>> {
        self.copy_up(ino, CopyData::Full)?;
        self.dir_fd(ino, UPPER)
    }

    /// Copies `ino` into the upper layer unless it is there already; parents
    /// first. `data` says how much of a regular file to take; a
    /// metadata-only copy gets its data when `data` asks for more.
    pub fn copy_up(&self, ino: Ino, data: CopyData) -> SysResult<()> {
        let up = self.upper()?;
        let info = self.node_info(ino)?;
        if ino == Ino::ROOT {
            return Ok(());
        }
        if info.top() == UPPER {
            if info.is_metacopy() && data != CopyData::Meta {
                return self.complete_metacopy(ino, data);
            }
            return Ok(());
        }
        self.copy_up(info.parent, CopyData::Full)?;
        let guard = up.lock(ino);
        // Re-read under the lock: another thread may have copied it up.
        let info = self.node_info(ino)?;
        if info.top() == UPPER {
            drop(guard);
            if info.is_metacopy() && data != CopyData::Meta {
                return self.complete_metacopy(ino, data);
            }
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut method = CopyMethod::Metadata;
        let src_pfd = self.dir_fd(info.parent, info.top())?;
        let dst_pfd = self.dir_fd(info.parent, UPPER)?;
        let name = sys::cstr(OsStr::from_bytes(&info.name))?;
        let st = sys::fstatat(src_pfd.as_fd(), &name)?;
        if up.ns.as_ref().is_some_and(|ns| !ns.maps(st.uid, st.gid)) {
            // An owner this user namespace cannot name (stat shows the
            // overflow id): the copy could not get it. Kernel overlayfs
            // refuses the same way.
            return Err(Errno(libc::EOVERFLOW));
        }
        let tmp = up.tmp_name();
        let work = up.work.as_fd();
        let mut data_fd = None;
        // Hard links are copied whole: their other names join the copy.
        let meta_only = data == CopyData::Meta
            && st.kind() == FileKind::Regular
            && st.size > 0
            && st.nlink <= 1
            && up.metacopy == Metacopy::On
            && up.metacopy_xattr.is_some();
        match st.kind() {
            FileKind::Regular => {
                // A metadata-only file below has its data further down.
                let data_pfd = self.dir_fd(info.parent, info.data_layer())?;
                let src = sys::openat(
                    data_pfd.as_fd(),
                    &name,
                    libc::O_RDONLY | libc::O_NOFOLLOW,
                    0,
                )?;
                let dst = sys::openat(
                    work,
                    &tmp,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o600,
                )?;
                if meta_only {
                    if let Err(e) = sys::ftruncate(dst.as_fd(), st.size) {
                        let _ = sys::unlinkat(work, &tmp, 0);
                        return Err(e);
                    }
                } else if data != CopyData::Truncated {
                    // `Meta` that cannot stay metadata-only (a hard link,
                    // no xattrs in the upper layer) takes the data now:
                    // nothing would fetch it later.
                    match copy_data(src.as_fd(), dst.as_fd(), st.size) {
                        Ok(m) => method = m,
                        Err(e) => {
                            let _ = sys::unlinkat(work, &tmp, 0);
                            return Err(e);
                        }
                    }
                }
                data_fd = Some(dst);
            }
            FileKind::Dir => sys::mkdirat(work, &tmp, 0o700)?,
            FileKind::Symlink => {
                let target = sys::readlinkat(src_pfd.as_fd(), &name)?;
                sys::symlinkat(&sys::cstr(OsStr::from_bytes(&target))?, work, &tmp)?;
            }
            _ => sys::mknodat(work, &tmp, st.mode, st.rdev)?,
        }
        let finish = || -> SysResult<()> {
            sys::fchownat(work, &tmp, st.uid, st.gid)?;
            if st.kind() != FileKind::Symlink {
                sys::fchmodat(work, &tmp, st.mode & 0o7777)?;
            }
            copy_xattrs((src_pfd.as_fd(), &name), (work, &tmp))?;
            sys::utimensat(work, &tmp, SetTime::At(st.atime), SetTime::At(st.mtime))?;
            // Best effort (user.* is refused on symlinks): without it the
            // copy keeps its inode number only until the next mount.
            let _ = sys::setxattr_at(work, &tmp, up.origin_xattr, ino.0.to_string().as_bytes(), 0);
            if let (true, Some(x)) = (meta_only, up.metacopy_xattr) {
                sys::lsetxattr(&sys::proc_fd_path(work, Some(&tmp)), x, b"", 0)?;
            }
            // A metadata-only copy has no data of its own to lose.
            if let Some(fd) = &data_fd
                && !up.volatile
                && !meta_only
            {
                let _free = sys::widen_affinity();
                sys::fsync(fd.as_fd(), false)?;
            }
            // A copy-up is not a change of the parent: keep its times.
            let pst = sys::fstat(dst_pfd.as_fd())?;
            sys::renameat2(work, &tmp, dst_pfd.as_fd(), &name, libc::RENAME_NOREPLACE)?;
            sys::utimensat(
                dst_pfd.as_fd(),
                c"",
                SetTime::At(pst.atime),
                SetTime::At(pst.mtime),
            )
        };
        if let Err(e) = finish() {
            let _ = remove_tree(work, &tmp);
            warn!(
                "copy-up of {} failed: {e}",
                String::from_utf8_lossy(&info.name)
            );
            return Err(e);
        }
        let new = sys::fstatat(dst_pfd.as_fd(), &name)?;
        self.origins.insert(new.ino, ino);
        let layers: Box<[LayerIdx]> = if st.kind() == FileKind::Dir {
            std::iter::once(UPPER)
                .chain(info.layers.iter().copied())
                .collect()
        } else if meta_only {
            Box::new([UPPER, info.data_layer()])
        } else {
            Box::new([UPPER])
        };
        self.set_layers(ino, &layers);
        if st.kind() == FileKind::Regular && st.nlink > 1 {
            self.index_copy(&dst_pfd, &name, &st);
        }
        self.note_copy_up(ino, &st, method, started);
        debug!(
            "copied up {} ({ino}{})",
            String::from_utf8_lossy(&info.name),
            if meta_only { ", metadata only" } else { "" }
        );
        drop(guard);
        if st.kind() != FileKind::Dir && st.nlink > 1 {
            self.link_up_known_aliases(ino);
        }
        Ok(())
    }

    /// Gives a metadata-only copy its data (`Full`), or drops the data below
    /// because the caller truncates the file to zero next (`Truncated`). The
    /// data is written into the upper file in place and the metacopy mark
    /// removed last: a crash in between leaves a metadata-only copy that
    /// still reads the data below.
    fn complete_metacopy(&self, ino: Ino, data: CopyData) -> SysResult<()> {
        let up = self.upper()?;
        let _guard = up.lock(ino);
        let info = self.node_info(ino)?;
        if !info.is_metacopy() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut method = CopyMethod::Metadata;
        let loc = self.loc(ino)?;
        let st = loc.stat()?;
        if data == CopyData::Full {
            let data_pfd = self.dir_fd(info.parent, info.data_layer())?;
            let src = sys::openat(
                data_pfd.as_fd(),
                &loc.name,
                libc::O_RDONLY | libc::O_NOFOLLOW,
                0,
            )?;
            let dst = sys::openat(
                loc.fd.as_fd(),
                &loc.name,
                libc::O_WRONLY | libc::O_NOFOLLOW,
                0,
            )?;
            method = copy_data(src.as_fd(), dst.as_fd(), st.size)?;
            if !up.volatile {
                let _free = sys::widen_affinity();
                sys::fsync(dst.as_fd(), false)?;
            }
            // Writing changed what the caller did not: the times and,
            // through the kernel's kill-priv, maybe the mode.
            sys::fchmodat(loc.fd.as_fd(), &loc.name, st.mode & 0o7777)?;
            sys::utimensat(
                loc.fd.as_fd(),
                &loc.name,
                SetTime::At(st.atime),
                SetTime::At(st.mtime),
            )?;
        }
        if let Some(x) = up.metacopy_xattr {
            match sys::removexattr_at(loc.fd.as_fd(), &loc.name, x) {
                Ok(()) | Err(Errno::ENODATA) => {}
                Err(e) => return Err(e),
            }
        }
        self.set_layers(ino, &[UPPER]);
        self.note_copy_up(ino, &st, method, started);
        debug!(
            "completed the data of {} ({ino})",
            String::from_utf8_lossy(&info.name)
        );
        Ok(())
    }

    /// After a copy-up of one name of a lower hard link, links every other
    /// name of it seen through this mount to the copy, so they keep sharing
    /// data (kernel overlayfs's index=on behaviour).
    fn link_up_known_aliases(&self, ino: Ino) {
        let aliases: Vec<(Ino, Box<[u8]>)> = match self.nodes.get(&ino) {
            Some(n) => n.aliases.iter().flat_map(|a| a.iter().cloned()).collect(),
            None => return,
        };
        for (parent, name) in aliases {
            match self.resolve_name(parent, &name) {
                Ok(Some(mut found)) if found.ino == ino && !found.in_upper() => {
                    self.link_up_alias(parent, &name, &mut found)
                }
                _ => {}
            }
        }
    }

    /// A lower name whose inode was copied up through another name of the
    /// same hard link, in this mount or (through the index) an earlier one,
    /// is linked to that copy in the upper layer, so every name sees the
    /// same data (kernel overlayfs's index=on behaviour). Failure leaves the
    /// name below.
    pub(super) fn link_up_alias(&self, parent: Ino, name: &[u8], found: &mut Found) {
        let copied = self
            .nodes
            .get(&found.ino)
            .is_some_and(|n| n.layers.first() == Some(&UPPER));
        let indexed = match copied {
            true => None,
            false => self.index_entry(found),
        };
        if !copied && indexed.is_none() {
            return;
        }
        let r = (|| -> SysResult<Stat> {
            let pfd = self.upper_dir(parent)?;
            let cname = sys::cstr(OsStr::from_bytes(name))?;
            match (&indexed, &self.upper()?.index) {
                (Some(key), Some(index)) => {
                    sys::linkat(index.as_fd(), key, pfd.as_fd(), &cname)?;
                }
                _ => {
                    let src = self.loc(found.ino)?;
                    sys::linkat(src.fd.as_fd(), &src.name, pfd.as_fd(), &cname)?;
                }
            }
            // A name that was only below now counts in the upper layer.
            self.add_nlink_delta(&pfd, &cname, -1);
            self.invalidate_listing(parent);
            let mut st = sys::fstatat(pfd.as_fd(), &cname)?;
            self.origins.insert(st.ino, found.ino);
            self.adjust_nlink(&mut st, pfd.as_fd(), &cname);
            Ok(st)
        })();
        match r {
            Ok(mut st) => {
                st.ino = found.ino.0;
                found.stat = st;
                found.layers = Box::new([UPPER]);
            }
            Err(e) => debug!(
                "cannot link {} to its copied-up inode: {e}",
                String::from_utf8_lossy(name)
            ),
        }
    }

    /// The index entry of lower file `found`, if one of its names was
    /// copied up.
    fn index_entry(&self, found: &Found) -> Option<CString> {
        let index = self.upper.as_ref()?.index.as_ref()?;
        if found.stat.kind() != FileKind::Regular || found.stat.nlink <= 1 {
            return None;
        }
        let key = index_key(found.stat.dev, found.real_ino);
        sys::fstatat(index.as_fd(), &key).ok().map(|_| key)
    }

    /// Records the copy `name` in `pfd` of lower file `lower`, which has
    /// several names, in the index.
    fn index_copy(&self, pfd: &OwnedFd, name: &CStr, lower: &Stat) {
        let Some(up) = &self.upper else { return };
        let Some(index) = &up.index else { return };
        let key = index_key(lower.dev, lower.ino);
        if let Err(e) = sys::linkat(pfd.as_fd(), name, index.as_fd(), &key) {
            debug!("index: cannot link {}: {e}", key.to_string_lossy());
            return;
        }
        // Reported: every lower name; upper: this name and the index entry.
        let delta = lower.nlink as i64 - 2;
        let path = sys::proc_fd_path(pfd.as_fd(), Some(name));
        if let Err(e) = sys::lsetxattr(&path, up.nlink_xattr, delta.to_string().as_bytes(), 0) {
            debug!(
                "index: cannot record the link count of {}: {e}",
                key.to_string_lossy()
            );
        }
    }

    /// Adds `by` to the link-count difference of indexed copy `name` in
    /// `pfd` (nothing for a copy that is not indexed).
    fn add_nlink_delta(&self, pfd: &OwnedFd, name: &CStr, by: i64) {
        let Some(up) = &self.upper else { return };
        if let Some(d) = read_delta(pfd.as_fd(), name, up.nlink_xattr) {
            let delta = (d + by).to_string();
            let _ = sys::setxattr_at(pfd.as_fd(), name, up.nlink_xattr, delta.as_bytes(), 0);
        }
    }

    /// Corrects the link count of upper file `st` at `path` if it is an
    /// indexed copy (see [`INDEX_DIR`]).
    pub(super) fn adjust_nlink(&self, st: &mut Stat, dirfd: BorrowedFd<'_>, name: &CStr) {
        if let Some(up) = &self.upper
            && st.kind() == FileKind::Regular
            && st.nlink > 1
            && let Some(d) = read_delta(dirfd, name, up.nlink_xattr)
        {
            st.nlink = (st.nlink as i64 + d).max(1) as u64;
        }
    }

    /// Like [`Overlay::adjust_nlink`], for an open upper file.
    pub(super) fn adjust_nlink_fd(&self, st: &mut Stat, fd: &OwnedFd) {
        if let Some(up) = &self.upper
            && st.kind() == FileKind::Regular
            && st.nlink > 1
            && let Some(d) = sys::fgetxattr(fd.as_fd(), up.nlink_xattr)
                .ok()
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<i64>().ok())
        {
            st.nlink = (st.nlink as i64 + d).max(1) as u64;
        }
    }

    /// Writes a whiteout for `name` in upper directory `pfd`, where nothing
    /// of that name exists.
    fn make_whiteout(&self, pfd: &OwnedFd, name: &[u8]) -> SysResult<()> {
        let up = self.upper()?;
        if up.chardev_whiteouts {
            let cname = sys::cstr(OsStr::from_bytes(name))?;
            sys::mknodat(pfd.as_fd(), &cname, libc::S_IFCHR, 0)
        } else {
            let fd = sys::openat(
                pfd.as_fd(),
                &wh_name(name)?,
                libc::O_CREAT | libc::O_WRONLY,
                0o600,
            )?;
            drop(fd);
            Ok(())
        }
    }

    /// Marks `name` in upper directory `dirfd` opaque; `at` is where the
    /// directory shows in the merged view (parent, name), for the trace.
    fn set_opaque(&self, dirfd: BorrowedFd<'_>, name: &CStr, at: (Ino, &[u8])) -> SysResult<()> {
        self.mark_opaque(dirfd, name)?;
        self.note_opaque(at.0, at.1);
        Ok(())
    }

    fn mark_opaque(&self, dirfd: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
        match self.upper()?.opaque {
            OpaqueMode::Xattr(x) => {
                sys::lsetxattr(&sys::proc_fd_path(dirfd, Some(name)), x, b"y", 0)
            }
            OpaqueMode::MarkerFile => {
                let d = sys::openat(
                    dirfd,
                    name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )?;
                let m = sys::cstr(OsStr::from_bytes(rules::OPAQUE_MARKER))?;
                drop(sys::openat(
                    d.as_fd(),
                    &m,
                    libc::O_CREAT | libc::O_WRONLY,
                    0o600,
                )?);
                Ok(())
            }
        }
    }

    /// Common checks for a name that is about to be created: `EEXIST` if
    /// the merged view shows it. Returns what the parent's upper directory
    /// holds under the name (a whiteout to replace, or nothing), without
    /// copying the parent up.
    fn check_new_name(&self, parent: Ino, name: &[u8]) -> SysResult<UpperEntry> {
        self.upper()?;
        rules::check_name(name)?;
        if rules::is_reserved_name(name) {
            // Would be read back as a whiteout or an opaque marker.
            return Err(Errno::EINVAL);
        }
        let pinfo = self.node_info(parent)?;
        if pinfo.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        // Any object in the upper layer shows; a whiteout there hides the
        // layers below; otherwise they decide.
        let entry = match pinfo.top() {
            UPPER => self.upper_entry(&*self.dir_fd(parent, UPPER)?, name)?,
            _ => UpperEntry::Nothing,
        };
        match entry {
            UpperEntry::Object(_) => Err(Errno::EEXIST),
            UpperEntry::Nothing if self.exists_below(parent, name)? => Err(Errno::EEXIST),
            e => Ok(e),
        }
    }

    /// Gives a new object the caller's ownership (the group of a setgid
    /// parent directory, as the kernel does).
    fn chown_new(&self, pfd: &OwnedFd, name: &CStr, c: Caller) -> SysResult<()> {
        if self.upper()?.creds == (c.uid, c.gid) {
            // Made with the caller's ids already, a setgid parent's group
            // included (the upper filesystem applies it).
            return Ok(());
        }
        let pst = sys::fstat(pfd.as_fd())?;
        let gid = if pst.mode & libc::S_ISGID != 0 {
            pst.gid
        } else {
            c.gid
        };
        sys::fchownat(pfd.as_fd(), name, c.uid, gid)
    }

    /// Creates a new object named `name` in `parent` with `make(dirfd, name)`,
    /// atomically replacing a char-device whiteout when there is one, and
    /// records it. `make` must create the object with the final mode.
    fn create_object(
        &self,
        parent: Ino,
        name: &[u8],
        c: Caller,
        mut make: impl FnMut(BorrowedFd<'_>, &CStr) -> SysResult<()>,
    ) -> SysResult<Stat> {
        let st = self.create_object_inner(parent, name, c, &mut make)?;
        Ok(st)
    }

    /// Re-applies setuid/setgid bits that the ownership change cleared.
    fn restore_suid(&self, parent: Ino, name: &[u8], perm: u32) -> SysResult<()> {
        if perm & 0o6000 == 0 {
            return Ok(());
        }
        let pfd = self.dir_fd(parent, UPPER)?;
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        sys::fchmodat(pfd.as_fd(), &cname, perm)
    }

    fn create_object_inner(
        &self,
        parent: Ino,
        name: &[u8],
        c: Caller,
        make: &mut dyn FnMut(BorrowedFd<'_>, &CStr) -> SysResult<()>,
    ) -> SysResult<Stat> {
        let existing = self.check_new_name(parent, name)?;
        let up = self.upper()?;
        let pfd = self.upper_dir(parent)?;
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        let st = if existing == UpperEntry::ChardevWhiteout {
            let tmp = up.tmp_name();
            let work = up.work.as_fd();
            make(work, &tmp)?;
            let work_owned = up.work.clone();
            let r = (|| {
                // Built in the work directory, so take from the real parent
                // what the kernel would: a setgid parent's group, and its
                // setgid bit for a new directory.
                let pst = sys::fstat(pfd.as_fd())?;
                let sgid_parent = pst.mode & libc::S_ISGID != 0;
                let gid = if sgid_parent { pst.gid } else { c.gid };
                sys::fchownat(work, &tmp, c.uid, gid)?;
                let st = sys::fstatat(work, &tmp)?;
                if sgid_parent && st.kind() == FileKind::Dir {
                    sys::fchmodat(work, &tmp, (st.mode & 0o7777) | libc::S_ISGID)?;
                }
                if st.kind() == FileKind::Dir {
                    // Something existed below: the new directory must not
                    // merge with it.
                    self.set_opaque(work, &tmp, (parent, name))?;
                    sys::renameat2(work, &tmp, pfd.as_fd(), &cname, libc::RENAME_EXCHANGE)?;
                    let _ = sys::unlinkat(work, &tmp, 0);
                } else {
                    sys::renameat2(work, &tmp, pfd.as_fd(), &cname, 0)?;
                }
                Ok(())
            })();
            if let Err(e) = r {
                let _ = remove_tree(work_owned.as_fd(), &tmp);
                return Err(e);
            }
            sys::fstatat(pfd.as_fd(), &cname)?
        } else {
            make(pfd.as_fd(), &cname)?;
            if let Err(e) = self.chown_new(&pfd, &cname, c) {
                let _ = remove_tree(pfd.as_fd(), &cname);
                return Err(e);
            }
            sys::fstatat(pfd.as_fd(), &cname)?
        };
        self.invalidate_listing(parent);
        self.origins.remove(&st.ino);
        let mut st = st;
        let ino = self.map_ino(UPPER, st.ino);
        st.ino = ino.0;
        let kind = st.kind();
        self.remember(ino, parent, name, kind, &[UPPER], None);
        Ok(st)
    }

    /// `mkdir`.
    pub fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, c: Caller) -> SysResult<Stat> {
        let mode = mode & !c.umask & 0o7777;
        self.create_object(parent, name, c, |fd, n| sys::mkdirat(fd, n, mode))
    }

    /// `mknod` (regular files, fifos, sockets, devices).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u64,
        c: Caller,
    ) -> SysResult<Stat> {
        let perm = mode & !c.umask & 0o7777;
        let ty = mode & libc::S_IFMT;
        let mut st = self.create_object(parent, name, c, |fd, n| {
            if ty == libc::S_IFREG || ty == 0 {
                drop(sys::openat(
                    fd,
                    n,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    perm,
                )?);
                Ok(())
            } else {
                sys::mknodat(fd, n, ty | perm, rdev)
            }
        })?;
        if perm & 0o6000 != 0 {
            self.restore_suid(parent, name, perm)?;
            st.mode = (st.mode & libc::S_IFMT) | perm;
        }
        Ok(st)
    }

    /// `symlink`.
    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], c: Caller) -> SysResult<Stat> {
        let t = sys::cstr(OsStr::from_bytes(target))?;
        self.create_object(parent, name, c, |fd, n| sys::symlinkat(&t, fd, n))
    }

    /// `create`: a new regular file, opened. Returns its stat, handle and fd.
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
        c: Caller,
    ) -> SysResult<(Stat, u64, Arc<OwnedFd>)> {
        let perm = mode & !c.umask & 0o7777;
        let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT;
        let mut opened: Option<OwnedFd> = None;
        let st = self.create_object(parent, name, c, |fd, n| {
            opened = Some(sys::openat(
                fd,
                n,
                self.layer_open_flags(flags & keep)
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW,
                perm,
            )?);
            Ok(())
        })?;
        let mut st = st;
        if perm & 0o6000 != 0 {
            self.restore_suid(parent, name, perm)?;
            st.mode = (st.mode & libc::S_IFMT) | perm;
        }
        let fd = Arc::new(opened.ok_or(Errno::EIO)?);
        let fh = self.add_file_handle(Ino(st.ino), fd.clone(), true);
        Ok((st, fh, fd))
    }

    /// `link`: a new name for `ino` in `newparent`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> SysResult<Stat> {
        let existing = self.check_new_name(newparent, newname)?;
        let info = self.node_info(ino)?;
        if info.kind == FileKind::Dir {
            return Err(Errno::EPERM);
        }
        self.copy_up(ino, CopyData::Full)?;
        let src = self.loc(ino)?;
        let up = self.upper()?;
        let pfd = self.upper_dir(newparent)?;
        let cname = sys::cstr(OsStr::from_bytes(newname))?;
        if existing == UpperEntry::ChardevWhiteout {
            let tmp = up.tmp_name();
            sys::linkat(src.fd.as_fd(), &src.name, up.work.as_fd(), &tmp)?;
            if let Err(e) = sys::renameat2(up.work.as_fd(), &tmp, pfd.as_fd(), &cname, 0) {
                let _ = sys::unlinkat(up.work.as_fd(), &tmp, 0);
                return Err(e);
            }
        } else {
            sys::linkat(src.fd.as_fd(), &src.name, pfd.as_fd(), &cname)?;
        }
        self.invalidate_listing(newparent);
        let mut st = sys::fstatat(pfd.as_fd(), &cname)?;
        st.ino = ino.0;
        self.adjust_nlink(&mut st, pfd.as_fd(), &cname);
        self.remember(ino, newparent, newname, st.kind(), &[UPPER], None);
        Ok(st)
    }

    /// Removes the upper object `name` of `parent` and records a whiteout if
    /// the name still exists below.
    fn remove_upper_and_whiteout(
        &self,
        parent: Ino,
        pfd: &OwnedFd,
        name: &[u8],
        found: &Found,
    ) -> SysResult<()> {
        let up = self.upper()?;
        let below = self.exists_below(parent, name)?;
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        let work = up.work.as_fd();
        if found.in_upper() {
            // Held past the removal: the reaper drops the last reference
            // (and with it the freeing of the blocks) off this request.
            let held = sys::openat(pfd.as_fd(), &cname, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            let real = sys::fstat(held.as_fd())?;
            if below && up.chardev_whiteouts {
                // Swap a fresh whiteout in, atomically, then drop the old object.
                let tmp = up.tmp_name();
                sys::mknodat(work, &tmp, libc::S_IFCHR, 0)?;
                let flags = if found.is_dir() {
                    libc::RENAME_EXCHANGE
                } else {
                    0
                };
                if let Err(e) = sys::renameat2(work, &tmp, pfd.as_fd(), &cname, flags) {
                    let _ = sys::unlinkat(work, &tmp, 0);
                    return Err(e);
                }
                if found.is_dir() {
                    remove_tree(work, &tmp)?;
                }
            } else {
                if found.is_dir() {
                    // Move it out of the way first: only whiteouts are left in it.
                    let tmp = up.tmp_name();
                    sys::renameat2(pfd.as_fd(), &cname, work, &tmp, 0)?;
                    remove_tree(work, &tmp)?;
                } else {
                    sys::unlinkat(pfd.as_fd(), &cname, 0)?;
                }
                if below && self.upper_entry(pfd, name)? != UpperEntry::FileWhiteout {
                    self.make_whiteout(pfd, name)?;
                }
            }
            if real.nlink <= 1 || found.is_dir() {
                self.origins.remove(&real.ino);
            }
            up.reaper.release(held);
        } else if self.upper_entry(pfd, name)? != UpperEntry::FileWhiteout {
            // Only below: a whiteout is all it takes (no copy-up).
            self.make_whiteout(pfd, name)?;
        }
        if below {
            self.note_whiteout(parent, name);
        }
        self.invalidate_listing(parent);
        Ok(())
    }

    /// `unlink`.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> SysResult<()> {
        self.upper()?;
        rules::check_name(name)?;
        let found = self.resolve_name(parent, name)?.ok_or(Errno::ENOENT)?;
        if found.is_dir() {
            return Err(Errno::EISDIR);
        }
        let pfd = self.upper_dir(parent)?;
        self.remove_upper_and_whiteout(parent, &pfd, name, &found)?;
        self.drop_name(found.ino, parent, name, Some(found.stat));
        Ok(())
    }

    /// True if directory `found` shows no entry in the merged view.
    fn merged_dir_is_empty(&self, parent: Ino, name: &[u8], found: &Found) -> SysResult<bool> {
        // The directory may have no node yet; give it a temporary one.
        let known = self.node_info(found.ino).is_ok();
        if !known {
            self.remember(
                found.ino,
                parent,
                name,
                FileKind::Dir,
                &found.layers,
                found.redirects.clone(),
            );
        }
        let r = self.read_listing(found.ino).map(|l| l.len() <= 2);
        if !known {
            self.forget(found.ino, 1);
        }
        r
    }

    /// `rmdir`: ENOTEMPTY while any layer still shows an entry.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> SysResult<()> {
        self.upper()?;
        rules::check_name(name)?;
        let found = self.resolve_name(parent, name)?.ok_or(Errno::ENOENT)?;
        if !found.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !self.merged_dir_is_empty(parent, name, &found)? {
            return Err(Errno::ENOTEMPTY);
        }
        let pfd = self.upper_dir(parent)?;
        self.remove_upper_and_whiteout(parent, &pfd, name, &found)?;
        self.invalidate_listing(found.ino);
        self.drop_name(found.ino, parent, name, Some(found.stat));
        Ok(())
    }

    /// The redirect a lower directory `f`, now `name` in `parent`, needs
    /// before it moves (kernel overlayfs's rules): within its directory, its
    /// old name unless it has a redirect already; elsewhere, its absolute
    /// place below, unless its redirect is absolute already (`None`: keep).
    fn redirect_for(
        &self,
        f: &Found,
        parent: Ino,
        name: &[u8],
        samedir: bool,
    ) -> SysResult<Option<Place>> {
        if self.upper()?.redirect_xattr.is_none() {
            return Err(Errno::EXDEV);
        }
        let current = upper_redirect(f.redirects.as_deref());
        if let Some(r) = current
            && (samedir || matches!(r, Place::Abs(_)))
        {
            return Ok(None);
        }
        if samedir {
            return Ok(Some(Place::Name(name.into())));
        }
        let mut chain: Vec<(Box<[u8]>, Option<Place>)> = vec![(name.into(), current.cloned())];
        let mut cur = parent;
        // Bounded: a cycle cannot exist, but a bound costs nothing.
        for _ in 0..4096 {
            if cur == Ino::ROOT {
                break;
            }
            let info = self.node_info(cur)?;
            let r = upper_redirect(info.redirects.as_deref()).cloned();
            let absolute = matches!(r, Some(Place::Abs(_)));
            chain.push((info.name, r));
            if absolute {
                break;
            }
            cur = info.parent;
        }
        let chain: Vec<(&[u8], Option<&Place>)> =
            chain.iter().map(|(n, r)| (&**n, r.as_ref())).collect();
        let v = rules::abs_redirect(&chain)?;
        Ok(Some(Place::Abs(v.into())))
    }

    /// Records redirect `r` on upper directory `name` in `dirfd`.
    fn write_redirect(&self, dirfd: BorrowedFd<'_>, name: &CStr, r: &Place) -> SysResult<()> {
        let x = self.upper()?.redirect_xattr.ok_or(Errno::EXDEV)?;
        sys::lsetxattr(&sys::proc_fd_path(dirfd, Some(name)), x, r.as_bytes(), 0)
    }

    /// `rename` with the RENAME_NOREPLACE and RENAME_EXCHANGE flags. A
    /// directory that exists in a lower layer moves by redirect, as with
    /// kernel overlayfs's `redirect_dir=on`: it is copied up (without its
    /// contents), records where it came from, and lookups below follow that.
    /// Without overlay xattrs in the upper layer it is EXDEV (callers such
    /// as `mv` then copy it).
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> SysResult<()> {
        let up = self.upper()?;
        rules::check_name(name)?;
        rules::check_name(newname)?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        if rules::is_reserved_name(newname) {
            return Err(Errno::EINVAL);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let src = self.resolve_name(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.resolve_name(newparent, newname)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        if let Some(d) = &dst
            && d.ino == src.ino
            && !exchange
        {
            // Two names of one file: POSIX says do nothing.
            return Ok(());
        }
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        let lower_dir = |f: &Found| f.is_dir() && f.layers.iter().any(|l| *l != UPPER);
        let samedir = parent == newparent;
        // For each side that is a lower directory: the redirect to write
        // (`Some(None)`: the one it has stays right).
        let src_redirect = match lower_dir(&src) {
            true => Some(self.redirect_for(&src, parent, name, samedir)?),
            false => None,
        };
        let dst_redirect = match &dst {
            Some(d) if exchange && lower_dir(d) => {
                Some(self.redirect_for(d, newparent, newname, samedir)?)
            }
            _ => None,
        };
        if let (Some(d), false) = (&dst, exchange) {
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.merged_dir_is_empty(newparent, newname, d)? => {
                    return Err(Errno::ENOTEMPTY);
                }
                _ => {}
            }
        }
        self.copy_up(src.ino, CopyData::Full)?;
        if let (Some(d), true) = (&dst, exchange) {
            self.copy_up(d.ino, CopyData::Full)?;
        }
        let opfd = self.upper_dir(parent)?;
        let npfd = self.upper_dir(newparent)?;
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        let cnew = sys::cstr(OsStr::from_bytes(newname))?;
        let work = up.work.as_fd();
        // Recorded before the move, as the kernel does: a crash in between
        // leaves a redirect to where the directory still is, which is
        // harmless.
        if let Some(Some(r)) = &src_redirect {
            self.write_redirect(opfd.as_fd(), &cname, r)?;
        }
        if let Some(Some(r)) = &dst_redirect {
            self.write_redirect(npfd.as_fd(), &cnew, r)?;
        }
        if exchange {
            // Each upper-only directory that lands in a merged directory
            // becomes opaque, as with a plain rename below.
            if src.is_dir() && src_redirect.is_none() && self.node_info(newparent)?.layers.len() > 1
            {
                self.set_opaque(opfd.as_fd(), &cname, (newparent, newname))?;
            }
            if dst.as_ref().is_some_and(|d| d.is_dir())
                && dst_redirect.is_none()
                && self.node_info(parent)?.layers.len() > 1
            {
                self.set_opaque(npfd.as_fd(), &cnew, (parent, name))?;
            }
            sys::renameat2(
                opfd.as_fd(),
                &cname,
                npfd.as_fd(),
                &cnew,
                libc::RENAME_EXCHANGE,
            )?;
        } else {
            let src_below = self.exists_below(parent, name)?;
            let dst_below = self.exists_below(newparent, newname)?;
            let dst_entry = self.upper_entry(&npfd, newname)?;
            if let (Some(d), UpperEntry::Object(FileKind::Dir)) = (&dst, dst_entry) {
                // An empty merged directory may still hold whiteouts.
                let fd = self.dir_fd(d.ino, UPPER).or_else(|_| {
                    sys::openat(
                        npfd.as_fd(),
                        &cnew,
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )
                    .map(Arc::new)
                })?;
                clear_dir(fd.as_fd())?;
            }
            // Like kernel overlayfs: an upper-only directory moved into a
            // merged directory, or over something below, must not merge
            // with whatever that layer holds under its new name. (A lower
            // one follows its redirect instead.)
            let merged_parent = self.node_info(newparent)?.layers.len() > 1;
            if src.is_dir()
                && src_redirect.is_none()
                && (dst_below || merged_parent || dst_entry == UpperEntry::ChardevWhiteout)
            {
                self.set_opaque(opfd.as_fd(), &cname, (newparent, newname))?;
            }
            // What the rename replaces, held so that the reaper frees it.
            let held = sys::openat(npfd.as_fd(), &cnew, libc::O_PATH | libc::O_NOFOLLOW, 0).ok();
            let real = held.as_ref().and_then(|fd| sys::fstat(fd.as_fd()).ok());
            if src.is_dir() && dst_entry == UpperEntry::ChardevWhiteout {
                // A directory cannot replace a non-directory: swap, which
                // leaves the whiteout at the old name.
                sys::renameat2(
                    opfd.as_fd(),
                    &cname,
                    npfd.as_fd(),
                    &cnew,
                    libc::RENAME_EXCHANGE,
                )?;
                if !src_below {
                    sys::unlinkat(opfd.as_fd(), &cname, 0)?;
                }
            } else if src_below && up.chardev_whiteouts {
                match sys::renameat2(
                    opfd.as_fd(),
                    &cname,
                    npfd.as_fd(),
                    &cnew,
                    libc::RENAME_WHITEOUT,
                ) {
                    Ok(()) => {}
                    Err(e) if e == Errno::EINVAL || e == Errno::EPERM => {
                        sys::renameat2(opfd.as_fd(), &cname, npfd.as_fd(), &cnew, 0)?;
                        self.make_whiteout(&opfd, name)?;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                sys::renameat2(opfd.as_fd(), &cname, npfd.as_fd(), &cnew, 0)?;
                if src_below && self.upper_entry(&opfd, name)? != UpperEntry::FileWhiteout {
                    self.make_whiteout(&opfd, name)?;
                }
            }
            if src_below {
                self.note_whiteout(parent, name);
            }
            if let (Some(r), Some(d)) = (real, &dst)
                && d.in_upper()
                && (r.nlink <= 1 || r.kind() == FileKind::Dir)
                && !r.is_whiteout()
            {
                self.origins.remove(&r.ino);
            }
            if let Some(fd) = held {
                up.reaper.release(fd);
            }
            let _ = work;
        }
        self.invalidate_listing(parent);
        self.invalidate_listing(newparent);
        self.note_rename((parent, name), (newparent, newname), exchange);
        if let Some(Some(r)) = src_redirect {
            self.set_upper_redirect(src.ino, r);
        }
        if let (Some(d), Some(Some(r))) = (&dst, dst_redirect) {
            self.set_upper_redirect(d.ino, r);
        }
        match (&dst, exchange) {
            (Some(d), true) => {
                self.move_node(src.ino, (parent, name), (newparent, newname));
                self.move_node(d.ino, (newparent, newname), (parent, name));
            }
            (Some(d), false) => {
                self.drop_name(d.ino, newparent, newname, Some(d.stat));
                self.move_node(src.ino, (parent, name), (newparent, newname));
            }
            (None, _) => self.move_node(src.ino, (parent, name), (newparent, newname)),
        }
        Ok(())
    }

    /// `setattr`: copies up, then changes mode, owner, size and times.
    pub fn setattr(&self, ino: Ino, a: SetAttr, fh: Option<u64>) -> SysResult<Stat> {
        if a.is_empty() {
            // With kill-priv v2, an empty setattr of a regular file is "clear
            // setuid/setgid before this caller writes" (FATTR_KILL_SUIDGID,
            // which fuser does not pass on); for anything else it is a no-op
            // such as chown(-1, -1). Clearing them here also puts
            // the new mode into the kernel's attribute cache. Either way the
            // file is copied up first, as kernel overlayfs does for
            // chown(-1, -1).
            if self.upper.is_some() && !self.is_orphan(ino) {
                self.copy_up(ino, CopyData::Meta)?;
                // chown(-1, -1) still changes the file: its ctime moves,
                // as on the upper filesystem and kernel overlayfs.
                let loc = self.loc(ino)?;
                sys::fchownat(loc.fd.as_fd(), &loc.name, u32::MAX, u32::MAX)?;
            }
            let st = self.getattr_fh(ino, fh)?;
            if self.upper.is_none()
                || st.kind() != FileKind::Regular
                || st.mode & (libc::S_ISUID | libc::S_ISGID) == 0
            {
                return Ok(st);
            }
            let mut mode = st.mode & 0o7777 & !libc::S_ISUID;
            if st.mode & libc::S_IXGRP != 0 {
                mode &= !libc::S_ISGID;
            }
            let a = SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            };
            return self.setattr(ino, a, fh);
        }
        let up = self.upper()?;
        if (a.uid.is_some() || a.gid.is_some())
            && let Some(ns) = &up.ns
            && !ns.uids.contains(self.getattr_fh(ino, fh)?.uid)
        {
            // Nobody here owns it, and capabilities do not reach an owner
            // the namespace cannot name: kernel overlayfs answers EPERM
            // (FUSE would let root "repair" it, and the copy-up then fail).
            return Err(Errno::EPERM);
        }
        let data = match a.size {
            Some(0) => CopyData::Truncated,
            Some(_) => CopyData::Full,
            None => CopyData::Meta,
        };
        // A node whose last name was removed keeps that name, which may
        // since have been reused by another file: only an open fd reaches
        // it. (With the kernel's writeback cache, the mtime of a written
        // file comes late, possibly after an unlink or rename over it.)
        let orphan = self.is_orphan(ino);
        if !orphan {
            self.copy_up(ino, data)?;
        }
        // The upper file of the handle the kernel names is the file itself,
        // whatever happened to its names. A handle opened read-only before
        // a copy-up still points below: not that one.
        let handle_fd = fh
            .and_then(|fh| self.handle(fh).ok())
            .filter(|h| h.upper)
            .map(|h| h.fd.clone());
        let fd_loc = |fd: &Arc<OwnedFd>| Loc {
            fd: fd.clone(),
            name: CString::default(),
        };
        let (loc, mut open_fd) =
            match handle_fd.or_else(|| orphan.then(|| self.open_upper_fd(ino)).flatten()) {
                Some(fd) => (fd_loc(&fd), Some(fd)),
                // Gone, and not open any more: nothing is left to change. Quietly
                // so, for the times the kernel flushes after the last close.
                None if orphan => return self.getattr(ino),
                None => (self.loc(ino)?, None),
            };
        match apply_setattr(&a, &loc, open_fd.as_ref()) {
            // Every name may be gone while the file is open: then its open
            // upper fd is the file. (Each change fails before any is made.)
            Err(Errno::ENOENT) if open_fd.is_none() => {
                let fd = self.open_upper_fd(ino).ok_or(Errno::ENOENT)?;
                apply_setattr(&a, &fd_loc(&fd), Some(&fd))?;
                open_fd = Some(fd);
            }
            r => r?,
        }
        match open_fd {
            Some(fd) => {
                let mut st = sys::fstat(fd.as_fd())?;
                self.adjust_nlink_fd(&mut st, &fd);
                st.ino = ino.0;
                Ok(st)
            }
            None => self.getattr(ino),
        }
    }

    /// `setxattr`: copies up, then sets. The overlay's own attributes are off limits.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> SysResult<()> {
        self.upper()?;
        if is_internal_xattr(name) {
            return Err(Errno::EPERM);
        }
        self.copy_up(ino, CopyData::Meta)?;
        let loc = self.loc(ino)?;
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        sys::setxattr_at(loc.fd.as_fd(), &loc.name, &cname, value, flags)
    }

    /// `removexattr`.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> SysResult<()> {
        self.upper()?;
        if is_internal_xattr(name) {
            return Err(Errno::ENODATA);
        }
        // Nothing to copy up if the attribute does not exist.
        self.getxattr(ino, name)?;
        self.copy_up(ino, CopyData::Meta)?;
        let loc = self.loc(ino)?;
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        sys::removexattr_at(loc.fd.as_fd(), &loc.name, &cname)
    }

    /// The fd of an open file (following a copy-up of a lower one).
    fn file_fd(&self, fh: u64) -> SysResult<Arc<OwnedFd>> {
        Ok(self.current_fd(&*self.handle(fh)?))
    }

    /// `write` through an open handle.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<usize> {
        let fd = self.file_fd(fh)?;
        sys::pwrite(fd.as_fd(), data, offset)
    }

    /// Clears setuid (and setgid, when group-executable) after a write by a
    /// caller the kernel says must not keep them.
    pub fn kill_suidgid(&self, fh: u64) -> SysResult<()> {
        let fd = self.file_fd(fh)?;
        let st = sys::fstat(fd.as_fd())?;
        let mut mode = st.mode & 0o7777 & !libc::S_ISUID;
        if st.mode & libc::S_IXGRP != 0 {
            mode &= !libc::S_ISGID;
        }
        if mode != st.mode & 0o7777 {
            sys::fchmodat(fd.as_fd(), c"", mode)?;
        }
        Ok(())
    }

    /// `fsync`/`fdatasync`; a no-op on a volatile mount.
    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        if self.upper.as_ref().is_none_or(|u| u.volatile) {
            return Ok(());
        }
        let fd = self.file_fd(fh)?;
        let _free = sys::widen_affinity();
        sys::fsync(fd.as_fd(), datasync)
    }

    /// `fallocate` on an open handle.
    pub fn fallocate(&self, fh: u64, mode: i32, offset: u64, len: u64) -> SysResult<()> {
        let fd = self.file_fd(fh)?;
        sys::fallocate(fd.as_fd(), mode, offset, len)
    }

    /// `lseek` (SEEK_DATA/SEEK_HOLE reach the layer file).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        let fd = self.file_fd(fh)?;
        sys::lseek(fd.as_fd(), offset, whence)
    }

    /// `copy_file_range` between two open handles.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> SysResult<usize> {
        let src = self.file_fd(fh_in)?;
        let dst = self.file_fd(fh_out)?;
        sys::copy_file_range(
            src.as_fd(),
            off_in,
            dst.as_fd(),
            off_out,
            len.min(1 << 30) as usize,
        )
    }
}
