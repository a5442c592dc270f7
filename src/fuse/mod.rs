//! The FUSE adapter: decodes requests, calls [`Overlay`], encodes replies.
//!
//! Owns: the translation between `fuser` types and the overlay's, the kernel
//! cache policy (timeouts, keep-cache, cached directories), and FUSE
//! passthrough backing files. Does not own: any union rule.
//!
//! Invariants: every request gets exactly one reply; errors carry the errno
//! the overlay produced; a handler never panics.
//!
//! Ownership: [`FuseOptions::idmap`] is applied here and only here, in
//! [`LayerFs::attr`] (every attribute the kernel gets) and
//! [`LayerFs::caller`] and `setattr` (every id that becomes an owner on
//! disk); the overlay works with the ids stored in the layers.
//!
//! Kernel caches: [`KernelCache`] tells the kernel to drop entries,
//! attributes and data it caches for long (see `layerfs refresh`); the
//! pruner thread (`prune.rs`) asks it to forget inodes when the overlay
//! holds more than [`FuseOptions::max_inodes`].
//!
//! Cache mode ([`CacheMode`], chosen once in `init`): passthrough where the
//! kernel offers it and we are root in the initial user namespace; else, on
//! writable mounts, the kernel's writeback cache (the overlay then opens
//! layer files readable and without O_APPEND, and SEEK_DATA/SEEK_HOLE get
//! ENOSYS: the kernel does not flush its dirty pages before LSEEK); else
//! write-through. Reads through the daemon use one reused buffer per thread.
//!
//! Passthrough: all opens of one inode must share one backing file while any
//! of them is open (the kernel answers EIO otherwise), so backing ids are kept
//! per inode with an open count in `backing`. The map entry's guard is held
//! across the backing ioctl, which does not block.

mod plus;
mod prune;
pub use plus::ReaddirPlus;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Config, CopyFileRangeFlags, Errno as FErrno, FileAttr,
    FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, Session, SessionACL, TimeOrNow, WriteFlags,
};
use log::{debug, info, warn};

use crate::overlay::fs::{Listing, may_access};
use crate::overlay::{Caller, IdMap, Ino, NodeLimit, Overlay, Refreshed, SetAttr};
use crate::sys::{Errno, FileKind, SetTime, Stat, Timespec};

/// How the mount talks to the kernel.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// How long the kernel may cache entries and attributes.
    pub timeout: Duration,
    /// Try FUSE passthrough for open files (needs privileges).
    pub passthrough: bool,
    /// The kernel's writeback cache on writable mounts: `None` lets the
    /// mount decide (on where there is no passthrough), `Some(true)` also
    /// gives up passthrough for it, `Some(false)` never.
    pub writeback: Option<bool>,
    /// Request-serving threads on /dev/fuse.
    pub threads: usize,
    /// Threads per CPU queue for FUSE over io_uring; 0: /dev/fuse only.
    pub uring_threads: usize,
    /// When listings carry attributes (see `plus.rs`).
    pub readdirplus: ReaddirPlus,
    /// SELinux is enabled on this host (files may carry labels).
    pub selinux: bool,
    /// Ownership translation (`uidmapping=`, `squash_*`).
    pub idmap: IdMap,
    /// Inodes the daemon keeps before asking the kernel to forget some.
    pub max_inodes: NodeLimit,
    /// The link count directories report.
    pub dir_nlink: DirNlink,
    /// Whether the mount has extended attributes at all.
    pub xattrs: XattrSupport,
}

/// The link count a directory reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DirNlink {
    /// The upper or top layer's count (2 + subdirectories, as on ext4).
    #[default]
    Counted,
    /// Always 1, "unknown" (fuse-overlayfs's `static_nlink`): tools such
    /// as find then do not use it to skip leaf directories.
    Static,
}

/// Whether the mount answers extended-attribute requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XattrSupport {
    #[default]
    On,
    /// Every xattr request is ENOSYS, which makes the kernel stop sending
    /// them and answer EOPNOTSUPP itself (fuse-overlayfs's `noxattrs=1`).
    Off,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            timeout: Duration::from_secs(86400),
            passthrough: true,
            writeback: None,
            threads: default_threads(),
            uring_threads: DEFAULT_URING_THREADS,
            readdirplus: ReaddirPlus::Auto,
            selinux: std::path::Path::new("/sys/fs/selinux/enforce").exists(),
            idmap: IdMap::default(),
            max_inodes: NodeLimit::DEFAULT,
            dir_nlink: DirNlink::Counted,
            xattrs: XattrSupport::On,
        }
    }
}

/// How file data is cached, chosen when the kernel connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// The kernel reads and writes the layer files itself.
    Passthrough,
    /// Data goes through the daemon; the kernel caches writes and owns the
    /// size and times of open files until it flushes them.
    Writeback,
    /// Data goes through the daemon; writes go straight through.
    WriteThrough,
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheMode::Passthrough => "passthrough",
            CacheMode::Writeback => "writeback cache",
            CacheMode::WriteThrough => "write-through",
        })
    }
}

thread_local! {
    /// Each reader thread's buffer for READ replies: reused, so a read
    /// costs no allocation (and no page faults on fresh memory).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One request-serving thread per CPU, at least 2 and at most 8. The
/// kernel wakes the thread that has waited longest for each request, so
/// threads beyond the CPUs only add cold wake-ups: on 2 cores, rootless 4k
/// random reads (each a READ round trip) ran at 47k IOPS with 4 threads and
/// 87k with 2; writes, walks and sequential reads did not change.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Threads per CPU queue with FUSE over io_uring. Each serves one request
/// at a time on its CPU; the kernel queues the CPU's further requests until
/// one is free.
pub const DEFAULT_URING_THREADS: usize = 1;

/// A passthrough backing file shared by every open of one inode.
struct Backing {
    id: Arc<BackingId>,
    opens: u64,
    /// Whether it is the upper-layer file (a lower one goes stale at copy-up).
    upper: bool,
}

/// The `fuser::Filesystem` of layerfs.
pub struct LayerFs {
    ov: Arc<Overlay>,
    opts: FuseOptions,
    passthrough: AtomicBool,
    /// Set once in `init`.
    mode: CacheMode,
    backing: DashMap<Ino, Backing>,
    /// Open handles that use a passthrough backing file, by handle.
    pt_handles: DashMap<u64, Ino>,
    /// Open handles served by the daemon on a mount that passes through
    /// others, by handle, and their number per inode: while an inode has
    /// one, its other opens are served by the daemon too (the kernel
    /// refuses to mix the two on one inode).
    plain_handles: DashMap<u64, Ino>,
    plain_opens: DashMap<Ino, u64>,
    disconnect: Arc<OnDisconnect>,
    /// Whether a listing carries attributes, with `ReaddirPlus::Auto`.
    plus: plus::PlusGate,
}

/// What the daemon does as soon as one of its threads sees the kernel end
/// the connection (unmount), before the other threads have stopped. Set at
/// most once, by whoever runs the session; unset, the session winds down
/// normally (every thread stops, then the filesystem is dropped).
#[derive(Default)]
pub struct OnDisconnect(std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>);

impl OnDisconnect {
    /// Sets the action; false when one was set already.
    pub fn set(&self, f: impl Fn() + Send + Sync + 'static) -> bool {
        self.0.set(Box::new(f)).is_ok()
    }
}

impl LayerFs {
    pub fn new(ov: Arc<Overlay>, opts: FuseOptions) -> LayerFs {
        let passthrough = AtomicBool::new(opts.passthrough);
        LayerFs {
            ov,
            opts,
            passthrough,
            mode: CacheMode::WriteThrough,
            backing: DashMap::new(),
            pt_handles: DashMap::new(),
            plain_handles: DashMap::new(),
            plain_opens: DashMap::new(),
            disconnect: Arc::default(),
            plus: plus::PlusGate::default(),
        }
    }

    /// The hook run when the connection ends (see [`OnDisconnect`]); take
    /// it before the session takes the filesystem.
    pub fn on_disconnect(&self) -> Arc<OnDisconnect> {
        self.disconnect.clone()
    }
}

fn ferr(e: Errno) -> FErrno {
    FErrno::from_i32(e.0)
}

fn systime(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::Regular => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// Encodes a `dev_t` the way the FUSE protocol carries it (`new_encode_dev`).
fn encode_dev(rdev: u64) -> u32 {
    // SAFETY-free: libc's major/minor are plain arithmetic.
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn to_attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.ino),
        size: st.size,
        blocks: st.blocks,
        atime: systime(st.atime),
        mtime: systime(st.mtime),
        ctime: systime(st.ctime),
        crtime: UNIX_EPOCH,
        kind: file_type(st.kind()),
        perm: (st.mode & 0o7777) as u16,
        nlink: st.nlink.min(u32::MAX as u64) as u32,
        uid: st.uid,
        gid: st.gid,
        rdev: encode_dev(st.rdev),
        blksize: st.blksize,
        flags: 0,
    }
}

impl LayerFs {
    /// The attributes the kernel gets for `st`, with owners translated.
    fn attr(&self, st: &Stat) -> FileAttr {
        let mut a = to_attr(st);
        if self.opts.dir_nlink == DirNlink::Static && a.kind == FileType::Directory {
            a.nlink = 1;
        }
        let m = &self.opts.idmap;
        if !m.is_identity() {
            a.uid = m.uid_out(st.uid);
            a.gid = m.gid_out(st.gid);
        }
        a
    }

    /// Who creates a new object, in the ids stored on disk.
    fn caller(&self, req: &Request, umask: u32) -> Caller {
        Caller {
            uid: self.opts.idmap.uid_in(req.uid()),
            gid: self.opts.idmap.gid_in(req.gid()),
            umask,
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, r: Result<Stat, Errno>) {
        match r {
            Ok(st) => reply.entry(&self.opts.timeout, &self.attr(&st), Generation(0)),
            Err(Errno::ENOENT) => {
                // A negative entry: the kernel caches the absence.
                let attr = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: UNIX_EPOCH,
                    mtime: UNIX_EPOCH,
                    ctime: UNIX_EPOCH,
                    crtime: UNIX_EPOCH,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 0,
                    flags: 0,
                };
                reply.entry(&self.opts.timeout, &attr, Generation(0))
            }
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn reply_new(&self, reply: ReplyEntry, r: Result<Stat, Errno>) {
        match r {
            Ok(st) => reply.entry(&self.opts.timeout, &self.attr(&st), Generation(0)),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn release_backing(&self, fh: u64) {
        if let Some((_, ino)) = self.pt_handles.remove(&fh) {
            self.backing.remove_if_mut(&ino, |_, b| {
                b.opens = b.opens.saturating_sub(1);
                b.opens == 0
            });
        }
        if let Some((_, ino)) = self.plain_handles.remove(&fh) {
            self.plain_opens.remove_if_mut(&ino, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    /// The listing a READDIR(PLUS) reads: a snapshot by directory. Its
    /// handle is always 0 (`opendir` answers ENOSYS, so no directory is
    /// ever opened) and is not looked at.
    fn listing(&self, ino: INodeNo, offset: u64) -> Result<Listing, Errno> {
        self.ov.readdir_listing(Ino(ino.0), offset)
    }

    /// A READDIRPLUS answer without attributes: each entry as READDIR would
    /// give it (name, inode number, type); the kernel makes no dentries.
    fn names_only(&self, listing: Listing, offset: u64, mut reply: ReplyDirectoryPlus) {
        let mut files = 0;
        for (i, item) in listing.iter().enumerate().skip(offset as usize) {
            let name = OsStr::from_bytes(&item.name);
            let kind = file_type(item.kind);
            if reply.add_name_only(INodeNo(item.ino.0), i as u64 + 1, name, kind) {
                break;
            }
            if item.kind != FileKind::Dir {
                files += 1;
            }
        }
        self.plus.listed(files);
        reply.ok();
    }

    /// Serves handle `fh` of `ino` through the daemon on a passthrough mount.
    fn open_plain(&self, ino: Ino, fh: u64) {
        *self.plain_opens.entry(ino).or_insert(0) += 1;
        self.plain_handles.insert(fh, ino);
    }

    /// Chooses how an open file is served. With passthrough, every open of
    /// an inode shares one backing file; an open that needs a different file
    /// than the shared one (the upper copy while a lower copy is still open)
    /// gets the shared id with DIRECT_IO, so its I/O comes to the daemon,
    /// which serves it from its own fd.
    fn open_mode<'a>(
        &self,
        ino: Ino,
        fh: u64,
        fd: &OwnedFd,
        upper: bool,
        mode: Option<u32>,
        open_backing: impl FnOnce(&OwnedFd) -> io::Result<BackingId> + 'a,
    ) -> Option<(Arc<BackingId>, FopenFlags)> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        // Passed-through writes run with the daemon's credentials, which
        // would keep setuid/setgid bits that a write by the caller must
        // clear: such files are served by the daemon, which sees the flag.
        let mode = mode.or_else(|| crate::sys::fstat(fd.as_fd()).ok().map(|st| st.mode));
        if mode.is_some_and(|m| m & (libc::S_ISUID | libc::S_ISGID) != 0) {
            return None;
        }
        // A lower file of a writable mount may be copied up while open; a
        // backing file would keep serving the lower data to this handle.
        // Through the daemon, its reads follow the copy (as on kernel
        // overlayfs since 4.19), and the writer's opens must stay off
        // passthrough until it is closed.
        if (self.ov.writable() && !upper) || self.plain_opens.contains_key(&ino) {
            self.open_plain(ino, fh);
            return None;
        }
        let r = match self.backing.entry(ino) {
            dashmap::Entry::Occupied(mut o) => {
                let b = o.get_mut();
                b.opens += 1;
                let flags = if b.upper == upper {
                    FopenFlags::empty()
                } else {
                    FopenFlags::FOPEN_DIRECT_IO
                };
                Some((b.id.clone(), flags))
            }
            dashmap::Entry::Vacant(v) => match open_backing(fd) {
                Ok(id) => {
                    let id = Arc::new(id);
                    v.insert(Backing {
                        id: id.clone(),
                        opens: 1,
                        upper,
                    });
                    Some((id, FopenFlags::empty()))
                }
                Err(e) => {
                    warn!("passthrough unavailable ({e}); serving I/O through the daemon");
                    self.passthrough.store(false, Ordering::Relaxed);
                    None
                }
            },
        };
        if r.is_some() {
            self.pt_handles.insert(fh, ino);
        }
        r
    }
}

impl fuser::Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Capabilities are all-or-nothing per call: add them one at a time.
        let wanted = [
            ("parallel dirops", InitFlags::FUSE_PARALLEL_DIROPS),
            ("cache symlinks", InitFlags::FUSE_CACHE_SYMLINKS),
            ("atomic O_TRUNC", InitFlags::FUSE_ATOMIC_O_TRUNC),
            // The kernel caches POSIX ACLs per inode: `ls -l` stops asking
            // for system.posix_acl_access on every file. (The kernel then
            // also checks permissions itself, ACLs included.)
            ("POSIX ACLs", InitFlags::FUSE_POSIX_ACL),
            // The kernel no longer asks for security.capability before every
            // write (one GETXATTR per write otherwise); it flags writes that
            // must clear setuid/setgid instead (see `write`), and files with
            // those bits are never passed through (see `open_mode`).
            ("kill-priv v2", InitFlags::FUSE_HANDLE_KILLPRIV_V2),
        ];
        for (what, flag) in wanted {
            if config.add_capabilities(flag).is_err() {
                info!("kernel does not offer {what}");
            }
        }
        // Listings with attributes save a LOOKUP per entry for ls -l, but
        // read every entry's inode even when the reader (find) only needs
        // names. Both `On` and `Auto` let the kernel choose when to ask
        // (READDIRPLUS_AUTO); `Auto` also decides per request whether the
        // answer carries attributes (plus.rs).
        let plus_flags: &[InitFlags] = match self.opts.readdirplus {
            ReaddirPlus::Off => &[],
            ReaddirPlus::On => &[
                InitFlags::FUSE_DO_READDIRPLUS,
                InitFlags::FUSE_READDIRPLUS_AUTO,
            ],
            ReaddirPlus::Auto => &[
                InitFlags::FUSE_DO_READDIRPLUS,
                InitFlags::FUSE_READDIRPLUS_AUTO,
            ],
        };
        for &flag in plus_flags {
            if config.add_capabilities(flag).is_err() {
                info!("kernel does not offer {flag:?}");
            }
        }
        // Passthrough where allowed (root in the initial user namespace,
        // which `FuseOptions::passthrough` already says) and offered; the
        // writeback cache otherwise, for writable mounts: the kernel refuses
        // passthrough once writeback is negotiated.
        let wants_pt =
            self.passthrough.load(Ordering::Relaxed) && self.opts.writeback != Some(true);
        self.mode = if wants_pt && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            let _ = config.set_max_stack_depth(1);
            CacheMode::Passthrough
        } else {
            if wants_pt {
                info!("kernel does not offer passthrough");
            }
            self.passthrough.store(false, Ordering::Relaxed);
            if self.ov.writable()
                && self.opts.writeback != Some(false)
                && config
                    .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                    .is_ok()
            {
                CacheMode::Writeback
            } else {
                CacheMode::WriteThrough
            }
        };
        self.ov
            .set_kernel_writeback(self.mode == CacheMode::Writeback);
        // Big reads: fewer round trips. The kernel caps the window (its own
        // readahead size); writes are already as big as it allows.
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        // Writes are at most max_pages (256 pages) anyway; a smaller max_write
        // keeps the io_uring entries (each holds the largest request) at 1 MiB.
        let _ = config.set_max_write(1 << 20);
        let uring = self.opts.uring_threads > 0
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
        if self.opts.uring_threads > 0 && !uring {
            info!(
                "kernel does not offer FUSE over io_uring (Linux 6.14+ with \
                 /sys/module/fuse/parameters/enable_uring=Y): requests go through /dev/fuse"
            );
        }
        // Readahead and writeback requests in flight at once (the kernel's
        // default is 12): enough to keep every reader thread busy.
        let _ = config.set_max_background(64);
        let transport = if uring {
            match self.opts.uring_threads {
                1 => "FUSE over io_uring, a thread per CPU".to_string(),
                n => format!("FUSE over io_uring, {n} threads per CPU"),
            }
        } else {
            format!("/dev/fuse, {} threads", self.opts.threads.max(1))
        };
        let connection = format!("{}; requests through {transport}", self.mode);
        info!("{connection}; entry/attr timeout {:?}", self.opts.timeout);
        self.ov.set_connection(connection);
        Ok(())
    }

    fn uring_unused(&self, why: &str) {
        let transport = format!(
            "/dev/fuse, {} threads (io_uring {why})",
            self.opts.threads.max(1)
        );
        self.ov
            .set_connection(format!("{}; requests through {transport}", self.mode));
    }

    fn connection_ended(&self) {
        if let Some(f) = self.disconnect.0.get() {
            f();
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.ov.lookup(Ino(parent.0), name.as_bytes());
        match &r {
            Ok(st) if self.opts.readdirplus == ReaddirPlus::Auto && st.kind() != FileKind::Dir => {
                self.plus.looked_up()
            }
            Err(e) if *e != Errno::ENOENT => debug!("lookup {parent:?}/{name:?}: {e}"),
            _ => {}
        }
        self.reply_entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ov.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ov.getattr_fh(Ino(ino.0), fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&self.opts.timeout, &self.attr(&st)),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ov.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = Ino(ino.0);
        let (fh, fd, upper) = match self.ov.open(ino, flags.0) {
            Ok(x) => x,
            Err(e) => return reply.error(ferr(e)),
        };
        match self.open_mode(ino, fh, &fd, upper, None, |fd| reply.open_backing(fd)) {
            Some((id, flags)) => reply.opened_passthrough(FileHandle(fh), flags, &id),
            None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with_borrow_mut(|buf| match self.ov.read(fh.0, offset, size, buf) {
            Ok(()) => reply.data(buf),
            Err(e) => reply.error(ferr(e)),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Data is written through (or passed through) at write time, so a
        // close has nothing to flush; ENOSYS makes the kernel stop sending
        // FLUSH on every close, one round trip fewer per file.
        reply.error(FErrno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.ov.release(fh.0);
        self.release_backing(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS makes the kernel stop sending OPENDIR and RELEASEDIR (two
        // round trips per directory opened) and open every directory as if
        // we had answered FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE: it keeps the
        // listing in its page cache (every change to a directory goes
        // through this mount, which makes the kernel drop that cache; see
        // also `layerfs refresh`). READDIR then comes with handle 0.
        reply.error(FErrno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.listing(ino, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(ferr(e)),
        };
        for (i, item) in listing.iter().enumerate().skip(offset as usize) {
            let full = reply.add(
                INodeNo(item.ino.0),
                i as u64 + 1,
                file_type(item.kind),
                OsStr::from_bytes(&item.name),
            );
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing(ino, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(ferr(e)),
        };
        let dir = Ino(ino.0);
        let attributes = match self.opts.readdirplus {
            ReaddirPlus::Auto => self.plus.with_attributes(),
            ReaddirPlus::On | ReaddirPlus::Off => true,
        };
        if !attributes {
            return self.names_only(listing, offset, reply);
        }
        for (i, item) in listing.iter().enumerate().skip(offset as usize) {
            let dots = &*item.name == b"." || &*item.name == b"..";
            // The kernel makes no dentry for `.` and `..` and takes no
            // reference on them; every other entry is a lookup.
            let st = if dots {
                match self.ov.getattr(item.ino) {
                    Ok(st) => st,
                    Err(_) => continue,
                }
            } else {
                match self.ov.lookup_listed(dir, item) {
                    Ok(st) => st,
                    // Gone since the listing was taken: leave it out.
                    Err(_) => continue,
                }
            };
            let full = reply.add(
                INodeNo(st.ino),
                i as u64 + 1,
                OsStr::from_bytes(&item.name),
                &self.opts.timeout,
                &self.attr(&st),
                Generation(0),
            );
            if full {
                if !dots {
                    self.ov.forget(Ino(st.ino), 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid: uid.map(|u| self.opts.idmap.uid_in(u)),
            gid: gid.map(|g| self.opts.idmap.gid_in(g)),
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        match self.ov.setattr(Ino(ino.0), a, fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&self.opts.timeout, &self.attr(&st)),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let c = self.caller(req, umask);
        let rdev = libc::makedev(
            (rdev >> 8) & 0xfff,
            (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
        );
        let r = self.ov.mknod(Ino(parent.0), name.as_bytes(), mode, rdev, c);
        self.reply_new(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.ov.mkdir(
            Ino(parent.0),
            name.as_bytes(),
            mode,
            self.caller(req, umask),
        );
        self.reply_new(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.ov.unlink(Ino(parent.0), name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.ov.rmdir(Ino(parent.0), name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.ov.symlink(
            Ino(parent.0),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            self.caller(req, 0),
        );
        self.reply_new(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.ov.rename(
            Ino(parent.0),
            name.as_bytes(),
            Ino(newparent.0),
            newname.as_bytes(),
            flags.bits(),
        );
        reply_empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self
            .ov
            .link(Ino(ino.0), Ino(newparent.0), newname.as_bytes());
        self.reply_new(reply, r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = self.caller(req, umask);
        let (st, fh, fd) = match self
            .ov
            .create(Ino(parent.0), name.as_bytes(), mode, flags, c)
        {
            Ok(x) => x,
            Err(e) => return reply.error(ferr(e)),
        };
        let attr = self.attr(&st);
        let ino = Ino(st.ino);
        match self.open_mode(ino, fh, &fd, true, Some(st.mode), |fd| {
            reply.open_backing(fd)
        }) {
            Some((id, fl)) => reply.created_passthrough(
                &self.opts.timeout,
                &attr,
                Generation(0),
                FileHandle(fh),
                fl,
                &id,
            ),
            None => reply.created(
                &self.opts.timeout,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.ov.write(fh.0, offset, data).and_then(|n| {
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                self.ov.kill_suidgid(fh.0)?;
            }
            Ok(n)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.ov.fsync(fh.0, datasync));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if self.opts.xattrs == XattrSupport::Off {
            return reply.error(FErrno::ENOSYS);
        }
        let r = self.ov.setxattr(Ino(ino.0), name.as_bytes(), value, flags);
        reply_empty(reply, r);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.opts.xattrs == XattrSupport::Off {
            return reply.error(FErrno::ENOSYS);
        }
        reply_empty(reply, self.ov.removexattr(Ino(ino.0), name.as_bytes()));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.ov.fallocate(fh.0, mode, offset, length));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // With the writeback cache, data may still sit in the kernel's page
        // cache (which does not flush before LSEEK): the layer file would
        // show holes where it is. ENOSYS makes the kernel answer from its
        // own size for good (all data, no hole), which is always right.
        if self.mode == CacheMode::Writeback
            && (whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE)
        {
            return reply.error(FErrno::ENOSYS);
        }
        match self.ov.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .ov
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.ov.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.opts.xattrs == XattrSupport::Off {
            return reply.error(FErrno::ENOSYS);
        }
        let mut r = self.ov.getxattr(Ino(ino.0), name.as_bytes());
        // Without SELinux on the host no file can get a label: answer like a
        // filesystem without labels, so that `ls -l` stops asking for one
        // per file (it remembers "unsupported" per device). Labels that
        // exist in a layer are still returned.
        if !self.opts.selinux && r == Err(Errno::ENODATA) && name.as_bytes() == b"security.selinux"
        {
            r = Err(Errno::EOPNOTSUPP);
        }
        reply_xattr(reply, size, r);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.opts.xattrs == XattrSupport::Off {
            return reply.error(FErrno::ENOSYS);
        }
        reply_xattr(reply, size, self.ov.listxattr(Ino(ino.0)));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (ino, mask) = (Ino(ino.0), mask.bits());
        let m = &self.opts.idmap;
        let r = if m.is_identity() {
            self.ov.access(ino, mask, req.uid(), req.gid())
        } else {
            // Checked against the owners the caller sees.
            self.ov.getattr(ino).and_then(|st| {
                if mask & libc::W_OK != 0 && !self.ov.writable() {
                    return Err(Errno::EROFS);
                }
                let shown = Stat {
                    uid: m.uid_out(st.uid),
                    gid: m.gid_out(st.gid),
                    ..st
                };
                match may_access(&shown, mask, req.uid(), req.gid()) {
                    true => Ok(()),
                    false => Err(Errno::EACCES),
                }
            })
        };
        reply_empty(reply, r);
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(ferr(e)),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => SetTime::At(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let (sec, nsec) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (
                        -(d.as_secs() as i64) - 1,
                        1_000_000_000 - d.subsec_nanos() as i64,
                    )
                };
                Timespec { sec, nsec }
            }
        }),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(FErrno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(ferr(e)),
    }
}

/// What the kernel was told to forget by [`KernelCache::invalidate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Invalidated {
    pub inodes: usize,
    pub entries: usize,
    /// Notifications about something the kernel no longer caches (ENOENT),
    /// or refused.
    pub not_cached: usize,
}

/// Tells the kernel to drop what it caches of a mount: entries (positive and
/// negative), attributes, file data and directory listings, all cached for
/// long because the layers are not expected to change.
///
/// Never call it from a thread that serves FUSE requests: the kernel takes
/// the directory's lock for an entry invalidation, which a request in that
/// directory may hold while it waits for the reply.
pub struct KernelCache(fuser::Notifier);

impl KernelCache {
    pub fn new(n: fuser::Notifier) -> KernelCache {
        KernelCache(n)
    }

    /// Invalidates every name and inode of `r` (names first, so that a
    /// directory's new listing is read once its entries are gone).
    pub fn invalidate(&self, r: &Refreshed) -> Invalidated {
        let mut out = Invalidated::default();
        for (parent, name) in &r.names {
            match self
                .0
                .inval_entry(INodeNo(parent.0), OsStr::from_bytes(name))
            {
                Ok(()) => out.entries += 1,
                Err(_) => out.not_cached += 1,
            }
        }
        for ino in &r.inodes {
            // Offset 0, length 0: attributes and every cached page.
            match self.0.inval_inode(INodeNo(ino.0), 0, 0) {
                Ok(()) => out.inodes += 1,
                Err(_) => out.not_cached += 1,
            }
        }
        debug!("kernel caches invalidated: {out:?}");
        out
    }
}

/// How the mount appears in the system.
#[derive(Clone, Debug)]
pub struct MountSpec {
    pub mount_options: Vec<MountOption>,
    pub allow_other: bool,
    pub allow_root: bool,
}

/// Mounts `fs` on `mountpoint` and answers the kernel's INIT; when this
/// returns `Ok`, the mount is live (requests wait until [`Session::run`]
/// serves them). Starts no thread, so the caller may still fork: the
/// pruner comes from [`start_pruner`].
pub fn mount(fs: LayerFs, mountpoint: &Path, spec: &MountSpec) -> io::Result<Session<LayerFs>> {
    let threads = fs.opts.threads.max(1);
    let mut config = Config::default();
    config.mount_options = spec.mount_options.clone();
    config.acl = if spec.allow_other {
        SessionACL::All
    } else if spec.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(threads);
    config.clone_fd = threads > 1;
    config.uring_threads_per_queue = Some(fs.opts.uring_threads);
    Session::new(fs, mountpoint, &config)
}

/// Starts the pruner thread of `session` when `limit` bounds the node table.
/// Best effort: without it the mount works, unbounded.
pub fn start_pruner(session: &Session<LayerFs>, ov: &Arc<Overlay>, limit: NodeLimit) {
    if limit.is_bounded() {
        let r = session.as_fd().try_clone_to_owned();
        if let Err(e) = r.and_then(|dev| prune::spawn(ov, dev, limit)) {
            warn!("cannot start the pruner ({e}): max_inodes is not enforced");
        }
    }
}
