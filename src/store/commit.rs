//! `commit`: a container's upper layer becomes a new image layer, and a new
//! image whose config extends the parent's.
//!
//! Owns: turning an upper directory into an OCI layer tar ([`write_layer`]),
//! storing that layer (extracted through the store's normal extractor, so
//! it is verified like any loaded layer) and writing the new config,
//! manifest and tag. Does not own: parsing `-c` ([`super::change`]), finding
//! the container or deciding whether it may be committed (`cli::commit`).
//!
//! The layer tar:
//! - whiteouts (a character device 0/0, a `.wh.NAME` file, or an empty file
//!   with an `overlay.whiteout` xattr) become empty files `.wh.NAME`; an
//!   opaque directory (`trusted.overlay.opaque`, `user.overlay.opaque`,
//!   `user.fuseoverlayfs.opaque` = `y`, or a `.wh..wh..opq` file) gets a
//!   `.wh..wh..opq` entry right after its own;
//! - hard links inside the layer are tar links (type `1`) to the first path
//!   in tar order; xattrs are PAX `SCHILY.xattr.NAME` records, except the
//!   overlay's own (`trusted.overlay.*`, `user.overlay.*`,
//!   `user.fuseoverlayfs.*`, `user.layerfs.*`) and
//!   `user.containers.override_stat`, whose owner and mode replace the
//!   file's own (the rootless record of a foreign owner);
//! - deterministic: entries sorted by name bytes, depth first, a directory
//!   before its contents; GNU headers with mode, uid, gid, mtime (seconds)
//!   and size only (no user/group names, atime or ctime); whiteouts and
//!   opaque markers have mode 0644, owner 0:0 and mtime 0. The same changes
//!   give the same diffID.
//! - a directory renamed by redirect (`overlay.redirect`, which OCI layers
//!   cannot carry) becomes an opaque directory holding its whole merged
//!   contents, read through [`super::merged::MergedView`] over the upper
//!   layer and the image's layers; its old name is a whiteout already;
//! - a metadata-only copy (`overlay.metacopy`: the upper file holds the
//!   metadata, the data is still below) gets its data from the merged view,
//!   never the upper file's holes;
//! - the files the runner bind-mounts (`etc/resolv.conf`, `etc/hosts`,
//!   `etc/hostname`, and whiteouts of them) never enter the tar.
//!
//! Storage: the layer blob is stored **uncompressed**
//! (`application/vnd.oci.image.layer.v1.tar`), so its digest equals its
//! diffID: nothing depends on a compressor's version for determinism, and
//! `save` archives read the same through `oci-archive:` and
//! `docker-archive:`. The cost is disk space.
//!
//! Invariants: parent layers are shared (the new manifest points at the
//! parent's blobs); the new layer appears in `layers/` only complete
//! (built in `tmp/`, renamed into place after extraction) and is reused when
//! the same diffID is already there.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_json::{Map, Value};
use tar::{EntryType, Header};

use super::change::{self, Change};
use super::digest::{DiffId, Digest, HashingReader};
use super::extract::{self, ExtractError, ExtractOptions};
use super::merged::{MergedError, MergedView};
use super::oci::{self, Descriptor, ImageConfig, Manifest};
use super::reference::Reference;
use super::{LayerInfo, Lock, Store, StoreError, WorkDir, format};
use crate::overlay::rules::{self, NameClass};
use crate::overlay::{Ino, LayerIdx};
use crate::sys::{self, FileKind, Stat};

/// Paths (relative to the layer root) the runner injects; never committed.
pub const RUNNER_INJECTED: [&str; 3] = ["etc/resolv.conf", "etc/hosts", "etc/hostname"];

/// The overlay's metadata, not the file's: never written into a layer.
fn is_overlay_xattr(name: &str) -> bool {
    crate::overlay::fs::is_internal_xattr(name.as_bytes())
        || name.starts_with(extract::OVERRIDE_STAT)
}

/// Why a commit failed; variants name the path and the cause.
#[derive(Debug)]
pub enum CommitError {
    Store(StoreError),
    /// Reading the upper layer.
    Upper {
        path: PathBuf,
        cause: io::Error,
    },
    /// Opening the merged view of the upper layer over the image's layers.
    MergedView(MergedError),
    /// Reading a path through the merged view (a renamed directory's
    /// contents, a metadata-only copy's data).
    Merged {
        path: PathBuf,
        cause: io::Error,
    },
    /// Writing the layer tar or the work directory.
    Work {
        path: PathBuf,
        step: &'static str,
        cause: io::Error,
    },
    /// The store's extractor refused the tar we wrote (a bug, or a name
    /// the OCI format cannot carry).
    Extract {
        path: PathBuf,
        cause: ExtractError,
    },
    /// The container's image config is gone from the store.
    ParentGone {
        container: String,
        image: String,
    },
    /// A parent layer (or its blob) is gone from the store.
    ParentLayer {
        container: String,
        diff_id: DiffId,
    },
    Json {
        what: &'static str,
        cause: serde_json::Error,
    },
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::Store(e) => e.fmt(f),
            CommitError::Upper { path, cause } => {
                write!(f, "cannot read {}: {cause}", path.display())
            }
            CommitError::MergedView(e) => write!(
                f,
                "cannot read the container's merged view (needed for a renamed directory or a metadata-only copy): {e}"
            ),
            CommitError::Merged { path, cause } => write!(
                f,
                "cannot read {} through the merged view: {cause}",
                path.display()
            ),
            CommitError::Work { path, step, cause } => {
                write!(f, "{step} {}: {cause}", path.display())
            }
            CommitError::Extract { path, cause } => write!(
                f,
                "the store refused the committed layer {}: {cause}",
                path.display()
            ),
            CommitError::ParentGone { container, image } => write!(
                f,
                "cannot commit container {container}: its image {image} was removed from the store (its config is gone)"
            ),
            CommitError::ParentLayer { container, diff_id } => write!(
                f,
                "cannot commit container {container}: layer {diff_id} of its image is missing from the store"
            ),
            CommitError::Json { what, cause } => write!(f, "cannot encode the {what}: {cause}"),
        }
    }
}

impl std::error::Error for CommitError {}

impl From<StoreError> for CommitError {
    fn from(e: StoreError) -> Self {
        CommitError::Store(e)
    }
}

/// What [`write_layer`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub content_bytes: u64,
}

/// One name in an upper directory, as it goes into the tar.
enum Item {
    Whiteout,
    Object(PathBuf, fs::Metadata),
}

/// A hard-linked file: by (dev, ino) in the upper layer, by merged inode
/// when the merged view serves it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum LinkKey {
    Upper(u64, u64),
    Merged(u64),
}

/// Owner and mode of an entry, after `override_stat`.
struct Owner {
    uid: u64,
    gid: u64,
    mode: u32,
}

fn lxattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, io::Error> {
    let c = sys::cstr(path.as_os_str()).map_err(|e| e.to_io())?;
    let names = match sys::llistxattr(&c) {
        Ok(n) => n,
        Err(e) if e.0 == libc::ENOTSUP => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.to_io()),
    };
    let mut out = BTreeMap::new();
    for n in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(n) else {
            continue;
        };
        let Ok(cn) = CString::new(n) else { continue };
        match sys::lgetxattr(&c, &cn) {
            Ok(v) => {
                out.insert(name.to_string(), v);
            }
            Err(e) if sys::xattr_absent(e) => {}
            Err(e) => return Err(e.to_io()),
        }
    }
    Ok(out)
}

/// Parses `UID:GID:0MODE:TYPE` (containers/storage's override_stat).
fn parse_override(v: &[u8]) -> Option<(u64, u64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut f = s.split(':');
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    let mode = u32::from_str_radix(f.next()?, 8).ok()?;
    Some((uid, gid, mode))
}

fn is_opaque(x: &BTreeMap<String, Vec<u8>>) -> bool {
    rules::OPAQUE_XATTRS.iter().any(|n| {
        n.to_str()
            .ok()
            .and_then(|n| x.get(n))
            .is_some_and(|v| v.as_slice() == b"y")
    })
}

fn is_whiteout_xattr(x: &BTreeMap<String, Vec<u8>>) -> bool {
    x.contains_key("trusted.overlay.whiteout") || x.contains_key("user.overlay.whiteout")
}

/// PAX records (`LEN KEY=VALUE\n`, LEN counting itself).
fn pax_records(xattrs: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in xattrs {
        let key = format!("SCHILY.xattr.{k}");
        let body = key.len() + v.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn is_excluded(rel: &str) -> bool {
    RUNNER_INJECTED.contains(&rel)
}

fn has_any(x: &BTreeMap<String, Vec<u8>>, names: &[&std::ffi::CStr]) -> bool {
    names
        .iter()
        .any(|n| n.to_str().is_ok_and(|n| x.contains_key(n)))
}

/// Writes the upper directory `upper` as an OCI layer tar into `out`.
/// `lowers` (top first) are the layers it was mounted over: renamed
/// directories and metadata-only copies are read through them.
pub fn write_layer<W: Write>(
    upper: &Path,
    lowers: &[PathBuf],
    out: W,
) -> Result<LayerStats, CommitError> {
    let mut w = LayerWriter {
        tar: tar::Builder::new(out),
        links: HashMap::new(),
        stats: LayerStats::default(),
        upper: upper.to_path_buf(),
        lowers: lowers.to_vec(),
        merged: None,
    };
    w.tar.mode(tar::HeaderMode::Deterministic);
    w.dir(upper, "", false)?;
    w.tar.finish().map_err(|cause| CommitError::Work {
        path: upper.to_path_buf(),
        step: "cannot write the layer tar of",
        cause,
    })?;
    Ok(w.stats)
}

struct LayerWriter<W: Write> {
    tar: tar::Builder<W>,
    /// Multiply linked files → their first tar name.
    links: HashMap<LinkKey, String>,
    stats: LayerStats,
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    /// Opened on first need: most upper layers have neither renamed
    /// directories nor metadata-only copies.
    merged: Option<Rc<MergedView>>,
}

impl<W: Write> LayerWriter<W> {
    fn upper_err(path: &Path) -> impl FnOnce(io::Error) -> CommitError + '_ {
        move |cause| CommitError::Upper {
            path: path.to_path_buf(),
            cause,
        }
    }

    fn merged_err(rel: &str) -> impl FnOnce(sys::Errno) -> CommitError + '_ {
        move |e| CommitError::Merged {
            path: PathBuf::from(format!("/{rel}")),
            cause: e.to_io(),
        }
    }

    fn merged(&mut self) -> Result<Rc<MergedView>, CommitError> {
        if let Some(m) = &self.merged {
            return Ok(m.clone());
        }
        let mut layers = Vec::with_capacity(self.lowers.len() + 1);
        layers.push(self.upper.clone());
        layers.extend(self.lowers.iter().cloned());
        let m = Rc::new(MergedView::open(&layers).map_err(CommitError::MergedView)?);
        self.merged = Some(m.clone());
        Ok(m)
    }

    fn write_err(name: &str) -> impl FnOnce(io::Error) -> CommitError + '_ {
        move |cause| CommitError::Work {
            path: PathBuf::from(name),
            step: "cannot write the tar entry",
            cause,
        }
    }

    /// An empty regular file with fixed metadata (whiteouts, markers).
    fn marker(&mut self, name: &str) -> Result<(), CommitError> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.tar
            .append_data(&mut h, name, io::empty())
            .map_err(Self::write_err(name))?;
        self.stats.entries += 1;
        Ok(())
    }

    /// Writes the entries of `dir` (tar prefix `rel`, empty or ending in
    /// `/`); `marked`: its opaque marker is already written.
    fn dir(&mut self, dir: &Path, rel: &str, marked: bool) -> Result<(), CommitError> {
        let mut items: BTreeMap<Vec<u8>, (String, Item)> = BTreeMap::new();
        let mut opaque = false;
        for e in fs::read_dir(dir).map_err(Self::upper_err(dir))? {
            let e = e.map_err(Self::upper_err(dir))?;
            let name = e.file_name();
            let nb = name.as_bytes();
            let path = e.path();
            let Ok(name_str) = std::str::from_utf8(nb) else {
                return Err(CommitError::Upper {
                    path,
                    cause: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the name is not UTF-8, which layer tars here cannot carry",
                    ),
                });
            };
            match rules::classify(nb) {
                NameClass::OpaqueMarker => opaque = true,
                NameClass::Reserved => {}
                NameClass::Whiteout(target) => {
                    let target = String::from_utf8_lossy(target).into_owned();
                    items.insert(nb.to_vec(), (target, Item::Whiteout));
                }
                NameClass::Plain => {
                    let md = fs::symlink_metadata(&path).map_err(Self::upper_err(&path))?;
                    let ft = md.file_type();
                    use std::os::unix::fs::FileTypeExt;
                    let whiteout = (ft.is_char_device() && md.rdev() == 0)
                        || (ft.is_file()
                            && md.len() == 0
                            && is_whiteout_xattr(&lxattrs(&path).map_err(Self::upper_err(&path))?));
                    if whiteout {
                        let mut wh = rules::WH_PREFIX.to_vec();
                        wh.extend_from_slice(nb);
                        items.insert(wh, (name_str.to_string(), Item::Whiteout));
                    } else {
                        items.insert(nb.to_vec(), (name_str.to_string(), Item::Object(path, md)));
                    }
                }
            }
        }
        if opaque && !marked && !rel.is_empty() {
            self.marker(&format!(
                "{rel}{}",
                String::from_utf8_lossy(rules::OPAQUE_MARKER)
            ))?;
        }
        for (tar_name, (target, item)) in items {
            if is_excluded(&format!("{rel}{target}")) {
                continue;
            }
            let tar_name = format!("{rel}{}", String::from_utf8_lossy(&tar_name));
            match item {
                Item::Whiteout => self.marker(&tar_name)?,
                Item::Object(path, md) => self.object(&path, &md, &tar_name, None)?,
            }
        }
        Ok(())
    }

    /// For a multiply linked file: writes a tar link to the first name seen
    /// (true), or remembers `name` as that first name (false).
    fn link_to_first(
        &mut self,
        key: LinkKey,
        h: &mut Header,
        name: &str,
    ) -> Result<bool, CommitError> {
        match self.links.get(&key) {
            Some(first) => {
                h.set_entry_type(EntryType::Link);
                let first = first.clone();
                self.tar
                    .append_link(h, name, first)
                    .map_err(Self::write_err(name))?;
                Ok(true)
            }
            None => {
                self.links.insert(key, name.to_string());
                Ok(false)
            }
        }
    }

    /// Writes the PAX record of `xattrs`, if any, for the next entry.
    fn pax(&mut self, xattrs: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<(), CommitError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let data = pax_records(xattrs);
        let mut ph = Header::new_gnu();
        ph.set_entry_type(EntryType::XHeader);
        ph.set_mode(0o644);
        ph.set_mtime(0);
        ph.set_size(data.len() as u64);
        ph.set_path("PaxHeader").map_err(Self::write_err(name))?;
        ph.set_cksum();
        self.tar
            .append(&ph, data.as_slice())
            .map_err(Self::write_err(name))
    }

    /// The header every entry starts from.
    fn header(owner: &Owner, mtime: i64) -> Header {
        let mut h = Header::new_gnu();
        h.set_mode(owner.mode & 0o7777);
        h.set_uid(owner.uid);
        h.set_gid(owner.gid);
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    /// A device, fifo or socket (sockets cannot be archived: docker skips
    /// them too).
    fn special(
        &mut self,
        mut h: Header,
        kind: FileKind,
        rdev: u64,
        name: &str,
    ) -> Result<(), CommitError> {
        let kind = match kind {
            FileKind::CharDev => EntryType::Char,
            FileKind::BlockDev => EntryType::Block,
            FileKind::Fifo => EntryType::Fifo,
            _ => {
                self.stats.entries -= 1;
                return Ok(());
            }
        };
        h.set_entry_type(kind);
        if kind != EntryType::Fifo {
            h.set_device_major(libc::major(rdev))
                .map_err(Self::write_err(name))?;
            h.set_device_minor(libc::minor(rdev))
                .map_err(Self::write_err(name))?;
        }
        self.tar
            .append_data(&mut h, name, io::empty())
            .map_err(Self::write_err(name))
    }

    /// Writes an upper-layer object. `merged`: its inode in the merged view
    /// when it lies inside a renamed directory (whose contents are written
    /// merged).
    fn object(
        &mut self,
        path: &Path,
        md: &fs::Metadata,
        name: &str,
        merged: Option<Ino>,
    ) -> Result<(), CommitError> {
        let mut xattrs = lxattrs(path).map_err(Self::upper_err(path))?;
        let owner = match xattrs
            .get(extract::OVERRIDE_STAT)
            .and_then(|v| parse_override(v))
        {
            Some((uid, gid, mode)) => Owner { uid, gid, mode },
            None => Owner {
                uid: md.uid().into(),
                gid: md.gid().into(),
                mode: md.mode(),
            },
        };
        let ft = md.file_type();
        let opaque = ft.is_dir() && is_opaque(&xattrs);
        let redirect = ft.is_dir() && has_any(&xattrs, &rules::REDIRECT_XATTRS);
        let metacopy = ft.is_file() && has_any(&xattrs, &rules::METACOPY_XATTRS);
        xattrs.retain(|k, _| !is_overlay_xattr(k));
        let mut h = Self::header(&owner, md.mtime());
        self.pax(&xattrs, name)?;
        self.stats.entries += 1;
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            let dname = format!("{name}/");
            self.tar
                .append_data(&mut h, &dname, io::empty())
                .map_err(Self::write_err(name))?;
            // Inside a renamed directory everything is written merged, and
            // the renamed directory's marker hides what is below already.
            if merged.is_none() && (opaque || redirect) {
                self.marker(&format!(
                    "{dname}{}",
                    String::from_utf8_lossy(rules::OPAQUE_MARKER)
                ))?;
            }
            let ino = match (merged, redirect) {
                (Some(ino), _) => ino,
                (None, true) => {
                    let m = self.merged()?;
                    m.lookup(name.as_bytes()).map_err(Self::merged_err(name))?.0
                }
                (None, false) => return self.dir(path, &dname, opaque),
            };
            return self.merged_dir(ino, Some(path), &dname);
        }
        if ft.is_file()
            && md.nlink() > 1
            && self.link_to_first(LinkKey::Upper(md.dev(), md.ino()), &mut h, name)?
        {
            return Ok(());
        }
        if ft.is_file() {
            h.set_entry_type(EntryType::Regular);
            h.set_size(md.len());
            self.stats.content_bytes += md.len();
            let f = if metacopy {
                let m = self.merged()?;
                let ino = match merged {
                    Some(ino) => ino,
                    None => Ino(m
                        .lookup(name.as_bytes())
                        .map_err(Self::merged_err(name))?
                        .1
                        .ino),
                };
                m.reader(ino).map_err(Self::merged_err(name))?
            } else {
                File::open(path).map_err(Self::upper_err(path))?
            };
            // A file that changed size under us would corrupt the tar: the
            // reader is limited to the header's size and a short read fails.
            let r = io::Read::take(f, md.len());
            return self
                .tar
                .append_data(&mut h, name, r)
                .map_err(Self::write_err(name));
        }
        if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(path).map_err(Self::upper_err(path))?;
            return self
                .tar
                .append_link(&mut h, name, target)
                .map_err(Self::write_err(name));
        }
        let kind = if ft.is_char_device() {
            FileKind::CharDev
        } else if ft.is_block_device() {
            FileKind::BlockDev
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else {
            FileKind::Socket
        };
        self.special(h, kind, md.rdev(), name)
    }

    /// Writes the merged contents of directory `dir` (tar prefix `rel`,
    /// ending in `/`): names the upper layer serves from `upper_dir`, the
    /// others from the merged view.
    fn merged_dir(
        &mut self,
        dir: Ino,
        upper_dir: Option<&Path>,
        rel: &str,
    ) -> Result<(), CommitError> {
        let m = self.merged()?;
        let items = m.list(dir).map_err(Self::merged_err(rel))?;
        for item in items {
            let Ok(name) = std::str::from_utf8(&item.name) else {
                return Err(CommitError::Merged {
                    path: PathBuf::from(format!("/{rel}{}", String::from_utf8_lossy(&item.name))),
                    cause: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the name is not UTF-8, which layer tars here cannot carry",
                    ),
                });
            };
            let child = format!("{rel}{name}");
            if is_excluded(&child) {
                continue;
            }
            let st = m.child(dir, &item.name).map_err(Self::merged_err(&child))?;
            match upper_dir {
                Some(ud) if item.layer == LayerIdx(0) => {
                    let path = ud.join(name);
                    let md = fs::symlink_metadata(&path).map_err(Self::upper_err(&path))?;
                    self.object(&path, &md, &child, Some(Ino(st.ino)))?;
                }
                _ => self.merged_object(&m, &st, &child)?,
            }
        }
        Ok(())
    }

    /// Writes an object the merged view serves from a layer below.
    fn merged_object(&mut self, m: &MergedView, st: &Stat, name: &str) -> Result<(), CommitError> {
        let ino = Ino(st.ino);
        let mut xattrs = BTreeMap::new();
        for (k, v) in m.xattrs(ino).map_err(Self::merged_err(name))? {
            if let Ok(k) = String::from_utf8(k) {
                xattrs.insert(k, v);
            }
        }
        let owner = Owner {
            uid: st.uid.into(),
            gid: st.gid.into(),
            mode: st.mode,
        };
        let mut h = Self::header(&owner, st.mtime.sec);
        self.pax(&xattrs, name)?;
        self.stats.entries += 1;
        match st.kind() {
            FileKind::Dir => {
                h.set_entry_type(EntryType::Directory);
                let dname = format!("{name}/");
                self.tar
                    .append_data(&mut h, &dname, io::empty())
                    .map_err(Self::write_err(name))?;
                self.merged_dir(ino, None, &dname)
            }
            FileKind::Regular => {
                if st.nlink > 1 && self.link_to_first(LinkKey::Merged(st.ino), &mut h, name)? {
                    return Ok(());
                }
                h.set_entry_type(EntryType::Regular);
                h.set_size(st.size);
                self.stats.content_bytes += st.size;
                let f = m.reader(ino).map_err(Self::merged_err(name))?;
                self.tar
                    .append_data(&mut h, name, io::Read::take(f, st.size))
                    .map_err(Self::write_err(name))
            }
            FileKind::Symlink => {
                h.set_entry_type(EntryType::Symlink);
                let target = m.readlink(ino).map_err(Self::merged_err(name))?;
                self.tar
                    .append_link(&mut h, name, target)
                    .map_err(Self::write_err(name))
            }
            kind => self.special(h, kind, st.rdev, name),
        }
    }
}

/// What [`commit`] needs to know.
pub struct CommitRequest<'a> {
    /// The container's upper directory.
    pub upper: &'a Path,
    /// Name of the container, for messages.
    pub container: &'a str,
    /// The container's image ID (`sha256:...`).
    pub image: &'a str,
    /// The container's command (history `created_by`).
    pub created_by: String,
    pub message: Option<String>,
    pub author: Option<String>,
    pub changes: &'a [Change],
    pub tag: Option<&'a Reference>,
}

/// What [`commit`] made.
#[derive(Debug, Clone)]
pub struct Committed {
    pub id: Digest,
    pub diff_id: DiffId,
    /// False when the store already had a layer with this diffID.
    pub new_layer: bool,
}

fn work_err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> CommitError + 'a {
    move |cause| CommitError::Work {
        path: path.to_path_buf(),
        step,
        cause,
    }
}

/// The parent config, raw and parsed, and its layers' records.
fn parent(
    store: &Store,
    req: &CommitRequest<'_>,
) -> Result<(Value, ImageConfig, Vec<LayerInfo>), CommitError> {
    let gone = || CommitError::ParentGone {
        container: req.container.into(),
        image: req.image.into(),
    };
    let id = Digest::parse(req.image.trim()).map_err(|_| gone())?;
    if !store.has_blob(&id) {
        return Err(gone());
    }
    let raw = store.read_blob(&id)?;
    let json_err = |cause| CommitError::Json {
        what: "parent image config",
        cause,
    };
    let config: ImageConfig = serde_json::from_slice(&raw).map_err(json_err)?;
    let value: Value = serde_json::from_slice(&raw).map_err(json_err)?;
    let mut layers = Vec::new();
    for d in &config.rootfs.diff_ids {
        let info = store
            .layer_info(d)?
            .filter(|i| store.has_blob(&i.blob.digest))
            .ok_or_else(|| CommitError::ParentLayer {
                container: req.container.into(),
                diff_id: d.clone(),
            })?;
        layers.push(info);
    }
    Ok((value, config, layers))
}

/// The new config: the parent's, with the layer, history entry and
/// changes added.
pub fn new_config(
    mut parent: Value,
    diff_id: &DiffId,
    created: &str,
    req: &CommitRequest<'_>,
) -> Value {
    let Some(obj) = parent.as_object_mut() else {
        return parent;
    };
    obj.insert("created".into(), Value::String(created.into()));
    if let Some(a) = &req.author {
        obj.insert("author".into(), Value::String(a.clone()));
    }
    let cfg = obj
        .entry("config")
        .or_insert_with(|| Value::Object(Map::new()));
    if !cfg.is_object() {
        *cfg = Value::Object(Map::new());
    }
    if let Value::Object(m) = cfg {
        for c in req.changes {
            change::apply(m, c);
        }
    }
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    if let Some(r) = rootfs.as_object_mut() {
        r.entry("type")
            .or_insert_with(|| Value::String("layers".into()));
        let ids = r.entry("diff_ids").or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = ids {
            a.push(Value::String(diff_id.to_string()));
        }
    }
    let mut h = Map::new();
    h.insert("created".into(), Value::String(created.into()));
    h.insert("created_by".into(), Value::String(req.created_by.clone()));
    if let Some(a) = &req.author {
        h.insert("author".into(), Value::String(a.clone()));
    }
    if let Some(m) = &req.message {
        h.insert("comment".into(), Value::String(m.clone()));
    }
    let history = obj.entry("history").or_insert_with(|| Value::Array(vec![]));
    if !history.is_array() {
        *history = Value::Array(vec![]);
    }
    if let Value::Array(a) = history {
        a.push(Value::Object(h));
    }
    parent
}

/// Commits an upper directory as a new image (under the store lock).
pub fn commit(
    store: &Store,
    lock: &Lock,
    req: &CommitRequest<'_>,
) -> Result<Committed, CommitError> {
    let (parent_value, _parent_config, mut layers) = parent(store, req)?;
    let work = WorkDir::new(store, "commit");
    let diff_dir = work.path.join("diff");
    fs::create_dir_all(&diff_dir).map_err(work_err(&diff_dir, "cannot create"))?;
    // 1. The tar, uncompressed: blob digest = diffID.
    let blob = work.path.join("blob");
    let f = File::create(&blob).map_err(work_err(&blob, "cannot create"))?;
    let mut bw = BufWriter::with_capacity(1 << 20, f);
    // The image's layers, top first: what the container's upper layer was
    // mounted over (the runner's own init files are never committed).
    let lowers: Vec<PathBuf> = layers
        .iter()
        .rev()
        .map(|l| store.layer_diff(&l.diff_id))
        .collect();
    write_layer(req.upper, &lowers, &mut bw)?;
    bw.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_data())
        .map_err(work_err(&blob, "cannot write"))?;
    // 2. Extracted by the store's extractor, which checks what we wrote.
    let f = File::open(&blob).map_err(work_err(&blob, "cannot open"))?;
    let mut hr = HashingReader::new(BufReader::with_capacity(1 << 20, f));
    let dirfd = sys::open_dir_path(&diff_dir).map_err(|e| CommitError::Work {
        path: diff_dir.clone(),
        step: "cannot open",
        cause: e.to_io(),
    })?;
    let opts = ExtractOptions {
        privileged: sys::geteuid() == 0 && sys::in_initial_userns(),
        ..ExtractOptions::default()
    };
    let stats =
        extract::extract(&mut hr, dirfd.as_fd(), opts).map_err(|cause| CommitError::Extract {
            path: req.upper.to_path_buf(),
            cause,
        })?;
    let (digest, len) = hr.finish().map_err(work_err(&blob, "cannot read"))?;
    let diff_id = DiffId(digest.clone());
    let info = LayerInfo {
        diff_id: diff_id.clone(),
        blob: Descriptor::new(oci::MT_LAYER_TAR, digest.clone(), len),
        size: stats.content_bytes,
        entries: stats.entries,
    };
    let existing = store
        .layer_info(&diff_id)?
        .filter(|i| store.has_blob(&i.blob.digest) && store.layer_diff(&diff_id).is_dir());
    let new_layer = existing.is_none();
    let info = match existing {
        Some(i) => i,
        None => {
            let json = serde_json::to_vec_pretty(&info).map_err(|cause| CommitError::Json {
                what: "layer record",
                cause,
            })?;
            let lj = work.path.join("layer.json");
            fs::write(&lj, json).map_err(work_err(&lj, "cannot write"))?;
            let dest_blob = store.blob_path(&digest);
            fs::rename(&blob, &dest_blob)
                .map_err(work_err(&dest_blob, "cannot move into place"))?;
            let dest = store.layer_path(&diff_id);
            if dest.exists() {
                // A partial leftover without a usable record: replace it.
                if let (Some(p), Some(name)) = (dest.parent(), dest.file_name())
                    && let (Ok(pfd), Ok(c)) = (sys::open_dir_path(p), sys::cstr(name))
                {
                    let _ = extract::remove_at(pfd.as_fd(), &c);
                }
            }
            fs::rename(&work.path, &dest).map_err(work_err(&dest, "cannot move into place"))?;
            work.keep();
            info
        }
    };
    layers.push(info);
    // 3. Config, manifest, tag.
    let (secs, nanos) = format::now();
    let created = format::format_rfc3339(secs, nanos);
    let config = new_config(parent_value, &diff_id, &created, req);
    let config = serde_json::to_vec(&config).map_err(|cause| CommitError::Json {
        what: "image config",
        cause,
    })?;
    let id = store.put_blob(lock, &config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MT_OCI_MANIFEST.into()),
        config: Descriptor::new(oci::MT_OCI_CONFIG, id.clone(), config.len() as u64),
        layers: layers.iter().map(|l| l.blob.clone()).collect(),
    };
    let mbytes = serde_json::to_vec(&manifest).map_err(|cause| CommitError::Json {
        what: "manifest",
        cause,
    })?;
    let md = store.put_blob(lock, &mbytes)?;
    let desc = Descriptor::new(oci::MT_OCI_MANIFEST, md, mbytes.len() as u64);
    store.set_tag(lock, &desc, req.tag)?;
    Ok(Committed {
        id,
        diff_id,
        new_layer,
    })
}

/// How history shows a command: words joined, quoted when needed.
pub fn describe_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<(String, EntryType)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn pax_record_lengths() {
        let mut x = BTreeMap::new();
        x.insert("user.a".to_string(), b"1".to_vec());
        let r = pax_records(&x);
        let s = String::from_utf8(r).unwrap();
        let (len, _) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), s.len(), "{s:?}");
        assert_eq!(s, "25 SCHILY.xattr.user.a=1\n");
    }

    #[test]
    fn override_stat_parse() {
        assert_eq!(parse_override(b"1000:5:0644:file"), Some((1000, 5, 0o644)));
        assert_eq!(parse_override(b"x:5:0644:file"), None);
    }

    #[test]
    fn layer_tar_whiteouts_opaque_links_excludes_and_determinism() {
        let d = tempfile::tempdir().unwrap();
        let u = d.path();
        fs::create_dir_all(u.join("etc")).unwrap();
        fs::write(u.join("etc/hosts"), "injected").unwrap();
        fs::write(u.join("etc/app.conf"), "x").unwrap();
        fs::write(u.join("etc/.wh.hostname"), "").unwrap();
        fs::write(u.join(".wh.gone"), "").unwrap();
        fs::create_dir(u.join("opq")).unwrap();
        fs::write(u.join("opq/.wh..wh..opq"), "").unwrap();
        fs::write(u.join("opq/new"), "n").unwrap();
        fs::write(u.join("a"), "data").unwrap();
        fs::hard_link(u.join("a"), u.join("b")).unwrap();
        std::os::unix::fs::symlink("a", u.join("s")).unwrap();
        let mut one = Vec::new();
        let stats = write_layer(u, &[], &mut one).unwrap();
        let got = names(&one);
        let want: Vec<(String, EntryType)> = vec![
            (".wh.gone".into(), EntryType::Regular),
            ("a".into(), EntryType::Regular),
            ("b".into(), EntryType::Link),
            ("etc/".into(), EntryType::Directory),
            ("etc/app.conf".into(), EntryType::Regular),
            ("opq/".into(), EntryType::Directory),
            ("opq/.wh..wh..opq".into(), EntryType::Regular),
            ("opq/new".into(), EntryType::Regular),
            ("s".into(), EntryType::Symlink),
        ];
        assert_eq!(got, want);
        assert_eq!(stats.entries, want.len() as u64);
        let mut two = Vec::new();
        write_layer(u, &[], &mut two).unwrap();
        assert_eq!(Digest::of(&one), Digest::of(&two));
    }

    fn contents(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut v = Vec::new();
            io::Read::read_to_end(&mut e, &mut v).unwrap();
            out.insert(p, v);
        }
        out
    }

    fn set_xattr(p: &Path, name: &str, v: &[u8]) {
        let c = sys::cstr(p.as_os_str()).unwrap();
        let n = CString::new(name).unwrap();
        sys::lsetxattr(&c, &n, v, 0).unwrap();
    }

    /// A renamed lower directory is written opaque with its merged
    /// contents; a metadata-only copy gets its data from below.
    #[test]
    fn layer_tar_flattens_renamed_dirs_and_fills_metacopies() {
        let d = tempfile::tempdir().unwrap();
        let (l, u) = (d.path().join("l"), d.path().join("u"));
        fs::create_dir_all(l.join("d/sub")).unwrap();
        fs::write(l.join("d/x"), "x").unwrap();
        fs::write(l.join("d/gone"), "g").unwrap();
        fs::write(l.join("d/sub/y"), "y").unwrap();
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        fs::write(l.join("f"), &data).unwrap();
        fs::create_dir_all(u.join("e")).unwrap();
        fs::write(u.join(".wh.d"), "").unwrap();
        fs::write(u.join("e/new"), "n").unwrap();
        fs::write(u.join("e/.wh.gone"), "").unwrap();
        set_xattr(&u.join("e"), "user.overlay.redirect", b"d");
        let f = File::create(u.join("f")).unwrap();
        f.set_len(data.len() as u64).unwrap();
        set_xattr(&u.join("f"), "user.overlay.metacopy", b"");
        let mut out = Vec::new();
        write_layer(&u, std::slice::from_ref(&l), &mut out).unwrap();
        let got: Vec<String> = names(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            got,
            [
                ".wh.d",
                "e/",
                "e/.wh..wh..opq",
                "e/new",
                "e/sub/",
                "e/sub/y",
                "e/x",
                "f"
            ]
        );
        let c = contents(&out);
        assert_eq!(c["f"], data, "the metacopy's data comes from below");
        assert_eq!(c["e/x"], b"x");
        assert_eq!(c["e/sub/y"], b"y");
        assert_eq!(c["e/new"], b"n");
    }

    #[test]
    fn new_config_extends_parent() {
        let d = DiffId(Digest::of(b"new"));
        let parent: Value = serde_json::json!({
            "architecture": "amd64", "os": "linux", "created": "old",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:".to_string() + &"a".repeat(64)]},
            "history": [{"created_by": "base"}],
        });
        let changes = [change::parse(r#"CMD ["/app/run"]"#).unwrap()];
        let req = CommitRequest {
            upper: Path::new("/nonexistent"),
            container: "c",
            image: "sha256:x",
            created_by: "sh -c 'make app'".into(),
            message: Some("Add app".into()),
            author: None,
            changes: &changes,
            tag: None,
        };
        let c = new_config(parent, &d, "2025-01-01T00:00:00Z", &req);
        assert_eq!(c["config"]["Cmd"], serde_json::json!(["/app/run"]));
        assert_eq!(c["rootfs"]["diff_ids"][1], serde_json::json!(d.to_string()));
        assert_eq!(c["history"][1]["comment"], "Add app");
        assert_eq!(c["history"][1]["created_by"], "sh -c 'make app'");
        assert_eq!(c["created"], "2025-01-01T00:00:00Z");
    }

    #[test]
    fn describe_command_quotes() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(describe_command(&v(&["sh", "-c", "a b"])), "sh -c 'a b'");
        assert_eq!(describe_command(&v(&["echo", "it's"])), r"echo 'it'\''s'");
    }
}
