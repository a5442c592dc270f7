//! Extraction of one layer tar stream into an empty directory, treating the
//! archive as hostile.
//!
//! Owns: path normalization, whiteout-name checks, the xattr policy, the
//! size/entry limits and every file-system write of an extraction. Does not
//! own: decompression, digests, where the directory lives or its atomic
//! rename into the store (see [`super::load`]).
//!
//! Invariants, which the hostile-input tests check one by one:
//! - Every write is an `*at` call relative to a directory fd reached from
//!   the layer root one component at a time with
//!   `O_PATH | O_DIRECTORY | O_NOFOLLOW`; no path is ever resolved through a
//!   symlink, so nothing lands outside the layer directory. New files are
//!   created with `O_CREAT | O_EXCL | O_NOFOLLOW`.
//! - `..` components are an error naming the entry; leading `/` is dropped
//!   (the entry stays inside the layer, as GNU tar does).
//! - A later entry for the same path replaces the earlier one (last wins);
//!   a directory over a directory keeps its contents.
//! - Whiteouts stay in the OCI encoding: an empty regular file `.wh.NAME`,
//!   and `.wh..wh..opq` for an opaque directory. The mount reads this
//!   encoding without privileges. A character device 0/0 (the kernel's
//!   whiteout) is stored as `.wh.NAME` too. `.wh.`, `.wh..`, other `.wh..wh.`
//!   names, and whiteout names used as directories are errors.
//! - Directory modes and mtimes are applied at the end, deepest first, so a
//!   read-only directory can still be filled.
//! - Limits on total uncompressed bytes, entry count and per-entry metadata
//!   (PAX and GNU long-name records, which the tar reader buffers in memory)
//!   stop decompression bombs.
//! - Without privileges, device nodes and foreign owners cannot be created;
//!   they are recorded in the `user.containers.override_stat` xattr
//!   (`UID:GID:0MODE:TYPE`, the containers/storage convention) on an empty
//!   regular file, so a mount with xattr-based permissions can show them.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use tar::EntryType;

use crate::sys::{self, Errno, SetTime, Timespec};

/// Resource limits for one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of the uncompressed tar stream.
    pub max_bytes: u64,
    /// Number of tar entries.
    pub max_entries: u64,
    /// Bytes of headers and PAX/GNU records before one entry's data.
    pub max_metadata: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_metadata: 1 << 20,
        }
    }
}

/// How to extract.
#[derive(Clone, Copy, Debug)]
pub struct ExtractOptions {
    pub limits: Limits,
    /// Create device nodes, set owners and `security.*` xattrs (root).
    pub privileged: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            limits: Limits::default(),
            privileged: sys::geteuid() == 0,
        }
    }
}

/// What an extraction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    /// Bytes of regular file contents (hard links counted once): the layer
    /// SIZE docker shows.
    pub content_bytes: u64,
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// Things dropped or recorded instead of created, one line each.
    pub warnings: Vec<String>,
}

/// Why an extraction failed; every variant names the entry when there is one.
#[derive(Debug)]
pub enum ExtractError {
    /// Reading or parsing the tar stream failed.
    Read {
        entry: Option<String>,
        cause: io::Error,
    },
    /// The stream ended inside an entry or before the end-of-archive marker.
    Truncated {
        entry: Option<String>,
    },
    TooLarge {
        limit: u64,
    },
    TooManyEntries {
        limit: u64,
    },
    MetadataTooLarge {
        entry: Option<String>,
        limit: u64,
    },
    /// A `..` component.
    Traversal {
        entry: String,
    },
    /// A NUL byte inside a path or link target.
    Nul {
        entry: String,
    },
    /// The entry would make the layer root something other than a directory.
    RootNotDir {
        entry: String,
    },
    InvalidWhiteout {
        entry: String,
        why: &'static str,
    },
    /// A parent component is a symlink.
    ThroughSymlink {
        entry: String,
        component: String,
    },
    /// A parent component exists and is not a directory.
    ParentNotDir {
        entry: String,
        component: String,
    },
    /// A hard link whose target is not a file of this layer.
    BadHardlink {
        entry: String,
        target: String,
        why: String,
    },
    Unsupported {
        entry: String,
        kind: String,
    },
    /// A file-system step failed.
    Io {
        entry: String,
        step: &'static str,
        cause: Errno,
    },
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |e: &Option<String>| match e {
            Some(e) => format!(" at entry '{e}'"),
            None => String::new(),
        };
        match self {
            ExtractError::Read { entry, cause } => {
                write!(f, "cannot read the layer archive{}: {cause}", at(entry))
            }
            ExtractError::Truncated { entry } => write!(f, "truncated layer archive{}", at(entry)),
            ExtractError::TooLarge { limit } => write!(
                f,
                "layer is larger than the limit of {limit} uncompressed bytes (see --max-layer-size)"
            ),
            ExtractError::TooManyEntries { limit } => write!(
                f,
                "layer has more than {limit} entries (see --max-layer-entries)"
            ),
            ExtractError::MetadataTooLarge { entry, limit } => write!(
                f,
                "tar headers/extension records{} exceed {limit} bytes",
                at(entry)
            ),
            ExtractError::Traversal { entry } => {
                write!(f, "entry '{entry}': path leaves the layer ('..')")
            }
            ExtractError::Nul { entry } => write!(f, "entry '{entry}': NUL byte in a name"),
            ExtractError::RootNotDir { entry } => {
                write!(f, "entry '{entry}': the layer root must be a directory")
            }
            ExtractError::InvalidWhiteout { entry, why } => {
                write!(f, "entry '{entry}': invalid whiteout: {why}")
            }
            ExtractError::ThroughSymlink { entry, component } => write!(
                f,
                "entry '{entry}': parent '{component}' is a symlink; refusing to write through it"
            ),
            ExtractError::ParentNotDir { entry, component } => {
                write!(
                    f,
                    "entry '{entry}': parent '{component}' is not a directory"
                )
            }
            ExtractError::BadHardlink { entry, target, why } => {
                write!(f, "entry '{entry}': hard link to '{target}': {why}")
            }
            ExtractError::Unsupported { entry, kind } => {
                write!(f, "entry '{entry}': unsupported tar entry type {kind}")
            }
            ExtractError::Io { entry, step, cause } => {
                write!(f, "entry '{entry}': {step}: {cause}")
            }
        }
    }
}

impl std::error::Error for ExtractError {}

// ---------------------------------------------------------------------------
// Pure rules (no I/O)
// ---------------------------------------------------------------------------

/// Why a path was refused by [`normalize`].
#[derive(Debug, PartialEq, Eq)]
pub enum PathProblem {
    Traversal,
    Nul,
}

/// Splits an archive path into components relative to the layer root:
/// leading `/`, empty and `.` components are dropped, `..` is refused.
pub fn normalize(path: &[u8]) -> Result<Vec<Vec<u8>>, PathProblem> {
    if path.contains(&0) {
        return Err(PathProblem::Nul);
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathProblem::Traversal),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// What a file name means to the overlay.
#[derive(Debug, PartialEq, Eq)]
pub enum NameKind {
    Plain,
    /// `.wh.NAME`
    Whiteout,
    /// `.wh..wh..opq`
    Opaque,
}

/// Classifies a name; `Err` says why a `.wh.` name is invalid.
pub fn classify(name: &[u8]) -> Result<NameKind, &'static str> {
    let Some(rest) = name.strip_prefix(b".wh.") else {
        return Ok(NameKind::Plain);
    };
    match rest {
        b".wh..opq" => Ok(NameKind::Opaque),
        b"" => Err("'.wh.' hides nothing"),
        b"." | b".." => Err("a whiteout cannot hide '.' or '..'"),
        r if r.starts_with(b".wh.") => Err("'.wh..wh.' names are reserved"),
        _ => Ok(NameKind::Whiteout),
    }
}

/// containers/storage's record of a rootless file's real owner and mode: the
/// overlay's metadata too, though outside the overlay's own prefixes.
pub const OVERRIDE_STAT: &str = "user.containers.override_stat";

/// What to do with an xattr from the archive.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrVerdict {
    Keep,
    Drop(&'static str),
}

/// The xattr policy: namespaces that would change how the overlay reads the
/// layer, or that need privileges, are dropped.
pub fn xattr_policy(name: &str, privileged: bool) -> XattrVerdict {
    if name.starts_with("trusted.") {
        XattrVerdict::Drop("trusted.* is privileged and holds overlay metadata")
    } else if crate::overlay::fs::is_internal_xattr(name.as_bytes())
        || name.starts_with(OVERRIDE_STAT)
    {
        XattrVerdict::Drop("reserved for overlay metadata")
    } else if name.starts_with("security.") {
        if privileged {
            XattrVerdict::Keep
        } else {
            XattrVerdict::Drop("security.* needs privileges")
        }
    } else if name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
        || name.starts_with("user.")
    {
        XattrVerdict::Keep
    } else {
        XattrVerdict::Drop("unknown xattr namespace")
    }
}

/// Parses a PAX time (`SECONDS[.FRACTION]`, maybe negative).
pub fn parse_pax_time(s: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(s).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: i64 = digits.parse().ok()?;
    Some(if neg {
        if nsec == 0 {
            Timespec { sec: -sec, nsec: 0 }
        } else {
            Timespec {
                sec: -sec - 1,
                nsec: 1_000_000_000 - nsec,
            }
        }
    } else {
        Timespec { sec, nsec }
    })
}

/// The `user.containers.override_stat` value for what could not be created.
pub fn override_stat(uid: u64, gid: u64, mode: u32, kind: &str) -> String {
    format!("{uid}:{gid}:0{:o}:{kind}", mode & 0o7777)
}

// ---------------------------------------------------------------------------
// The guarded reader
// ---------------------------------------------------------------------------

/// Shared between the extractor and the reader the tar parser owns.
#[derive(Default)]
struct GuardState {
    total: Cell<u64>,
    meta: Cell<u64>,
    in_data: Cell<bool>,
    eof: Cell<bool>,
    over_total: Cell<bool>,
    over_meta: Cell<bool>,
}

/// Counts every byte against the limits. Bytes read while the extractor is
/// not reading entry data are headers and extension records, which the tar
/// parser buffers: those count against the per-entry metadata limit.
struct Guard<R> {
    inner: R,
    st: Rc<GuardState>,
    limits: Limits,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.st.eof.set(true);
        }
        let total = self.st.total.get() + n as u64;
        self.st.total.set(total);
        if total > self.limits.max_bytes {
            self.st.over_total.set(true);
            return Err(io::Error::other("layer size limit exceeded"));
        }
        if !self.st.in_data.get() {
            let meta = self.st.meta.get() + n as u64;
            self.st.meta.set(meta);
            if meta > self.limits.max_metadata {
                self.st.over_meta.set(true);
                return Err(io::Error::other("metadata size limit exceeded"));
            }
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------

/// A name for messages: control characters (which a hostile archive could
/// use to forge terminal output) become `?`.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn join(comps: &[Vec<u8>]) -> String {
    lossy(&comps.join(&b'/'))
}

fn cstring(b: &[u8], entry: &str) -> Result<CString, ExtractError> {
    CString::new(b).map_err(|_| ExtractError::Nul {
        entry: entry.into(),
    })
}

/// Deferred metadata of a directory.
#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Timespec,
}

/// Header fields of one entry, read before its data.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Extractor {
    /// The layer root (an `O_PATH` fd of its own).
    root: Rc<OwnedFd>,
    opts: ExtractOptions,
    /// The last parent directory reached, by components: entries of one
    /// directory are usually adjacent. Cleared whenever anything is removed,
    /// so it never points into a replaced subtree.
    cache: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
    dirs: BTreeMap<Vec<Vec<u8>>, DirMeta>,
    stats: ExtractStats,
    buf: Vec<u8>,
}

const MAX_WARNINGS: usize = 100;

impl Extractor {
    fn warn(&mut self, w: String) {
        if self.stats.warnings.len() < MAX_WARNINGS {
            self.stats.warnings.push(w);
        }
    }

    /// Opens (creating when asked) the directory `dir` below the root, one
    /// component at a time, never following a symlink.
    fn walk(&self, dir: &[Vec<u8>], create: bool, entry: &str) -> Result<OwnedFd, WalkError> {
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in dir.iter().enumerate() {
            let base = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let name = cstring(c, entry).map_err(WalkError::Extract)?;
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let fd = match sys::openat(base, &name, flags, 0) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    // A parent the archive did not list: make it like tar.
                    match sys::mkdirat(base, &name, 0o755) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(cause) => {
                            return Err(WalkError::Extract(ExtractError::Io {
                                entry: entry.into(),
                                step: "creating a parent directory",
                                cause,
                            }));
                        }
                    }
                    sys::openat(base, &name, flags, 0).map_err(|cause| {
                        WalkError::Extract(ExtractError::Io {
                            entry: entry.into(),
                            step: "opening a parent directory",
                            cause,
                        })
                    })?
                }
                Err(Errno::ENOENT) => return Err(WalkError::Missing(join(&dir[..=i]))),
                Err(e) if e == Errno::ENOTDIR || e.0 == libc::ELOOP => {
                    let component = join(&dir[..=i]);
                    let is_link = sys::fstatat(base, &name)
                        .map(|st| st.kind() == sys::FileKind::Symlink)
                        .unwrap_or(false);
                    return Err(if is_link {
                        WalkError::Symlink(component)
                    } else {
                        WalkError::NotDir(component)
                    });
                }
                Err(cause) => {
                    return Err(WalkError::Extract(ExtractError::Io {
                        entry: entry.into(),
                        step: "opening a parent directory",
                        cause,
                    }));
                }
            };
            cur = Some(fd);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => sys::openat(self.root.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|cause| {
                    WalkError::Extract(ExtractError::Io {
                        entry: entry.into(),
                        step: "opening the layer root",
                        cause,
                    })
                }),
        }
    }

    /// The parent directory fd for an entry, created as needed.
    fn parent(&mut self, dir: &[Vec<u8>], entry: &str) -> Result<Rc<OwnedFd>, ExtractError> {
        if dir.is_empty() {
            return Ok(Rc::clone(&self.root));
        }
        if let Some((p, fd)) = &self.cache
            && p.as_slice() == dir
        {
            return Ok(Rc::clone(fd));
        }
        let fd = Rc::new(
            self.walk(dir, true, entry)
                .map_err(|e| e.into_error(entry))?,
        );
        self.cache = Some((dir.to_vec(), Rc::clone(&fd)));
        Ok(fd)
    }

    /// Removes whatever is at `name` in `parent` (a whole tree for a
    /// directory), forgetting cached fds and deferred metadata below it.
    fn remove_existing(
        &mut self,
        parent_comps: &[Vec<u8>],
        name: &[u8],
        entry: &str,
    ) -> Result<(), ExtractError> {
        let mut path = parent_comps.to_vec();
        path.push(name.to_vec());
        self.dirs.retain(|k, _| !k.starts_with(&path));
        let parent = self
            .walk(parent_comps, false, entry)
            .map_err(|e| e.into_error(entry))?;
        self.cache = None;
        let cname = cstring(name, entry)?;
        remove_at(parent.as_fd(), &cname).map_err(|cause| ExtractError::Io {
            entry: entry.into(),
            step: "replacing an earlier entry",
            cause,
        })
    }

    fn extract_all<R: Read>(&mut self, reader: R) -> Result<(), ExtractError> {
        let st = Rc::new(GuardState::default());
        let guard = Guard {
            inner: reader,
            st: Rc::clone(&st),
            limits: self.opts.limits,
        };
        let mut archive = tar::Archive::new(guard);
        let limits = self.opts.limits;
        let read_err = |entry: Option<String>, cause: io::Error| {
            if st.over_total.get() {
                ExtractError::TooLarge {
                    limit: limits.max_bytes,
                }
            } else if st.over_meta.get() {
                ExtractError::MetadataTooLarge {
                    entry,
                    limit: limits.max_metadata,
                }
            } else if cause.kind() == io::ErrorKind::UnexpectedEof {
                ExtractError::Truncated { entry }
            } else {
                ExtractError::Read { entry, cause }
            }
        };
        let mut last: Option<String> = None;
        {
            let entries = archive.entries().map_err(|e| read_err(None, e))?;
            for item in entries {
                let mut e = item.map_err(|c| read_err(last.clone(), c))?;
                st.meta.set(0);
                self.stats.entries += 1;
                if self.stats.entries > limits.max_entries {
                    return Err(ExtractError::TooManyEntries {
                        limit: limits.max_entries,
                    });
                }
                let name = lossy(&e.path_bytes());
                last = Some(name.clone());
                st.in_data.set(true);
                let r = self.entry(&mut e, &name);
                st.in_data.set(false);
                match r {
                    Ok(()) => {}
                    Err(ExtractError::Read { entry, cause }) => return Err(read_err(entry, cause)),
                    Err(other) => return Err(other),
                }
            }
        }
        // The parser stops at the first zero block, or at EOF: only the
        // former is a complete archive.
        if st.eof.get() {
            return Err(ExtractError::Truncated { entry: None });
        }
        // Read the rest (second zero block, padding) so the caller's digest
        // covers the whole stream.
        let mut guard = archive.into_inner();
        io::copy(&mut guard, &mut io::sink()).map_err(|c| read_err(None, c))?;
        self.stats.tar_bytes = st.total.get();
        self.finish_dirs()
    }

    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), ExtractError> {
        let kind = e.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return self.drain(e, name);
        }
        let comps = match normalize(&e.path_bytes()) {
            Ok(c) => c,
            Err(PathProblem::Traversal) => {
                return Err(ExtractError::Traversal { entry: name.into() });
            }
            Err(PathProblem::Nul) => return Err(ExtractError::Nul { entry: name.into() }),
        };
        let meta = self.meta(e, name)?;
        let Some((base, dir)) = comps.split_last() else {
            // The layer root itself.
            if kind != EntryType::Directory {
                return Err(ExtractError::RootNotDir { entry: name.into() });
            }
            self.dirs.insert(
                Vec::new(),
                DirMeta {
                    mode: meta.mode,
                    mtime: meta.mtime,
                },
            );
            let root = Rc::clone(&self.root);
            return self.owner_xattrs(root.as_fd(), c".", &meta, name, "dir");
        };
        for c in dir {
            if classify(c) != Ok(NameKind::Plain) {
                return Err(ExtractError::InvalidWhiteout {
                    entry: name.into(),
                    why: "a whiteout name cannot be a directory",
                });
            }
        }
        let class = classify(base).map_err(|why| ExtractError::InvalidWhiteout {
            entry: name.into(),
            why,
        })?;
        if class != NameKind::Plain {
            if !matches!(
                kind,
                EntryType::Regular | EntryType::Continuous | EntryType::Link
            ) {
                return Err(ExtractError::InvalidWhiteout {
                    entry: name.into(),
                    why: "a whiteout must be a regular file",
                });
            }
            self.drain(e, name)?;
            return self.create_empty(dir, base, name);
        }
        match kind {
            EntryType::Directory => self.directory(dir, base, &meta, name),
            EntryType::Regular | EntryType::Continuous => self.file(e, dir, base, &meta, name),
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.symlink(dir, base, &target, &meta, name)
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                self.drain(e, name)?;
                self.hardlink(dir, base, &target, name)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let major = e.header().device_major().ok().flatten().unwrap_or(0);
                let minor = e.header().device_minor().ok().flatten().unwrap_or(0);
                self.special(kind, major, minor, dir, base, &meta, name)
            }
            other => Err(ExtractError::Unsupported {
                entry: name.into(),
                kind: format!("{other:?}"),
            }),
        }
    }

    fn meta<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Meta, ExtractError> {
        let h = e.header();
        let mut meta = Meta {
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
            mtime: Timespec {
                sec: h.mtime().unwrap_or(0) as i64,
                nsec: 0,
            },
            xattrs: Vec::new(),
        };
        let pax = e.pax_extensions().map_err(|cause| ExtractError::Read {
            entry: Some(name.into()),
            cause,
        })?;
        let mut dropped = Vec::new();
        if let Some(pax) = pax {
            for ext in pax {
                let ext = ext.map_err(|cause| ExtractError::Read {
                    entry: Some(name.into()),
                    cause,
                })?;
                let Ok(key) = ext.key() else { continue };
                if key == "mtime" {
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        meta.mtime = t;
                    }
                } else if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                    match xattr_policy(x, self.opts.privileged) {
                        XattrVerdict::Keep => {
                            meta.xattrs.push((x.into(), ext.value_bytes().to_vec()))
                        }
                        XattrVerdict::Drop(why) => {
                            dropped.push(format!("{name}: dropped xattr {x} ({why})"))
                        }
                    }
                }
            }
        }
        for d in dropped {
            self.warn(d);
        }
        Ok(meta)
    }

    /// Reads and discards an entry's data.
    fn drain<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), ExtractError> {
        let size = e.size();
        let n = io::copy(e, &mut io::sink()).map_err(|cause| ExtractError::Read {
            entry: Some(name.into()),
            cause,
        })?;
        if n < size {
            return Err(ExtractError::Truncated {
                entry: Some(name.into()),
            });
        }
        Ok(())
    }

    /// Creates `base` in `dir` with `make`, replacing an earlier entry of the
    /// same path when `make` reports `EEXIST`.
    fn create<T>(
        &mut self,
        dir: &[Vec<u8>],
        base: &[u8],
        name: &str,
        step: &'static str,
        mut make: impl FnMut(BorrowedFd<'_>, &std::ffi::CStr) -> Result<T, Errno>,
    ) -> Result<T, ExtractError> {
        let cname = cstring(base, name)?;
        let first = make(self.parent(dir, name)?.as_fd(), &cname);
        match first {
            Err(Errno::EEXIST) => {
                self.remove_existing(dir, base, name)?;
                make(self.parent(dir, name)?.as_fd(), &cname)
            }
            other => other,
        }
        .map_err(|cause| ExtractError::Io {
            entry: name.into(),
            step,
            cause,
        })
    }

    fn create_empty(
        &mut self,
        dir: &[Vec<u8>],
        base: &[u8],
        name: &str,
    ) -> Result<(), ExtractError> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        self.create(dir, base, name, "creating a whiteout", |p, n| {
            sys::openat(p, n, flags, 0o644)
        })
        .map(drop)
    }

    fn directory(
        &mut self,
        dir: &[Vec<u8>],
        base: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), ExtractError> {
        let cname = cstring(base, name)?;
        let parent = self.parent(dir, name)?;
        match sys::mkdirat(parent.as_fd(), &cname, 0o755) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let st =
                    sys::fstatat(parent.as_fd(), &cname).map_err(|cause| ExtractError::Io {
                        entry: name.into(),
                        step: "checking an earlier entry",
                        cause,
                    })?;
                if st.kind() != sys::FileKind::Dir {
                    self.create(dir, base, name, "creating a directory", |p, n| {
                        sys::mkdirat(p, n, 0o755)
                    })?;
                }
            }
            Err(cause) => {
                return Err(ExtractError::Io {
                    entry: name.into(),
                    step: "creating a directory",
                    cause,
                });
            }
        }
        let mut path = dir.to_vec();
        path.push(base.to_vec());
        self.dirs.insert(
            path,
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        // Owner and xattrs now; mode and mtime at the end.
        let parent = self.parent(dir, name)?;
        self.owner_xattrs(parent.as_fd(), &cname, meta, name, "dir")
    }

    /// Owner (or its record, rootless) and xattrs of a directory or node.
    fn owner_xattrs(
        &mut self,
        parent: BorrowedFd<'_>,
        cname: &std::ffi::CStr,
        meta: &Meta,
        name: &str,
        kind: &str,
    ) -> Result<(), ExtractError> {
        let warnings = apply_owner_xattrs(parent, cname, meta, name, self.opts.privileged, kind)?;
        for w in warnings {
            self.warn(w);
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        dir: &[Vec<u8>],
        base: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), ExtractError> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd = self.create(dir, base, name, "creating a file", |p, n| {
            sys::openat(p, n, flags, 0o600)
        })?;
        let mut file = File::from(fd);
        let size = e.size();
        let mut done = 0u64;
        if self.buf.is_empty() {
            self.buf = vec![0; 256 * 1024];
        }
        while done < size {
            let want = (size - done).min(self.buf.len() as u64) as usize;
            let n = e
                .read(&mut self.buf[..want])
                .map_err(|cause| ExtractError::Read {
                    entry: Some(name.into()),
                    cause,
                })?;
            if n == 0 {
                return Err(ExtractError::Truncated {
                    entry: Some(name.into()),
                });
            }
            file.write_all(&self.buf[..n])
                .map_err(|c| ExtractError::Io {
                    entry: name.into(),
                    step: "writing file data",
                    cause: c.into(),
                })?;
            done += n as u64;
        }
        self.stats.content_bytes += size;
        let io = |step: &'static str| {
            let entry = name.to_string();
            move |c: io::Error| ExtractError::Io {
                entry,
                step,
                cause: c.into(),
            }
        };
        let mut recorded = false;
        if self.opts.privileged {
            std::os::unix::fs::fchown(&file, Some(meta.uid as u32), Some(meta.gid as u32))
                .map_err(io("setting the owner"))?;
        } else if meta.uid != 0 || meta.gid != 0 {
            recorded = true;
        }
        // After chown, which clears setuid/setgid.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode))
            .map_err(io("setting the mode"))?;
        let cname = cstring(base, name)?;
        let parent = self.parent(dir, name)?;
        let mut warnings = set_xattrs(parent.as_fd(), &cname, &meta.xattrs, name);
        if recorded {
            let v = override_stat(meta.uid, meta.gid, meta.mode, "file");
            if let Err(e) = set_xattr(
                parent.as_fd(),
                &cname,
                "user.containers.override_stat",
                v.as_bytes(),
            ) {
                warnings.push(format!(
                    "{name}: cannot record owner {}:{}: {e}",
                    meta.uid, meta.gid
                ));
            }
        }
        for w in warnings {
            self.warn(w);
        }
        file.set_times(std::fs::FileTimes::new().set_modified(to_system_time(meta.mtime)))
            .map_err(io("setting the mtime"))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        dir: &[Vec<u8>],
        base: &[u8],
        target: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), ExtractError> {
        // The target is kept as it is: nothing here ever follows it, and an
        // absolute target resolves inside the container's root at run time.
        let ctarget = cstring(target, name)?;
        self.create(dir, base, name, "creating a symlink", |p, n| {
            sys::symlinkat(&ctarget, p, n)
        })?;
        let cname = cstring(base, name)?;
        let privileged = self.opts.privileged;
        let parent = self.parent(dir, name)?;
        let parent = parent.as_fd();
        if privileged {
            sys::fchownat(parent, &cname, meta.uid as u32, meta.gid as u32).map_err(|cause| {
                ExtractError::Io {
                    entry: name.into(),
                    step: "setting the owner",
                    cause,
                }
            })?;
        }
        let warnings = set_xattrs(parent, &cname, &meta.xattrs, name);
        sys::utimensat(parent, &cname, SetTime::Omit, SetTime::At(meta.mtime)).map_err(
            |cause| ExtractError::Io {
                entry: name.into(),
                step: "setting the mtime",
                cause,
            },
        )?;
        for w in warnings {
            self.warn(w);
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        dir: &[Vec<u8>],
        base: &[u8],
        target: &[u8],
        name: &str,
    ) -> Result<(), ExtractError> {
        let tname = lossy(target);
        let bad = |why: &str| ExtractError::BadHardlink {
            entry: name.into(),
            target: tname.clone(),
            why: why.into(),
        };
        let tcomps = match normalize(target) {
            Ok(c) => c,
            Err(PathProblem::Traversal) => return Err(bad("the target leaves the layer ('..')")),
            Err(PathProblem::Nul) => return Err(bad("NUL byte in the target")),
        };
        let Some((tbase, tdir)) = tcomps.split_last() else {
            return Err(bad("the target is the layer root"));
        };
        let mut me = dir.to_vec();
        me.push(base.to_vec());
        if me == tcomps {
            return Ok(());
        }
        let tparent = match self.walk(tdir, false, name) {
            Ok(fd) => fd,
            Err(WalkError::Missing(_)) => return Err(bad("no such entry earlier in this layer")),
            Err(WalkError::Symlink(c)) => {
                return Err(bad(&format!("the target goes through symlink '{c}'")));
            }
            Err(WalkError::NotDir(c)) => return Err(bad(&format!("'{c}' is not a directory"))),
            Err(WalkError::Extract(e)) => return Err(e),
        };
        let ctbase = cstring(tbase, name)?;
        match sys::fstatat(tparent.as_fd(), &ctbase) {
            Ok(st) if st.kind() == sys::FileKind::Dir => {
                return Err(bad("the target is a directory"));
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => return Err(bad("no such entry earlier in this layer")),
            Err(cause) => {
                return Err(ExtractError::Io {
                    entry: name.into(),
                    step: "checking the hard link target",
                    cause,
                });
            }
        }
        let tp = tparent.as_fd();
        self.create(dir, base, name, "creating a hard link", |p, n| {
            sys::linkat(tp, &ctbase, p, n)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn special(
        &mut self,
        kind: EntryType,
        major: u32,
        minor: u32,
        dir: &[Vec<u8>],
        base: &[u8],
        meta: &Meta,
        name: &str,
    ) -> Result<(), ExtractError> {
        if kind == EntryType::Char && major == 0 && minor == 0 {
            // The kernel's whiteout: store it in the layer's encoding.
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(base);
            return self.create_empty(dir, &wh, name);
        }
        let (fmt, tname) = match kind {
            EntryType::Char => (libc::S_IFCHR, format!("char-{major}-{minor}")),
            EntryType::Block => (libc::S_IFBLK, format!("block-{major}-{minor}")),
            _ => (libc::S_IFIFO, "pipe".to_string()),
        };
        let rdev = libc::makedev(major, minor);
        let want_node = kind == EntryType::Fifo || self.opts.privileged;
        let made = if want_node {
            self.create(dir, base, name, "creating a device node", |p, n| {
                sys::mknodat(p, n, fmt | (meta.mode & 0o7777), rdev)
            })
        } else {
            Err(ExtractError::Io {
                entry: name.into(),
                step: "creating a device node",
                cause: Errno::EPERM,
            })
        };
        let cname = cstring(base, name)?;
        match made {
            Ok(()) => {
                let parent = self.parent(dir, name)?;
                let parent = parent.as_fd();
                self.owner_xattrs(parent, &cname, meta, name, &tname)?;
                sys::fchmodat(parent, &cname, meta.mode).map_err(|cause| ExtractError::Io {
                    entry: name.into(),
                    step: "setting the mode",
                    cause,
                })?;
                let _ = sys::utimensat(parent, &cname, SetTime::Omit, SetTime::At(meta.mtime));
                Ok(())
            }
            Err(ExtractError::Io {
                cause: Errno::EPERM,
                ..
            }) => {
                // Rootless: an empty file that says what it stands for.
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
                self.create(dir, base, name, "recording a device node", |p, n| {
                    sys::openat(p, n, flags, 0)
                })?;
                let parent = self.parent(dir, name)?;
                let v = override_stat(meta.uid, meta.gid, meta.mode, &tname);
                set_xattr(
                    parent.as_fd(),
                    &cname,
                    "user.containers.override_stat",
                    v.as_bytes(),
                )
                .map_err(|cause| ExtractError::Io {
                    entry: name.into(),
                    step: "recording a device node",
                    cause,
                })?;
                self.warn(format!(
                    "{name}: device {tname} recorded, not created (not root)"
                ));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Applies deferred directory modes and mtimes, deepest first.
    fn finish_dirs(&mut self) -> Result<(), ExtractError> {
        self.cache = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (path, m) in dirs.iter().rev() {
            let name = join(path);
            let fd = if path.is_empty() {
                sys::openat(
                    self.root.as_fd(),
                    c".",
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )
            } else {
                let (base, dir) = path
                    .split_last()
                    .map_or((&[][..], &[][..]), |(b, d)| (b.as_slice(), d));
                let parent = self
                    .walk(dir, false, &name)
                    .map_err(|e| e.into_error(&name))?;
                let cname = cstring(base, &name)?;
                sys::openat(
                    parent.as_fd(),
                    &cname,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            }
            .map_err(|cause| ExtractError::Io {
                entry: name.clone(),
                step: "opening a directory to set its mode",
                cause,
            })?;
            let f = File::from(fd);
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(m.mode))
                .map_err(|c| ExtractError::Io {
                    entry: name.clone(),
                    step: "setting the mode",
                    cause: c.into(),
                })?;
            f.set_times(std::fs::FileTimes::new().set_modified(to_system_time(m.mtime)))
                .map_err(|c| ExtractError::Io {
                    entry: name.clone(),
                    step: "setting the mtime",
                    cause: c.into(),
                })?;
        }
        Ok(())
    }
}

/// A failure to reach a directory, refined by the caller.
enum WalkError {
    Missing(String),
    Symlink(String),
    NotDir(String),
    Extract(ExtractError),
}

impl WalkError {
    fn into_error(self, entry: &str) -> ExtractError {
        match self {
            WalkError::Missing(component) => ExtractError::Io {
                entry: format!("{entry} (parent {component})"),
                step: "opening a parent directory",
                cause: Errno::ENOENT,
            },
            WalkError::Symlink(component) => ExtractError::ThroughSymlink {
                entry: entry.into(),
                component,
            },
            WalkError::NotDir(component) => ExtractError::ParentNotDir {
                entry: entry.into(),
                component,
            },
            WalkError::Extract(e) => e,
        }
    }
}

fn to_system_time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec as u32)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(t.nsec as u64)
    }
}

fn set_xattr(
    parent: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    key: &str,
    value: &[u8],
) -> Result<(), Errno> {
    let path = sys::proc_fd_path(parent, Some(name));
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    sys::lsetxattr(&path, &key, value, 0)
}

/// Sets the kept xattrs; a failure is a warning (the file system may not
/// support a namespace, e.g. user.* on symlinks).
fn set_xattrs(
    parent: BorrowedFd<'_>,
    cname: &std::ffi::CStr,
    xattrs: &[(String, Vec<u8>)],
    entry: &str,
) -> Vec<String> {
    let mut w = Vec::new();
    for (k, v) in xattrs {
        if let Err(e) = set_xattr(parent, cname, k, v) {
            w.push(format!("{entry}: cannot set xattr {k}: {e}"));
        }
    }
    w
}

/// Owner (or its record, rootless) and xattrs; returns the warnings.
fn apply_owner_xattrs(
    parent: BorrowedFd<'_>,
    cname: &std::ffi::CStr,
    meta: &Meta,
    name: &str,
    privileged: bool,
    kind: &str,
) -> Result<Vec<String>, ExtractError> {
    let mut w = Vec::new();
    if privileged {
        sys::fchownat(parent, cname, meta.uid as u32, meta.gid as u32).map_err(|cause| {
            ExtractError::Io {
                entry: name.into(),
                step: "setting the owner",
                cause,
            }
        })?;
    } else if meta.uid != 0 || meta.gid != 0 {
        let v = override_stat(meta.uid, meta.gid, meta.mode, kind);
        if let Err(e) = set_xattr(parent, cname, "user.containers.override_stat", v.as_bytes()) {
            w.push(format!(
                "{name}: cannot record owner {}:{}: {e}",
                meta.uid, meta.gid
            ));
        }
    }
    w.extend(set_xattrs(parent, cname, &meta.xattrs, name));
    Ok(w)
}

/// Removes `name` in `parent`, recursively for a directory, never
/// following symlinks.
pub fn remove_at(parent: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<(), Errno> {
    let st = sys::fstatat(parent, name)?;
    if st.kind() != sys::FileKind::Dir {
        return sys::unlinkat(parent, name, 0);
    }
    // Make sure we may list and empty it (a read-only directory, rootless).
    let _ = sys::fchmodat(parent, name, 0o700);
    let fd = sys::openat(
        parent,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    for e in sys::read_dir(fd.as_fd())? {
        let c = CString::new(e.name).map_err(|_| Errno::EINVAL)?;
        remove_at(fd.as_fd(), &c)?;
    }
    sys::unlinkat(parent, name, libc::AT_REMOVEDIR)
}

/// Extracts the tar stream `reader` into the empty directory `root`.
///
/// On error the directory holds a partial tree: the caller removes it.
pub fn extract<R: Read>(
    reader: R,
    root: BorrowedFd<'_>,
    opts: ExtractOptions,
) -> Result<ExtractStats, ExtractError> {
    let root = sys::openat(root, c".", libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|cause| {
        ExtractError::Io {
            entry: ".".into(),
            step: "opening the layer directory",
            cause,
        }
    })?;
    let mut x = Extractor {
        root: Rc::new(root),
        opts,
        cache: None,
        dirs: BTreeMap::new(),
        stats: ExtractStats::default(),
        buf: Vec::new(),
    };
    x.extract_all(reader)?;
    Ok(x.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let ok = |v: &[&str]| Ok(v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>());
        type Want = Result<Vec<Vec<u8>>, PathProblem>;
        let cases: Vec<(&[u8], Want)> = vec![
            (b"a/b", ok(&["a", "b"])),
            (b"./a//b/", ok(&["a", "b"])),
            (b"/etc/passwd", ok(&["etc", "passwd"])),
            (b"./", ok(&[])),
            (b".", ok(&[])),
            (b"a/../b", Err(PathProblem::Traversal)),
            (b"../x", Err(PathProblem::Traversal)),
            (b"a/..", Err(PathProblem::Traversal)),
            (b"a\0b", Err(PathProblem::Nul)),
            (b"...", ok(&["..."])),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{}", lossy(input));
        }
    }

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Result<NameKind, ()>)] = &[
            (b"foo", Ok(NameKind::Plain)),
            (b"a.wh.b", Ok(NameKind::Plain)),
            (b".wh.foo", Ok(NameKind::Whiteout)),
            (b".wh..hidden", Ok(NameKind::Whiteout)),
            (b".wh..wh..opq", Ok(NameKind::Opaque)),
            (b".wh.", Err(())),
            (b".wh..", Err(())),
            (b".wh...", Err(())),
            (b".wh..wh.foo", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(classify(input).map_err(|_| ()), *want, "{}", lossy(input));
        }
    }

    #[test]
    fn xattr_table() {
        let cases: &[(&str, bool, bool)] = &[
            ("user.mime_type", false, true),
            ("trusted.overlay.opaque", true, false),
            ("trusted.foo", true, false),
            ("user.overlay.opaque", false, false),
            ("user.overlay.opaque", true, false),
            ("user.fuseoverlayfs.origin", true, false),
            ("user.containers.override_stat", false, false),
            ("security.capability", true, true),
            ("security.capability", false, false),
            ("system.posix_acl_access", false, true),
            ("system.nfs4_acl", true, false),
            ("weird.ns", true, false),
        ];
        for (name, privileged, keep) in cases {
            let got = xattr_policy(name, *privileged) == XattrVerdict::Keep;
            assert_eq!(got, *keep, "{name} privileged={privileged}");
        }
    }

    #[test]
    fn pax_time_table() {
        let t = |sec, nsec| Some(Timespec { sec, nsec });
        let cases: &[(&str, Option<Timespec>)] = &[
            ("1700000000", t(1_700_000_000, 0)),
            ("1700000000.5", t(1_700_000_000, 500_000_000)),
            ("1.123456789123", t(1, 123_456_789)),
            ("-1.5", t(-2, 500_000_000)),
            ("x", None),
            ("1.x", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_pax_time(input.as_bytes()), *want, "{input}");
        }
    }

    #[test]
    fn override_stat_format() {
        assert_eq!(override_stat(0, 0, 0o644, "char-1-3"), "0:0:0644:char-1-3");
        assert_eq!(
            override_stat(1000, 5, 0o104755, "file"),
            "1000:5:04755:file"
        );
    }
}
