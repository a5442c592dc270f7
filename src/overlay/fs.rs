//! The merged filesystem: inode table, lookups across layers, cached merged
//! listings, reads, and extended attributes.
//!
//! Owns: the node table (merged inode -> where it lives), the cache of
//! per-layer directory fds, the cache of merged listings, and open handles.
//! Does not own: FUSE types or replies (see `crate::fuse`), option parsing.
//!
//! Invariants:
//! - a node's `refs` counts the kernel's lookups plus one per child node, so a
//!   parent outlives its children and every node can rebuild its fds;
//! - a directory node's `layers` are the layers merged into it, top first; a
//!   non-directory node has one, the layer serving it, or two for a
//!   metadata-only copy (kernel overlayfs's metacopy): the layer of its
//!   metadata, then the layer of its data;
//! - every access to a layer goes through an fd relative to that layer's root,
//!   one path component at a time with `O_NOFOLLOW`: nothing resolves a
//!   symlink inside a layer;
//! - no map guard or cache lock is held across a system call that can block.
//! - a node's `used` stamp is refreshed whenever an operation reads the node;
//!   above `max_inodes` nodes, the least recently used are offered to the
//!   kernel for forgetting (see `prune.rs`); nothing but FORGET frees one.
//!
//! Lock order: `nodes` shard guards are leaves (never held while taking any
//! other lock); `dirfds`, `listings` and `readdir_snapshots` mutexes are
//! leaves too.

use std::ffi::{CStr, CString, OsStr};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use log::debug;
use lru::LruCache;

use super::layers::Stack;
use super::prune::{self, NodeLimit, Picker};
use super::rules::{
    self, DirFacts, EntryKind, LayerEntry, OPAQUE_MARKER, OPAQUE_XATTRS, Place, Probe,
    REDIRECT_XATTRS, Redirect,
};
use super::types::{CompactLayers, CompactName, Ino, LayerIdx};
use crate::sys::{self, Errno, FileKind, Stat, StatFs, SysResult};

/// Directory fds kept open (per layer) for lookups without path walks.
const DIRFD_CACHE: usize = 8192;
/// Entries of merged listings kept in memory, over all directories (about
/// 64 bytes each). A walk lists each directory once, so a bigger cache
/// mostly costs memory.
const LISTING_CACHE_ENTRIES: usize = 64 * 1024;

/// Directories read at once without an open handle (see `readdir_listing`).
const READDIR_SNAPSHOTS: usize = 64;

/// Prefixes of extended attributes that belong to the overlay machinery and
/// are never shown through the mount.
const HIDDEN_XATTR_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.layerfs.",
    b"trusted.layerfs.",
];

/// True for an xattr name that belongs to the overlay machinery.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    HIDDEN_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Another name of a hard link: parent directory and name.
pub(super) type Alias = (Ino, Box<[u8]>);

#[derive(Debug)]
pub(super) struct Node {
    /// The name operations use; for a hard link, one of its names.
    pub(super) parent: Ino,
    pub(super) name: CompactName,
    /// The other names of a hard link seen through the mount (each, like the
    /// main name, holds a reference on its parent). Usually `None`.
    // Boxed so that the common case (no other name) costs one pointer.
    #[allow(clippy::box_collection)]
    pub(super) aliases: Option<Box<Vec<Alias>>>,
    pub(super) kind: FileKind,
    pub(super) layers: CompactLayers,
    /// For a directory found through redirects: its place in the layers
    /// below each one (see [`rules::place_in`]). Usually `None`.
    pub(super) redirects: Option<Box<[Redirect]>>,
    pub(super) refs: u64,
    /// When it was last used, on [`Overlay`]'s use clock (for pruning).
    pub(super) used: AtomicU32,
}

impl Node {
    fn has_name(&self, parent: Ino, name: &[u8]) -> bool {
        (self.parent == parent && *self.name == *name)
            || self
                .aliases
                .as_ref()
                .is_some_and(|a| a.iter().any(|(p, n)| *p == parent && **n == *name))
    }
}

/// A copy of a node's fields, taken so that no guard is held afterwards.
pub(super) struct NodeInfo {
    pub(super) parent: Ino,
    pub(super) name: Box<[u8]>,
    pub(super) kind: FileKind,
    pub(super) layers: Box<[LayerIdx]>,
    pub(super) redirects: Option<Box<[Redirect]>>,
}

impl NodeInfo {
    pub(super) fn top(&self) -> LayerIdx {
        self.layers.first().copied().unwrap_or(LayerIdx(0))
    }
    /// A metadata-only copy: a file whose metadata is in its top layer and
    /// its data in the last one.
    pub(super) fn is_metacopy(&self) -> bool {
        self.kind != FileKind::Dir && self.layers.len() > 1
    }
    /// The layer holding a file's data.
    pub(super) fn data_layer(&self) -> LayerIdx {
        match self.kind {
            FileKind::Dir => self.top(),
            _ => self.layers.last().copied().unwrap_or(LayerIdx(0)),
        }
    }
}

/// One entry of a merged listing, as readdir returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    /// Inline for most names: a cached listing costs one allocation.
    pub name: CompactName,
    pub ino: Ino,
    pub kind: FileKind,
    /// The layer that served it when the listing was read.
    pub layer: LayerIdx,
}

/// A snapshot listing of a directory: offsets index into it, so a listing
/// read in chunks never repeats or skips a name.
pub type Listing = Arc<Vec<DirItem>>;

/// An open file. (Directories are never opened: the FUSE adapter answers
/// OPENDIR with ENOSYS, see `readdir_listing`.)
#[derive(Debug)]
pub struct Handle {
    pub(super) ino: Ino,
    pub(super) fd: Arc<OwnedFd>,
    /// The fd is the upper-layer file (not a lower one opened read-only).
    pub(super) upper: bool,
    /// For a lower fd: the upper copy, opened read-only once the file
    /// was copied up, which the handle then reads instead.
    copied: OnceLock<Arc<OwnedFd>>,
}

/// Where a node lives: an fd of its parent directory in the serving layer and
/// its name there (empty for a layer root, in which case `fd` is the node).
pub(super) struct Loc {
    pub(super) fd: Arc<OwnedFd>,
    pub(super) name: CString,
}

impl Loc {
    /// Its stat; a whiteout found there means the name is gone.
    pub(super) fn stat(&self) -> SysResult<Stat> {
        match sys::fstatat(self.fd.as_fd(), &self.name)? {
            st if st.is_whiteout() => Err(Errno::ENOENT),
            st => Ok(st),
        }
    }
}

/// Merged listings by directory, bounded by their total number of entries.
struct ListingCache {
    lru: LruCache<Ino, Listing>,
    entries: usize,
}

impl ListingCache {
    fn get(&mut self, ino: Ino) -> Option<Listing> {
        self.lru.get(&ino).cloned()
    }

    fn put(&mut self, ino: Ino, l: Listing) {
        self.entries += l.len();
        if let Some(old) = self.lru.put(ino, l) {
            self.entries -= old.len();
        }
        while self.entries > LISTING_CACHE_ENTRIES && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => self.entries -= old.len(),
                None => break,
            }
        }
    }

    fn pop(&mut self, ino: Ino) {
        if let Some(old) = self.lru.pop(&ino) {
            self.entries -= old.len();
        }
    }
}

/// The merged view of a stack of layers.
pub struct Overlay {
    pub(super) stack: Stack,
    /// Boxed: the table keeps about twice as many slots as nodes (removals
    /// leave tombstones until it is rebuilt), and a slot of a pointer costs
    /// a sixth of a slot of a node.
    pub(super) nodes: DashMap<Ino, Box<Node>>,
    dirfds: Mutex<LruCache<(Ino, LayerIdx), Arc<OwnedFd>>>,
    listings: Mutex<ListingCache>,
    /// For READDIR without an open handle (the kernel skips OPENDIR): the
    /// listing a read from offset 0 took, so that its later chunks index the
    /// same snapshot. A few directories at once are read this way.
    readdir_snapshots: Mutex<LruCache<Ino, Listing>>,
    pub(super) handles: DashMap<u64, Arc<Handle>>,
    next_fh: AtomicU64,
    /// Upper-layer inode number -> the merged inode it was copied up for, so
    /// that a file keeps its inode number across copy-up.
    pub(super) origins: DashMap<u64, Ino>,
    /// Last attributes of files whose every name was removed while the
    /// kernel still holds them (open descriptors), until forgotten.
    orphans: DashMap<Ino, Stat>,
    /// The kernel caches writes (FUSE writeback cache): it reads pages of
    /// files opened write-only and places appends itself.
    kernel_writeback: AtomicBool,
    /// How the kernel talks to this mount, in words, for `layerfs stats`
    /// (set by the FUSE adapter when the kernel connects, and again if the
    /// io_uring queues it agreed to end up unused).
    connection: Mutex<Option<String>>,
    /// The writable side; `None` for a read-only mount.
    pub(super) upper: Option<super::write::Upper>,
    /// Counters for `layerfs stats` (see `stats.rs`).
    pub(super) counters: super::stats::Counters,
    /// The copy-on-write event sink, when tracing (see `trace.rs`).
    pub(super) tracer: std::sync::OnceLock<super::trace::Tracer>,
    /// Bounding the node table (see `prune.rs`).
    pruning: Pruning,
    /// Whether lookups follow `overlay.redirect` (`redirect_dir=nofollow`
    /// does not).
    follow_redirects: bool,
}

/// The state of node-table pruning.
#[derive(Default)]
struct Pruning {
    /// `max_inodes`; 0 until a pruner is attached.
    limit: AtomicUsize,
    /// Nodes in the table (`DashMap::len` would lock every shard).
    live: AtomicUsize,
    /// The most nodes the table held at once.
    peak: AtomicUsize,
    /// The use clock: ticks once per node created.
    clock: AtomicU32,
    /// Set when the table outgrew the limit and the pruner was woken; the
    /// pruner clears it when it starts a pass.
    wanted: AtomicBool,
    /// The thread that asks the kernel to forget inodes.
    pruner: OnceLock<std::thread::Thread>,
}

/// The found object of a name lookup, before the kernel is told about it.
pub(super) struct Found {
    pub(super) ino: Ino,
    pub(super) stat: Stat,
    /// The serving layer's own inode number (`stat.ino` is the merged one).
    pub(super) real_ino: u64,
    pub(super) layers: Box<[LayerIdx]>,
    pub(super) redirects: Option<Box<[Redirect]>>,
}

impl Found {
    pub(super) fn in_upper(&self) -> bool {
        self.layers.first() == Some(&LayerIdx(0))
    }
    pub(super) fn is_dir(&self) -> bool {
        self.stat.kind() == FileKind::Dir
    }
}

impl Overlay {
    /// Builds the merged view; a writable stack also gets its work directory
    /// cleaned and its whiteout and xattr encodings chosen.
    pub fn new(stack: Stack, opts: super::write::UpperOptions) -> SysResult<Overlay> {
        let upper = if stack.writable() {
            Some(super::write::Upper::prepare(&stack, opts)?)
        } else {
            None
        };
        let nodes = DashMap::new();
        nodes.insert(
            Ino::ROOT,
            Box::new(Node {
                parent: Ino::ROOT,
                name: CompactName::from(&b""[..]),
                aliases: None,
                kind: FileKind::Dir,
                layers: CompactLayers::from(&stack.all()[..]),
                redirects: None,
                refs: 1,
                used: AtomicU32::new(0),
            }),
        );
        let cap = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Ok(Overlay {
            stack,
            nodes,
            dirfds: Mutex::new(LruCache::new(cap(DIRFD_CACHE))),
            listings: Mutex::new(ListingCache {
                lru: LruCache::unbounded(),
                entries: 0,
            }),
            readdir_snapshots: Mutex::new(LruCache::new(cap(READDIR_SNAPSHOTS))),
            handles: DashMap::new(),
            next_fh: AtomicU64::new(1),
            origins: DashMap::new(),
            orphans: DashMap::new(),
            kernel_writeback: AtomicBool::new(false),
            connection: Mutex::new(None),
            upper,
            counters: Default::default(),
            tracer: std::sync::OnceLock::new(),
            pruning: Pruning {
                live: AtomicUsize::new(1),
                peak: AtomicUsize::new(1),
                ..Default::default()
            },
            follow_redirects: opts.redirect_dir.follows(),
        })
    }

    /// Bounds the node table to `limit` nodes: once it holds more, thread
    /// `pruner` is woken (unparked) to call [`Overlay::prune_candidates`]
    /// and ask the kernel to forget them. Only the first call counts.
    pub fn set_pruner(&self, limit: NodeLimit, pruner: std::thread::Thread) {
        if self.pruning.pruner.set(pruner).is_ok() {
            self.pruning.limit.store(limit.0, Ordering::Relaxed);
        }
    }

    /// Stops waking the pruner (the kernel cannot prune).
    pub fn stop_pruning(&self) {
        self.pruning.limit.store(0, Ordering::Relaxed);
    }

    fn node_limit(&self) -> NodeLimit {
        NodeLimit(self.pruning.limit.load(Ordering::Relaxed))
    }

    /// Counts a new node; wakes the pruner when the table is over its limit.
    fn node_added(&self) {
        let live = self.pruning.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.pruning.peak.fetch_max(live, Ordering::Relaxed);
        if self.node_limit().exceeded(live)
            && !self.pruning.wanted.swap(true, Ordering::Relaxed)
            && let Some(t) = self.pruning.pruner.get()
        {
            t.unpark();
        }
    }

    /// The nodes to ask the kernel to forget now, least recently used
    /// first; empty while the table is within its limit. Called by the
    /// pruner thread. The picked nodes count as used: one the kernel keeps
    /// (in use) goes to the back of the line.
    pub fn prune_candidates(&self) -> Vec<Ino> {
        self.pruning.wanted.store(false, Ordering::Relaxed);
        let want = self.node_limit().excess(self.nodes.len());
        if want == 0 {
            return Vec::new();
        }
        let open: std::collections::HashSet<Ino> =
            self.handles.iter().map(|h| h.value().ino).collect();
        let now = self.pruning.clock.load(Ordering::Relaxed);
        let mut picker = Picker::new(want);
        for n in self.nodes.iter() {
            let age = prune::age(now, n.used.load(Ordering::Relaxed));
            picker.offer(*n.key(), age, open.contains(n.key()));
        }
        let picked = picker.finish();
        debug!(
            "prune: {} nodes, table capacity {}, picked {}",
            self.nodes.len(),
            self.nodes.capacity(),
            picked.len()
        );
        for ino in &picked {
            if let Some(n) = self.nodes.get(ino) {
                n.used.store(now, Ordering::Relaxed);
            }
        }
        self.counters
            .prune_requests
            .fetch_add(picked.len() as u64, Ordering::Relaxed);
        picked
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Tells the overlay that the kernel caches writes (decided when the
    /// kernel connects, before any open).
    pub fn set_kernel_writeback(&self, on: bool) {
        self.kernel_writeback.store(on, Ordering::Relaxed);
    }

    /// Records how the kernel talks to the mount (cache mode, request
    /// transport), shown by `layerfs stats`; the last call wins (the
    /// transport can change once after INIT, see `uring_unused`).
    pub fn set_connection(&self, words: String) {
        if let Ok(mut c) = self.connection.lock() {
            *c = Some(words);
        }
    }

    pub(super) fn connection(&self) -> Option<String> {
        self.connection.lock().ok().and_then(|c| c.clone())
    }

    /// The flags a layer file is opened with for an open with `flags`. With
    /// the writeback cache the kernel reads pages of a file opened
    /// write-only (to fill a partly written page) and decides where an
    /// append goes (from the size it knows; a layer file opened O_APPEND
    /// would put every write at its own end instead of that offset).
    ///
    /// O_DIRECT never reaches a layer file: the kernel already bypasses the
    /// mount's page cache for it, and on the layer file it would fail every
    /// request through the daemon (whose buffers are not aligned) and, on a
    /// passthrough backing file shared by all opens of an inode, the
    /// buffered reads of the other opens.
    pub(super) fn layer_open_flags(&self, flags: i32) -> i32 {
        let flags = flags & !libc::O_DIRECT;
        if !self.kernel_writeback.load(Ordering::Relaxed) {
            return flags;
        }
        let mut f = flags & !libc::O_APPEND;
        if f & libc::O_ACCMODE == libc::O_WRONLY {
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        f
    }

    pub fn writable(&self) -> bool {
        self.upper.is_some()
    }

    /// Number of inodes currently known (for tests and statistics).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The most inodes known at once since the mount.
    pub fn node_peak(&self) -> usize {
        self.pruning.peak.load(Ordering::Relaxed)
    }

    /// Entries in the directory-fd cache and the merged-listing cache.
    pub(super) fn cache_sizes(&self) -> (usize, usize) {
        let fds = self.lock_dirfds().len();
        (fds, self.lock_listings().entries)
    }

    /// The merged path of `ino`, built from the node table (best effort: a
    /// node whose parent is gone shows as `/?/name`). No guard is held
    /// across two lookups.
    pub(super) fn merged_path(&self, ino: Ino) -> Vec<u8> {
        let mut names: Vec<Box<[u8]>> = Vec::new();
        let mut cur = ino;
        // Bounded: a cycle cannot exist, but a bound costs nothing.
        for _ in 0..4096 {
            if cur == Ino::ROOT {
                break;
            }
            let next = self.nodes.get(&cur).map(|n| (n.name.to_boxed(), n.parent));
            match next {
                Some((name, parent)) => {
                    names.push(name);
                    cur = parent;
                }
                None => {
                    names.push((*b"?").into());
                    break;
                }
            }
        }
        if names.is_empty() {
            return b"/".to_vec();
        }
        let mut out = Vec::new();
        for n in names.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(n);
        }
        out
    }

    pub(super) fn layer_root(&self, layer: LayerIdx) -> SysResult<Arc<OwnedFd>> {
        self.stack
            .layer(layer)
            .map(|l| l.root.clone())
            .ok_or(Errno::EIO)
    }

    pub(super) fn map_ino(&self, layer: LayerIdx, real: u64) -> Ino {
        if layer == LayerIdx(0)
            && self.upper.is_some()
            && let Some(o) = self.origins.get(&real)
        {
            return *o;
        }
        let fs = self.stack.layer(layer).map(|l| l.fs).unwrap_or(0);
        self.stack.inos.map(fs, real)
    }

    /// Learns, from the xattr a copy-up wrote, which merged inode number the
    /// upper file `name` (inode `real`) had before a remount, so that st_ino
    /// stays the same across copy-up and remount (kernel overlayfs keeps it
    /// with its origin xattr). Files without one map to themselves; the
    /// answer is remembered either way.
    pub(super) fn load_origin(&self, dirfd: &OwnedFd, name: &CStr, real: u64) {
        let Some(up) = &self.upper else { return };
        if self.origins.contains_key(&real) {
            return;
        }
        let origin = sys::getxattr_at(dirfd.as_fd(), name, up.origin_xattr())
            .ok()
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
            .filter(|&o| o > 1)
            .map(Ino);
        let fs = self.stack.layer(LayerIdx(0)).map(|l| l.fs).unwrap_or(0);
        let ino = origin.unwrap_or_else(|| self.stack.inos.map(fs, real));
        self.origins.insert(real, ino);
    }

    /// Copies out what an operation needs of a node, releasing the guard.
    pub(super) fn node_info(&self, ino: Ino) -> SysResult<NodeInfo> {
        let n = self.nodes.get(&ino).ok_or(Errno::ESTALE)?;
        n.used.store(
            self.pruning.clock.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Ok(NodeInfo {
            parent: n.parent,
            name: n.name.to_boxed(),
            kind: n.kind,
            layers: n.layers.to_boxed(),
            redirects: n.redirects.clone(),
        })
    }

    /// An `O_PATH` fd of directory `ino` in `layer`, from the cache or opened
    /// relative to its parent's fd in the same layer.
    pub(super) fn dir_fd(&self, ino: Ino, layer: LayerIdx) -> SysResult<Arc<OwnedFd>> {
        if ino == Ino::ROOT {
            return self.layer_root(layer);
        }
        if let Some(fd) = self.lock_dirfds().get(&(ino, layer)) {
            return Ok(fd.clone());
        }
        let info = self.node_info(ino)?;
        let place = info
            .redirects
            .as_deref()
            .and_then(|r| rules::place_in(r, layer));
        let fd = match place {
            Some(Place::Abs(path)) => match self.walk_abs(layer, path)? {
                Walk::At(pfd, name, _) => Arc::new(open_dir_path(&pfd, &name)?),
                Walk::Missing | Walk::Stop => return Err(Errno::ENOENT),
            },
            Some(Place::Name(n)) => {
                let pfd = self.dir_fd(info.parent, layer)?;
                Arc::new(open_dir_path(&pfd, &sys::cstr(OsStr::from_bytes(n))?)?)
            }
            None => {
                let pfd = self.dir_fd(info.parent, layer)?;
                Arc::new(open_dir_path(
                    &pfd,
                    &sys::cstr(OsStr::from_bytes(&info.name))?,
                )?)
            }
        };
        self.lock_dirfds().put((ino, layer), fd.clone());
        Ok(fd)
    }

    /// Walks absolute place `path` in `layer` down to its last component, as
    /// kernel overlayfs follows an absolute redirect: a whiteout or a
    /// non-directory on the way stops the merge, a missing component means
    /// this layer has nothing there. A redirect met on the way moves the
    /// place for the layers below (returned with `At`).
    fn walk_abs(&self, layer: LayerIdx, path: &[u8]) -> SysResult<Walk> {
        let bottom = self.stack.len() as u16 <= layer.0 + 1;
        let mut fd = self.layer_root(layer)?;
        let mut next: Option<Place> = None;
        let comps: Vec<&[u8]> = rules::abs_components(path).collect();
        let mut end = 0;
        for (i, c) in comps.iter().enumerate() {
            let cname = sys::cstr(OsStr::from_bytes(c))?;
            end += 1 + c.len();
            if i + 1 == comps.len() {
                return Ok(Walk::At(fd, cname, next));
            }
            let sub = match open_dir_path(&fd, &cname) {
                Ok(d) => d,
                Err(Errno::ENOENT) => {
                    let mut wh = rules::WH_PREFIX.to_vec();
                    wh.extend_from_slice(c);
                    return match sys::fstatat(fd.as_fd(), &sys::cstr(OsStr::from_bytes(&wh))?) {
                        Ok(_) => Ok(Walk::Stop),
                        Err(_) => Ok(Walk::Missing),
                    };
                }
                Err(e) if e == Errno::ENOTDIR || e.0 == libc::ELOOP => return Ok(Walk::Stop),
                Err(e) => return Err(e),
            };
            if !bottom
                && self.follow_redirects
                && let Some(r) = read_redirect(sub.as_fd(), c".")?
            {
                let cur = next.as_ref().map(|p| p.as_bytes()).unwrap_or(path);
                // Count the end from the back: the prefix may have changed.
                let at = cur.len() - (path.len() - end);
                next = Some(rules::follow_within(cur, at, r));
            }
            fd = Arc::new(sub);
        }
        Err(Errno::EIO)
    }

    fn lock_dirfds(&self) -> std::sync::MutexGuard<'_, LruCache<(Ino, LayerIdx), Arc<OwnedFd>>> {
        // A panic while holding this lock cannot leave the cache inconsistent.
        self.dirfds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_listings(&self) -> std::sync::MutexGuard<'_, ListingCache> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where node `ino` lives in its serving layer.
    pub(super) fn loc(&self, ino: Ino) -> SysResult<Loc> {
        let info = self.node_info(ino)?;
        self.loc_of(ino, &info)
    }

    /// Like [`Overlay::loc`], from a node copy the caller already holds.
    fn loc_of(&self, ino: Ino, info: &NodeInfo) -> SysResult<Loc> {
        let top = info.top();
        if ino == Ino::ROOT {
            return Ok(Loc {
                fd: self.layer_root(top)?,
                name: CString::default(),
            });
        }
        Ok(Loc {
            fd: self.dir_fd(info.parent, top)?,
            name: sys::cstr(OsStr::from_bytes(&info.name))?,
        })
    }

    /// Whether directory `name` in layer directory `dirfd` is opaque, and
    /// where the layers below continue if it was renamed (its redirect).
    pub(super) fn dir_facts(&self, dirfd: &OwnedFd, name: &CStr) -> SysResult<DirFacts> {
        let names = match sys::listxattr_at(dirfd.as_fd(), name) {
            Ok(n) => n,
            Err(e) if e.0 == libc::EOPNOTSUPP => Vec::new(),
            Err(e) => return Err(e),
        };
        let has = |x: &CStr| names.split(|&b| b == 0).any(|n| n == x.to_bytes());
        let mut facts = DirFacts::default();
        for x in OPAQUE_XATTRS.iter().filter(|x| has(x)) {
            if xattr_value(dirfd.as_fd(), name, x)?.is_some_and(|v| v == b"y") {
                facts.opaque = true;
                return Ok(facts);
            }
        }
        if REDIRECT_XATTRS.iter().any(|x| has(x)) {
            if !self.follow_redirects {
                // As kernel overlayfs with redirect_dir=nofollow: a renamed
                // directory is not merged with what is at its new name below.
                log::warn!(
                    "refusing to follow the redirect of {}",
                    sys::proc_fd_path(dirfd.as_fd(), Some(name)).to_string_lossy()
                );
                return Err(Errno::EPERM);
            }
            facts.redirect = read_redirect(dirfd.as_fd(), name)?;
        }
        facts.opaque = self.has_opaque_marker(dirfd, name)?;
        Ok(facts)
    }

    /// Whether directory `name` in layer directory `dirfd` holds the OCI
    /// opaque marker file.
    fn has_opaque_marker(&self, dirfd: &OwnedFd, name: &CStr) -> SysResult<bool> {
        let dir = sys::openat(
            dirfd.as_fd(),
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        let marker = sys::cstr(OsStr::from_bytes(OPAQUE_MARKER))?;
        match sys::fstatat(dir.as_fd(), &marker) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Looks up `name` in directory `parent`; on success the kernel holds one
    /// more reference to the returned inode.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> SysResult<Stat> {
        self.counters.lookup();
        rules::check_name(name)?;
        if rules::is_reserved_name(name) {
            return Err(Errno::ENOENT);
        }
        let mut found = self.resolve_name(parent, name)?.ok_or(Errno::ENOENT)?;
        if self.upper.is_some() && !found.is_dir() && !found.in_upper() {
            self.link_up_alias(parent, name, &mut found);
        }
        let kind = found.stat.kind();
        self.remember(
            found.ino,
            parent,
            name,
            kind,
            &found.layers,
            found.redirects,
        );
        Ok(found.stat)
    }

    /// Looks up an entry of `dir`'s listing for READDIRPLUS; like
    /// [`Overlay::lookup`], the kernel then holds one more reference.
    ///
    /// On a read-only mount the listing already says which layer serves
    /// the name and that nothing above hides it, so only that layer (and,
    /// for a directory, the layers below it) is asked.
    pub fn lookup_listed(&self, dir: Ino, item: &DirItem) -> SysResult<Stat> {
        if self.upper.is_some() {
            return self.lookup(dir, &item.name);
        }
        self.counters.lookup();
        let layers = self.node_info(dir)?.layers;
        let from = layers
            .iter()
            .position(|l| *l == item.layer)
            .ok_or(Errno::ESTALE)?;
        let found = self
            .resolve_in(dir, &layers[from..], &item.name)?
            .ok_or(Errno::ENOENT)?;
        let kind = found.stat.kind();
        self.remember(
            found.ino,
            dir,
            &item.name,
            kind,
            &found.layers,
            found.redirects,
        );
        Ok(found.stat)
    }

    /// Resolves `name` in `parent` across the parent's layers, without
    /// recording anything. The returned stat carries the merged inode number.
    pub(super) fn resolve_name(&self, parent: Ino, name: &[u8]) -> SysResult<Option<Found>> {
        let pinfo = self.node_info(parent)?;
        if pinfo.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        self.resolve_in(parent, &pinfo.layers, name)
    }

    /// Resolves `name` in directory `parent`, looking only at `layers`.
    pub(super) fn resolve_in(
        &self,
        parent: Ino,
        layers: &[LayerIdx],
        name: &[u8],
    ) -> SysResult<Option<Found>> {
        // The top layer's object: its stat, and where it is (for its origin).
        let mut top: Option<(Stat, Arc<OwnedFd>, CString)> = None;
        // Where the last probe found its object, for `facts` to look at.
        let last: std::cell::RefCell<Option<(Arc<OwnedFd>, CString)>> = Default::default();
        let all = self.stack.all();
        let resolved = rules::resolve(
            layers,
            &all,
            name,
            |layer, place| {
                let (fd, cname, next) = match place {
                    Place::Name(n) => (
                        self.dir_fd(parent, layer)?,
                        sys::cstr(OsStr::from_bytes(n))?,
                        None,
                    ),
                    Place::Abs(p) => match self.walk_abs(layer, p)? {
                        Walk::At(fd, cname, next) => (fd, cname, next),
                        Walk::Missing => return Ok((Probe::Missing, None)),
                        Walk::Stop => return Ok((Probe::Whiteout, None)),
                    },
                };
                let p = match sys::fstatat(fd.as_fd(), &cname) {
                    Ok(st) if st.is_whiteout() => Probe::Whiteout,
                    Ok(st) => {
                        let kind = st.kind();
                        if top.is_none() {
                            top = Some((st, fd.clone(), cname.clone()));
                        }
                        if kind == FileKind::Dir {
                            Probe::Dir
                        } else {
                            Probe::NonDir
                        }
                    }
                    Err(Errno::ENOENT) => match sys::fstatat(fd.as_fd(), &wh_cname(&cname)?) {
                        Ok(_) => Probe::Whiteout,
                        Err(Errno::ENOENT | Errno::ENAMETOOLONG) => Probe::Missing,
                        Err(e) => return Err(e),
                    },
                    Err(e) => return Err(e),
                };
                *last.borrow_mut() = Some((fd, cname));
                Ok((p, next))
            },
            |_, _| {
                let Some((fd, cname)) = last.borrow().clone() else {
                    return Err(Errno::EIO);
                };
                // A `.wh.NAME` beside a directory NAME hides the layers below
                // it, like an opaque marker.
                match sys::fstatat(fd.as_fd(), &wh_cname(&cname)?) {
                    Ok(_) => {
                        return Ok(DirFacts {
                            opaque: true,
                            redirect: None,
                        });
                    }
                    Err(Errno::ENOENT | Errno::ENAMETOOLONG) => {}
                    Err(e) => return Err(e),
                }
                self.dir_facts(&fd, &cname)
            },
        )?;
        let Some(resolved) = resolved else {
            return Ok(None);
        };
        let (mut st, top_fd, top_name) = top.ok_or(Errno::EIO)?;
        let real_ino = st.ino;
        if resolved.top == LayerIdx(0) && self.upper.is_some() {
            self.load_origin(&top_fd, &top_name, st.ino);
            self.adjust_nlink(&mut st, top_fd.as_fd(), &top_name);
        }
        let ino = self.map_ino(resolved.top, st.ino);
        st.ino = ino.0;
        let layers: Box<[LayerIdx]> = if resolved.is_dir {
            resolved.dirs.into_boxed_slice()
        } else {
            match self.metacopy_data(parent, layers, resolved.top, &top_fd, &top_name, &st)? {
                Some((data, blocks)) => {
                    st.blocks = blocks;
                    Box::new([resolved.top, data])
                }
                None => Box::new([resolved.top]),
            }
        };
        if resolved.is_dir && layers.len() > 1 {
            st.nlink = 1;
        }
        let redirects = match resolved.redirects.is_empty() {
            true => None,
            false => Some(resolved.redirects.into_boxed_slice()),
        };
        Ok(Some(Found {
            ino,
            stat: st,
            real_ino,
            layers,
            redirects,
        }))
    }

    /// For a metadata-only copy found in layer `top` (`st` is its stat): the
    /// layer below holding its data, and that data's block count. A copy
    /// whose data is nowhere below is EIO, as on the kernel.
    fn metacopy_data(
        &self,
        parent: Ino,
        layers: &[LayerIdx],
        top: LayerIdx,
        fd: &OwnedFd,
        name: &CStr,
        st: &Stat,
    ) -> SysResult<Option<(LayerIdx, u64)>> {
        // Only a file with a size and layers below it can be one. (Its
        // block count says nothing: xattrs may take a block of their own.)
        if st.kind() != FileKind::Regular || st.size == 0 {
            return Ok(None);
        }
        let Some(pos) = layers.iter().position(|l| *l == top) else {
            return Ok(None);
        };
        if pos + 1 >= layers.len() {
            return Ok(None);
        }
        let names = match sys::listxattr_at(fd.as_fd(), name) {
            Ok(n) => n,
            Err(e) if e.0 == libc::EOPNOTSUPP => return Ok(None),
            Err(e) => return Err(e),
        };
        let marked = names
            .split(|&b| b == 0)
            .any(|n| rules::METACOPY_XATTRS.iter().any(|x| x.to_bytes() == n));
        if !marked {
            return Ok(None);
        }
        let below = &layers[pos + 1..];
        let found = self.resolve_in(parent, below, name.to_bytes())?;
        match found {
            Some(f) if f.stat.kind() == FileKind::Regular => {
                let data = f.layers.last().copied().unwrap_or(top);
                Ok(Some((data, f.stat.blocks)))
            }
            _ => {
                log::warn!(
                    "metadata-only copy {} has no data below",
                    name.to_string_lossy()
                );
                Err(Errno::EIO)
            }
        }
    }

    /// Records one more kernel reference to `ino`, creating its node. A new
    /// name of an existing node (a hard link) becomes an alias.
    pub(super) fn remember(
        &self,
        ino: Ino,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        layers: &[LayerIdx],
        redirects: Option<Box<[Redirect]>>,
    ) {
        let mut new_name = false;
        let mut created = false;
        // Every name of the old object is gone (or its type differs): a new
        // object got its freed inode number, and the node now stands for it.
        let reused = self.orphans.remove(&ino).is_some();
        let mut released: Vec<Ino> = Vec::new();
        self.nodes
            .entry(ino)
            .and_modify(|n| {
                n.refs += 1;
                n.used.store(
                    self.pruning.clock.fetch_add(1, Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                if reused || n.kind != kind {
                    released.push(n.parent);
                    released.extend(
                        n.aliases
                            .take()
                            .into_iter()
                            .flat_map(|a| a.into_iter().map(|(p, _)| p)),
                    );
                    n.parent = parent;
                    n.name = name.into();
                    n.kind = kind;
                    n.layers = CompactLayers::from(layers);
                    n.redirects = redirects.clone();
                    new_name = true;
                    return;
                }
                if !n.has_name(parent, name) {
                    new_name = true;
                    n.aliases
                        .get_or_insert_with(Default::default)
                        .push((parent, name.into()));
                }
                // A copied-up file stays where it was copied to: its other
                // names below are aliases of the upper copy.
                let upper_copy = n.kind != FileKind::Dir
                    && self.upper.is_some()
                    && n.layers.first() == Some(&LayerIdx(0));
                if !upper_copy {
                    n.layers = CompactLayers::from(layers);
                    n.redirects = redirects.clone();
                }
            })
            .or_insert_with(|| {
                new_name = true;
                created = true;
                Box::new(Node {
                    parent,
                    name: name.into(),
                    aliases: None,
                    kind,
                    layers: CompactLayers::from(layers),
                    redirects,
                    refs: 1,
                    used: AtomicU32::new(self.pruning.clock.fetch_add(1, Ordering::Relaxed)),
                })
            });
        if created {
            self.node_added();
        }
        if new_name && let Some(mut p) = self.nodes.get_mut(&parent) {
            p.refs += 1;
        }
        for p in released {
            self.forget(p, 1);
        }
    }

    /// Renames one name of node `ino` from `old` to `new`, keeping the child
    /// references of both parents right.
    pub(super) fn move_node(&self, ino: Ino, old: (Ino, &[u8]), new: (Ino, &[u8])) {
        let moved = match self.nodes.get_mut(&ino) {
            Some(mut n) => {
                if n.parent == old.0 && *n.name == *old.1 {
                    n.parent = new.0;
                    n.name = new.1.into();
                    true
                } else if let Some(a) = n
                    .aliases
                    .as_mut()
                    .and_then(|a| a.iter_mut().find(|(p, nm)| *p == old.0 && **nm == *old.1))
                {
                    *a = (new.0, new.1.into());
                    true
                } else {
                    false
                }
            }
            None => return,
        };
        if moved && old.0 != new.0 {
            if let Some(mut p) = self.nodes.get_mut(&new.0) {
                p.refs += 1;
            }
            self.forget(old.0, 1);
        }
    }

    /// Forgets name `parent`/`name` of node `ino` after it was removed. If it
    /// was the main name, another name of the hard link takes its place; the
    /// last name stays (an open file may still use the node).
    /// `last` is the object's stat before the removal: if that was its last
    /// name, it stays reachable (with nlink 0) for descriptors still open on
    /// it, such as fifos, which never reach the daemon.
    pub(super) fn drop_name(&self, ino: Ino, parent: Ino, name: &[u8], last: Option<Stat>) {
        if let Some(mut st) = last
            && (st.nlink <= 1 || st.kind() == FileKind::Dir)
        {
            st.nlink = 0;
            self.orphans.insert(ino, st);
        }
        let released = match self.nodes.get_mut(&ino) {
            Some(mut n) => {
                let n = &mut *n;
                if n.parent == parent && *n.name == *name {
                    match n.aliases.as_mut().and_then(|a| a.pop()) {
                        Some((p, nm)) => {
                            n.parent = p;
                            n.name = nm.into();
                            true
                        }
                        None => false,
                    }
                } else if let Some(a) = n.aliases.as_mut() {
                    let before = a.len();
                    a.retain(|(p, nm)| !(*p == parent && **nm == *name));
                    a.len() != before
                } else {
                    false
                }
            }
            None => false,
        };
        if released {
            self.forget(parent, 1);
        }
    }

    /// Records that directory `ino`'s upper copy now carries redirect `r`:
    /// it replaces the upper copy's previous one; redirects met lower down
    /// stay.
    pub(super) fn set_upper_redirect(&self, ino: Ino, r: Place) {
        if let Some(mut n) = self.nodes.get_mut(&ino) {
            let mut v: Vec<Redirect> = n.redirects.take().map(|b| b.into_vec()).unwrap_or_default();
            v.retain(|x| x.after != LayerIdx(0));
            v.insert(
                0,
                Redirect {
                    after: LayerIdx(0),
                    place: r,
                },
            );
            n.redirects = Some(v.into_boxed_slice());
        }
    }

    /// Sets the layers of node `ino` (after a copy-up).
    pub(super) fn set_layers(&self, ino: Ino, layers: &[LayerIdx]) {
        if let Some(mut n) = self.nodes.get_mut(&ino) {
            n.layers = CompactLayers::from(layers);
        }
    }

    /// Drops `n` kernel references to `ino`, freeing nodes that reach zero
    /// (which releases their references on their parents).
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == Ino::ROOT {
            return;
        }
        {
            let Some(mut node) = self.nodes.get_mut(&ino) else {
                return;
            };
            node.refs = node.refs.saturating_sub(n);
            if node.refs > 0 {
                return;
            }
        }
        // Re-check under the removal: a lookup may have raced in.
        let Some((_, node)) = self.nodes.remove_if(&ino, |_, node| node.refs == 0) else {
            return;
        };
        self.pruning.live.fetch_sub(1, Ordering::Relaxed);
        self.forget_caches(ino);
        self.orphans.remove(&ino);
        self.forget(node.parent, 1);
        for (p, _) in node.aliases.into_iter().flat_map(|a| *a) {
            self.forget(p, 1);
        }
    }

    fn forget_caches(&self, ino: Ino) {
        {
            let mut fds = self.lock_dirfds();
            for l in 0..self.stack.len() as u16 {
                fds.pop(&(ino, LayerIdx(l)));
            }
        }
        self.lock_listings().pop(ino);
    }

    /// The attributes of `ino`, from an open handle when there is one (which
    /// also works for an open file whose name is gone).
    pub fn getattr_fh(&self, ino: Ino, fh: Option<u64>) -> SysResult<Stat> {
        // A metadata-only copy's fd is its data below, not its metadata.
        let metacopy = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.kind != FileKind::Dir && n.layers.len() > 1);
        if let Some(fh) = fh.filter(|_| !metacopy)
            && let Ok(h) = self.handle(fh)
        {
            let fd = self.current_fd(&h);
            let mut st = sys::fstat(fd.as_fd())?;
            self.adjust_nlink_fd(&mut st, &fd);
            st.ino = ino.0;
            return Ok(st);
        }
        self.getattr(ino)
    }

    /// True if every name of upper-layer object `ino` was removed: its node
    /// still carries the last one, which another object may have taken
    /// since. (A lower object stays where it was: its name is still it.)
    pub(super) fn is_orphan(&self, ino: Ino) -> bool {
        self.upper.is_some()
            && self.orphans.contains_key(&ino)
            && self
                .nodes
                .get(&ino)
                .is_some_and(|n| n.layers.first() == Some(&LayerIdx(0)))
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> SysResult<Stat> {
        if self.is_orphan(ino)
            && let Some(orphan) = self.orphans.get(&ino).map(|s| *s)
        {
            // Not by its old name: that may be another file's by now.
            return match self.open_upper_fd(ino) {
                Some(fd) => {
                    let mut st = sys::fstat(fd.as_fd())?;
                    self.adjust_nlink_fd(&mut st, &fd);
                    st.ino = ino.0;
                    Ok(st)
                }
                None => Ok(orphan),
            };
        }
        let info = self.node_info(ino)?;
        let loc = self.loc_of(ino, &info)?;
        let layers = info.layers.clone();
        let mut st = match loc.stat() {
            Err(Errno::ENOENT) => match self.open_upper_fd(ino) {
                Some(fd) => {
                    let mut st = sys::fstat(fd.as_fd())?;
                    self.adjust_nlink_fd(&mut st, &fd);
                    st
                }
                None => return self.orphans.get(&ino).map(|s| *s).ok_or(Errno::ENOENT),
            },
            Ok(mut st) if layers.first() == Some(&LayerIdx(0)) && self.upper.is_some() => {
                self.adjust_nlink(&mut st, loc.fd.as_fd(), &loc.name);
                st
            }
            r => r?,
        };
        if ino != Ino::ROOT {
            st.ino = ino.0;
        } else {
            st.ino = self.map_ino(layers[0], st.ino).0;
        }
        if info.kind == FileKind::Dir && layers.len() > 1 {
            st.nlink = 1;
        }
        if info.kind != FileKind::Dir
            && layers.len() > 1
            && let Ok(pfd) = self.dir_fd(info.parent, info.data_layer())
            && let Ok(data) = sys::fstatat(pfd.as_fd(), &loc.name)
        {
            // A metadata-only copy: its blocks are the data's, below.
            st.blocks = data.blocks;
        }
        Ok(st)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> SysResult<Vec<u8>> {
        let loc = self.loc(ino)?;
        sys::readlinkat(loc.fd.as_fd(), &loc.name)
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(fh, Arc::new(h));
        fh
    }

    pub fn handle(&self, fh: u64) -> SysResult<Arc<Handle>> {
        self.handles.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)
    }

    /// Opens file `ino`; returns the handle, the fd, and whether the fd is
    /// in the upper layer. Opening for writing copies a lower file up first.
    pub fn open(&self, ino: Ino, flags: i32) -> SysResult<(u64, Arc<OwnedFd>, bool)> {
        let acc = flags & libc::O_ACCMODE;
        let wants_write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if wants_write {
            if !self.writable() {
                return Err(Errno::EROFS);
            }
            // Lower layers are never written: copy up first. With O_TRUNC
            // the data would be thrown away, so only metadata is copied.
            let data = match flags & libc::O_TRUNC {
                0 => super::write::CopyData::Full,
                _ => super::write::CopyData::Truncated,
            };
            self.copy_up(ino, data)?;
        }
        let info = self.node_info(ino)?;
        let in_upper = self.writable() && info.top() == LayerIdx(0) && !info.is_metacopy();
        // A metadata-only copy is read from the layer holding its data.
        let loc = match info.is_metacopy() {
            true => Loc {
                fd: self.dir_fd(info.parent, info.data_layer())?,
                name: sys::cstr(OsStr::from_bytes(&info.name))?,
            },
            false => self.loc_of(ino, &info)?,
        };
        if loc.name.is_empty() {
            return Err(Errno::EISDIR);
        }
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_DIRECT
            | libc::O_NOATIME
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_TRUNC;
        let wanted = (flags & keep) | libc::O_NOFOLLOW;
        let f = self.layer_open_flags(wanted);
        let fd = match sys::openat(loc.fd.as_fd(), &loc.name, f, 0) {
            // A write-only file the daemon may not read (no root here):
            // write-only as asked, and the kernel's reads of partial pages
            // fail.
            Err(Errno::EACCES) if f & libc::O_ACCMODE != wanted & libc::O_ACCMODE => {
                let wo = (f & !libc::O_ACCMODE) | libc::O_WRONLY;
                sys::openat(loc.fd.as_fd(), &loc.name, wo, 0)?
            }
            r => r?,
        };
        let fd = Arc::new(fd);
        let fh = self.new_handle(Handle {
            ino,
            fd: fd.clone(),
            upper: in_upper,
            copied: Default::default(),
        });
        Ok((fh, fd, in_upper))
    }

    /// Registers an fd opened by `create` as a handle.
    pub(super) fn add_file_handle(&self, ino: Ino, fd: Arc<OwnedFd>, upper: bool) -> u64 {
        self.new_handle(Handle {
            ino,
            fd,
            upper,
            copied: Default::default(),
        })
    }

    /// An open upper-layer fd of `ino`, if any: the way to reach a file whose
    /// every name was removed while it is open.
    pub(super) fn open_upper_fd(&self, ino: Ino) -> Option<Arc<OwnedFd>> {
        self.handles
            .iter()
            .find(|h| h.upper && h.ino == ino)
            .map(|h| h.fd.clone())
    }

    /// The fd an open file reads from: its own, or for a lower fd whose
    /// file was copied up since, the upper copy.
    pub(super) fn current_fd(&self, h: &Handle) -> Arc<OwnedFd> {
        if h.upper || self.upper.is_none() {
            return h.fd.clone();
        }
        if let Some(c) = h.copied.get() {
            return c.clone();
        }
        if self
            .nodes
            .get(&h.ino)
            .is_none_or(|n| *n.layers != [LayerIdx(0)])
        {
            // Only once the data itself is in the upper layer (a
            // metadata-only copy still reads it below).
            return h.fd.clone();
        }
        let reopened = self
            .loc(h.ino)
            .and_then(|l| sys::openat(l.fd.as_fd(), &l.name, libc::O_RDONLY | libc::O_NOFOLLOW, 0))
            .map(Arc::new)
            .ok()
            .or_else(|| self.open_upper_fd(h.ino));
        match reopened {
            Some(c) => h.copied.get_or_init(|| c).clone(),
            None => h.fd.clone(),
        }
    }

    /// Reads up to `size` bytes at `offset` from an open file into `buf`
    /// (replacing its contents). Callers reuse one buffer per thread: no
    /// allocation and no zeroing per read.
    pub fn read(&self, fh: u64, offset: u64, size: u32, buf: &mut Vec<u8>) -> SysResult<()> {
        let h = self.handle(fh)?;
        let fd = self.current_fd(&h);
        sys::pread_vec(fd.as_fd(), buf, size as usize, offset)
    }

    /// Closes a file handle.
    pub fn release(&self, fh: u64) -> Option<Arc<Handle>> {
        self.handles.remove(&fh).map(|(_, h)| h)
    }

    /// The listing of directory `ino` for a READDIR at `offset` that comes
    /// without an open handle: a snapshot taken at offset 0, reused by the
    /// chunks after it (taken again if it was dropped meanwhile).
    pub fn readdir_listing(&self, ino: Ino, offset: u64) -> SysResult<Listing> {
        let snaps = || {
            self.readdir_snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if offset > 0
            && let Some(l) = snaps().get(&ino).cloned()
        {
            return Ok(l);
        }
        // ENOTDIR for a non-directory comes from reading the listing.
        let l = self.listing(ino)?;
        snaps().put(ino, l.clone());
        Ok(l)
    }

    /// The merged listing of `ino`, with `.` and `..` first.
    fn listing(&self, ino: Ino) -> SysResult<Listing> {
        let cached = self.lock_listings().get(ino);
        self.counters.listing(cached.is_some());
        if let Some(l) = cached {
            return Ok(l);
        }
        let listing = self.read_listing(ino)?;
        self.lock_listings().put(ino, listing.clone());
        Ok(listing)
    }

    /// Reads the merged listing of `ino` from the layers, bypassing the cache.
    pub(super) fn read_listing(&self, ino: Ino) -> SysResult<Listing> {
        let NodeInfo {
            parent,
            kind,
            layers,
            ..
        } = self.node_info(ino)?;
        if kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let mut per_layer = Vec::with_capacity(layers.len());
        for &layer in layers.iter() {
            let fd = self.dir_fd(ino, layer)?;
            let rd = sys::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            let raw = sys::read_dir(rd.as_fd())?;
            let mut entries = Vec::with_capacity(raw.len());
            for e in raw {
                let kind = match FileKind::from_dtype(e.dtype) {
                    Some(FileKind::CharDev) | None => {
                        let cname = sys::cstr(OsStr::from_bytes(&e.name))?;
                        match sys::fstatat(rd.as_fd(), &cname) {
                            Ok(st) if st.is_whiteout() => EntryKind::Whiteout,
                            Ok(st) => EntryKind::File(st.kind()),
                            // Vanished between getdents and stat.
                            Err(Errno::ENOENT) => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    Some(k) => EntryKind::File(k),
                };
                entries.push(LayerEntry {
                    name: e.name,
                    ino: e.ino,
                    kind,
                });
            }
            per_layer.push((layer, entries));
        }
        let merged = rules::merge_listing(per_layer);
        let mut items = Vec::with_capacity(merged.len() + 2);
        let top = layers.first().copied().unwrap_or(LayerIdx(0));
        items.push(DirItem {
            name: CompactName::from(&b"."[..]),
            ino,
            kind: FileKind::Dir,
            layer: top,
        });
        items.push(DirItem {
            name: CompactName::from(&b".."[..]),
            ino: parent,
            kind: FileKind::Dir,
            layer: top,
        });
        let upper_fd = match self.upper.is_some() && layers.first() == Some(&LayerIdx(0)) {
            true => Some(self.dir_fd(ino, LayerIdx(0))?),
            false => None,
        };
        for m in merged {
            if let (LayerIdx(0), Some(fd)) = (m.layer, &upper_fd) {
                let cname = sys::cstr(OsStr::from_bytes(&m.name))?;
                self.load_origin(fd, &cname, m.ino);
            }
            items.push(DirItem {
                ino: self.map_ino(m.layer, m.ino),
                name: CompactName::from(&m.name[..]),
                kind: m.kind,
                layer: m.layer,
            });
        }
        let listing = Arc::new(items);
        debug!("listing of {ino}: {} entries", listing.len());
        Ok(listing)
    }

    /// Drops the cached listing of `ino` (after a change in it).
    pub fn invalidate_listing(&self, ino: Ino) {
        self.lock_listings().pop(ino);
    }

    /// The value of extended attribute `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> SysResult<Vec<u8>> {
        if is_internal_xattr(name) {
            return Err(Errno::ENODATA);
        }
        let loc = self.loc(ino)?;
        let cname = sys::cstr(OsStr::from_bytes(name))?;
        sys::getxattr_at(loc.fd.as_fd(), &loc.name, &cname)
    }

    /// The names of `ino`'s extended attributes, NUL-separated, without the
    /// internal ones.
    pub fn listxattr(&self, ino: Ino) -> SysResult<Vec<u8>> {
        let loc = self.loc(ino)?;
        let raw = sys::listxattr_at(loc.fd.as_fd(), &loc.name)?;
        let mut out = Vec::with_capacity(raw.len());
        for n in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !is_internal_xattr(n) {
                out.extend_from_slice(n);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Filesystem statistics: those of the upper layer, else of the top layer.
    pub fn statfs(&self) -> SysResult<StatFs> {
        let root = self.layer_root(LayerIdx(0))?;
        let mut st = sys::fstatfs(root.as_fd())?;
        st.namelen = rules::NAME_MAX as u32;
        Ok(st)
    }

    /// Permission check for `access(2)` when the kernel does not check itself
    /// (no `default_permissions`).
    pub fn access(&self, ino: Ino, mask: i32, uid: u32, gid: u32) -> SysResult<()> {
        let st = self.getattr(ino)?;
        if mask & libc::W_OK != 0 && !self.writable() {
            return Err(Errno::EROFS);
        }
        if may_access(&st, mask, uid, gid) {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}

/// Where an absolute place ends in a layer (see [`Overlay::walk_abs`]).
enum Walk {
    /// The directory holding the last component, that component's name, and
    /// the place for the layers below if a redirect moved it.
    At(Arc<OwnedFd>, CString, Option<Place>),
    Missing,
    /// A whiteout or a non-directory on the way.
    Stop,
}

/// Opens directory `name` in `dirfd` as an `O_PATH` fd, not following a
/// symlink.
fn open_dir_path(dirfd: &OwnedFd, name: &CStr) -> SysResult<OwnedFd> {
    sys::openat(
        dirfd.as_fd(),
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// `.wh.NAME` for `name`.
fn wh_cname(name: &CStr) -> SysResult<CString> {
    let mut wh = rules::WH_PREFIX.to_vec();
    wh.extend_from_slice(name.to_bytes());
    sys::cstr(OsStr::from_bytes(&wh))
}

/// An xattr's value, or `None` where it is absent or cannot be read (reading
/// trusted.* needs CAP_SYS_ADMIN: unprivileged, it is absent).
fn xattr_value(dirfd: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> SysResult<Option<Vec<u8>>> {
    match sys::getxattr_at(dirfd, name, attr) {
        Ok(v) => Ok(Some(v)),
        Err(e) if sys::xattr_absent(e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The redirect of the directory at `path`, if it has one. An invalid one is
/// EIO (and logged), as on the kernel.
fn read_redirect(dirfd: BorrowedFd<'_>, name: &CStr) -> SysResult<Option<Place>> {
    for x in REDIRECT_XATTRS {
        if let Some(v) = xattr_value(dirfd, name, x)? {
            return rules::parse_redirect(&v).map(Some).inspect_err(|_| {
                log::warn!(
                    "invalid redirect {:?} on {}",
                    String::from_utf8_lossy(&v),
                    sys::proc_fd_path(dirfd, Some(name)).to_string_lossy()
                )
            });
        }
    }
    Ok(None)
}

/// What [`Overlay::refresh`] changed, and what the kernel must forget.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// Directory nodes checked, and those whose layers changed.
    pub dirs: usize,
    pub dirs_changed: usize,
    /// Every inode the kernel may hold.
    pub inodes: Vec<Ino>,
    /// Every (directory, name) the kernel may have cached: the names of
    /// known nodes (positive entries) and the names in the new listings of
    /// known directories (which may be cached as absent).
    pub names: Vec<(Ino, Box<[u8]>)>,
}

impl Overlay {
    /// Forgets what the overlay cached about the layers, after a lower
    /// layer changed under the mount: merged listings, directory fds, and
    /// the layers merged into each known directory (recomputed from its
    /// parent, parents first). Nodes stay: the kernel still holds them; a
    /// node whose name no longer resolves to a directory keeps its layers
    /// and fails with ENOENT until the kernel forgets it. A node whose
    /// layers changed meanwhile (a concurrent copy-up) is left alone.
    pub fn refresh(&self) -> Refreshed {
        {
            let mut l = self.lock_listings();
            l.lru.clear();
            l.entries = 0;
        }
        self.lock_dirfds().clear();
        type DirNode = (Ino, Ino, Box<[u8]>, Box<[LayerIdx]>);
        let mut dirs: Vec<DirNode> = self
            .nodes
            .iter()
            .filter(|n| *n.key() != Ino::ROOT && n.kind == FileKind::Dir)
            .map(|n| (*n.key(), n.parent, n.name.to_boxed(), n.layers.to_boxed()))
            .collect();
        let parents: std::collections::HashMap<Ino, Ino> =
            dirs.iter().map(|d| (d.0, d.1)).collect();
        dirs.sort_by_cached_key(|d| {
            let (mut depth, mut cur) = (0usize, d.0);
            while let Some(p) = parents.get(&cur).filter(|_| depth < 4096) {
                depth += 1;
                cur = *p;
            }
            depth
        });
        let mut out = Refreshed {
            dirs: dirs.len(),
            ..Refreshed::default()
        };
        for (ino, parent, name, old) in dirs {
            let Ok(pinfo) = self.node_info(parent) else {
                continue;
            };
            let (layers, redirects) = match self.resolve_in(parent, &pinfo.layers, &name) {
                Ok(Some(f)) if f.is_dir() => (f.layers, f.redirects),
                _ => continue,
            };
            if layers != old
                && let Some(mut n) = self.nodes.get_mut(&ino)
                && *n.layers == *old
            {
                n.layers = CompactLayers::from(&*layers);
                n.redirects = redirects;
                out.dirs_changed += 1;
            }
        }
        let mut known_dirs = Vec::new();
        for n in self.nodes.iter() {
            out.inodes.push(*n.key());
            if *n.key() != Ino::ROOT {
                out.names.push((n.parent, n.name.to_boxed()));
                let aliases = n.aliases.iter().flat_map(|a| a.iter());
                out.names.extend(aliases.map(|(p, nm)| (*p, nm.clone())));
            }
            if n.kind == FileKind::Dir {
                known_dirs.push(*n.key());
            }
        }
        for d in known_dirs {
            if let Ok(l) = self.listing(d) {
                // `.` and `..` come first and are never cached as entries.
                out.names
                    .extend(l.iter().skip(2).map(|i| (d, i.name.to_boxed())));
            }
        }
        out.names.sort_unstable();
        out.names.dedup();
        debug!(
            "refresh: {} of {} directories changed layers; {} inodes, {} names to invalidate",
            out.dirs_changed,
            out.dirs,
            out.inodes.len(),
            out.names.len()
        );
        out
    }
}

/// The classic Unix permission check of `mask` (R_OK/W_OK/X_OK bits) for a
/// caller with `uid`/`gid` on a file with `st`'s mode and owner.
pub fn may_access(st: &Stat, mask: i32, uid: u32, gid: u32) -> bool {
    let mask = (mask & 7) as u32;
    if mask == 0 {
        return true;
    }
    if uid == 0 {
        // Root may execute only if some execute bit is set (or it is a dir).
        return mask & 1 == 0 || st.kind() == FileKind::Dir || st.mode & 0o111 != 0;
    }
    let bits = if st.uid == uid {
        (st.mode >> 6) & 7
    } else if st.gid == gid {
        (st.mode >> 3) & 7
    } else {
        st.mode & 7
    };
    bits & mask == mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Timespec;

    fn st(mode: u32, uid: u32, gid: u32) -> Stat {
        Stat {
            dev: 0,
            ino: 0,
            mode,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            size: 0,
            blocks: 0,
            blksize: 4096,
            atime: Timespec::default(),
            mtime: Timespec::default(),
            ctime: Timespec::default(),
        }
    }

    #[test]
    fn access_table() {
        let f = libc::S_IFREG;
        let cases = [
            (st(f | 0o644, 1, 1), libc::R_OK, 1, 1, true),
            (st(f | 0o644, 1, 1), libc::W_OK, 1, 1, true),
            (st(f | 0o644, 1, 1), libc::W_OK, 2, 1, false),
            (st(f | 0o640, 1, 1), libc::R_OK, 2, 1, true),
            (st(f | 0o640, 1, 1), libc::R_OK, 2, 2, false),
            (st(f | 0o600, 1, 1), libc::R_OK | libc::W_OK, 0, 0, true),
            (st(f | 0o644, 1, 1), libc::X_OK, 0, 0, false),
            (st(f | 0o744, 1, 1), libc::X_OK, 0, 0, true),
            (st(libc::S_IFDIR | 0o600, 1, 1), libc::X_OK, 0, 0, true),
        ];
        for (s, mask, uid, gid, want) in cases {
            assert_eq!(
                may_access(&s, mask, uid, gid),
                want,
                "{:o} {mask} {uid}",
                s.mode
            );
        }
    }

    #[test]
    fn internal_xattrs() {
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.overlay.redirect"));
        assert!(is_internal_xattr(b"user.fuseoverlayfs.origin"));
        assert!(!is_internal_xattr(b"user.mime_type"));
        assert!(!is_internal_xattr(b"security.capability"));
    }
}
