//! The image store: images and their layers, loaded once and shared.
//!
//! Owns the on-disk layout under the store root, its lock, the index of
//! image names, and resolving a name to a stack of layer directories. Does
//! not own parsing input archives ([`source`], [`load`]), extraction
//! ([`extract`]) or mounting (`cli::mount` receives plain directories).
//!
//! Layout (an OCI image layout, so OCI tools can read the store, plus the
//! extracted layers):
//!
//! ```text
//! ROOT/oci-layout                    {"imageLayoutVersion":"1.0.0"}
//! ROOT/index.json                    one manifest descriptor per tag, named by the
//!                                    org.opencontainers.image.ref.name annotation
//!                                    ("busybox:latest"); no annotation = untagged
//! ROOT/blobs/sha256/HEX              manifests, configs and layer blobs as received
//! ROOT/layers/HEX/diff/              the extracted layer; HEX is its diffID
//! ROOT/layers/HEX/layer.json         diffID, blob descriptor, content size, entries
//! ROOT/containers/NAME/image         (reserved for containers) the image ID in use
//! ROOT/tmp/                          work in progress; emptied by the next writer
//! ROOT/lock                          flock(2): writers hold it exclusively
//! ```
//!
//! Invariants:
//! - A `layers/HEX` directory exists only complete: it is built in `tmp/`
//!   and renamed into place, after both digests were verified.
//! - Layers are shared by diffID: a layer in the store is never extracted
//!   again, and every manifest the store writes points at the one blob
//!   recorded in `layer.json` for that diffID.
//! - Whiteouts inside `diff/` keep the OCI encoding (`.wh.NAME`,
//!   `.wh..wh..opq` files), which the mount reads without privileges.
//! - Writers (load, import, tag, rmi, prune) hold `lock` exclusively for the
//!   whole command and start by emptying `tmp/` (nothing there can belong to
//!   a live writer). Readers take no lock: index.json and every blob are
//!   replaced by rename, so a reader sees the old or the new version.
//! - The image ID is the digest of the image config, as in docker.

pub mod change;
pub mod commit;
pub mod compress;
pub mod digest;
pub mod extract;
pub mod format;
pub mod gc;
pub mod load;
pub mod merged;
pub mod oci;
pub mod progress;
pub mod reference;
pub mod save;
pub mod source;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::sys;
use digest::{DiffId, Digest};
use oci::{Descriptor, ImageConfig, Index, Manifest};
use reference::{ImageRef, Reference, ReferenceError};

/// The largest JSON document (index, manifest, config) the store reads.
pub const MAX_JSON: u64 = 16 << 20;

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// Creating the layout or taking the lock.
    Lock {
        path: PathBuf,
        cause: io::Error,
    },
    Read {
        path: PathBuf,
        cause: io::Error,
    },
    Write {
        path: PathBuf,
        cause: io::Error,
    },
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    /// A blob whose content does not match its name.
    Corrupt {
        path: PathBuf,
        actual: Digest,
    },
    Reference(ReferenceError),
    NoSuchImage(String),
    /// An ID prefix that matches several images.
    Ambiguous(String),
    /// An image whose config lists layers the store does not have.
    MissingLayer {
        image: String,
        diff_id: DiffId,
    },
    NoLayers(String),
    /// `rmi` of an image a container uses.
    InUse {
        image: String,
        container: String,
    },
    /// `rmi ID` of an image with several tags, without -f.
    MultipleTags {
        image: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Lock { path, cause } => {
                write!(f, "cannot lock the store at {}: {cause}", path.display())
            }
            StoreError::Read { path, cause } => {
                write!(f, "cannot read {}: {cause}", path.display())
            }
            StoreError::Write { path, cause } => {
                write!(f, "cannot write {}: {cause}", path.display())
            }
            StoreError::Json { path, cause } => {
                write!(f, "invalid JSON in {}: {cause}", path.display())
            }
            StoreError::Corrupt { path, actual } => write!(
                f,
                "store blob {} is corrupt (its content has digest {actual})",
                path.display()
            ),
            StoreError::Reference(e) => e.fmt(f),
            StoreError::NoSuchImage(s) => write!(f, "No such image: {s}"),
            StoreError::Ambiguous(s) => write!(f, "image ID prefix '{s}' matches several images"),
            StoreError::MissingLayer { image, diff_id } => {
                write!(
                    f,
                    "image {image}: layer {diff_id} is missing from the store"
                )
            }
            StoreError::NoLayers(s) => write!(f, "image {s} has no layers to mount"),
            StoreError::InUse { image, container } => write!(
                f,
                "conflict: unable to remove image {image}: container {container} uses it (use -f)"
            ),
            StoreError::MultipleTags { image } => write!(
                f,
                "conflict: unable to delete {image} (must be forced) - image is referenced in multiple repositories"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// What the store knows about one extracted layer (`layers/HEX/layer.json`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub diff_id: DiffId,
    /// The blob in `blobs/` this layer was extracted from.
    pub blob: Descriptor,
    /// Bytes of file contents (docker's layer SIZE).
    pub size: u64,
    pub entries: u64,
}

/// One image: a config, the manifest the store wrote for it, its tags.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config digest.
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub tags: Vec<Reference>,
    pub config: ImageConfig,
    pub config_raw: Vec<u8>,
}

/// The exclusive store lock; released on drop.
pub struct Lock {
    _file: File,
}

/// The store at a root directory.
pub struct Store {
    root: PathBuf,
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |cause| StoreError::Write {
        path: path.to_path_buf(),
        cause,
    }
}

/// The default store root: `/var/lib/layerfs` for root, else
/// `$XDG_DATA_HOME/layerfs`, else `~/.local/share/layerfs`.
pub fn default_root() -> PathBuf {
    if sys::geteuid() == 0 {
        return PathBuf::from("/var/lib/layerfs");
    }
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("layerfs"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(".local/share/layerfs")
        }
    }
}

impl Store {
    pub fn new(root: PathBuf) -> Store {
        Store { root }
    }

    /// The store at `root`, or at [`default_root`].
    pub fn at(root: Option<PathBuf>) -> Store {
        Store::new(root.unwrap_or_else(default_root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// `layers/HEX`: the layer's directory in the store.
    pub fn layer_path(&self, d: &DiffId) -> PathBuf {
        self.root.join("layers").join(d.0.hex())
    }

    /// `layers/HEX/diff`: what the mount uses as a lower directory.
    pub fn layer_diff(&self, d: &DiffId) -> PathBuf {
        self.layer_path(d).join("diff")
    }

    /// Creates the layout if needed, takes the exclusive lock (waiting for
    /// another writer) and removes leftovers of interrupted commands.
    pub fn lock(&self) -> Result<Lock, StoreError> {
        let lock_err = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| StoreError::Lock { path, cause }
        };
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = self.root.join(d);
            fs::create_dir_all(&p).map_err(lock_err(&p))?;
        }
        let lp = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(lock_err(&lp))?;
        sys::flock(file.as_fd(), true, false).map_err(|e| StoreError::Lock {
            path: lp.clone(),
            cause: e.to_io(),
        })?;
        let layout = self.root.join("oci-layout");
        if !layout.exists() {
            self.write_atomic(&layout, oci::OCI_LAYOUT.as_bytes())?;
        }
        // Under the lock, nothing in tmp/ belongs to a live command.
        let tmp = self.tmp_dir();
        if let Ok(rd) = fs::read_dir(&tmp) {
            let dirfd = sys::open_dir_path(&tmp).map_err(|e| StoreError::Lock {
                path: tmp.clone(),
                cause: e.to_io(),
            })?;
            for e in rd.flatten() {
                if let Ok(c) = CString::new(e.file_name().as_bytes()) {
                    let _ = extract::remove_at(dirfd.as_fd(), &c);
                }
            }
        }
        Ok(Lock { _file: file })
    }

    /// Writes `bytes` to `path` through a temporary file and a rename.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self
            .tmp_dir()
            .join(format!("{name}.{}.new", std::process::id()));
        let mut f = File::create(&tmp).map_err(write_err(&tmp))?;
        f.write_all(bytes).map_err(write_err(&tmp))?;
        f.sync_all().map_err(write_err(&tmp))?;
        fs::rename(&tmp, path).map_err(write_err(path))
    }

    /// The index; an empty one when the store is new.
    pub fn index(&self) -> Result<Index, StoreError> {
        let p = self.root.join("index.json");
        match fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|cause| StoreError::Json { path: p, cause })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(cause) => Err(StoreError::Read { path: p, cause }),
        }
    }

    pub fn write_index(&self, _lock: &Lock, idx: &Index) -> Result<(), StoreError> {
        let p = self.root.join("index.json");
        let bytes = serde_json::to_vec_pretty(idx).map_err(|cause| StoreError::Json {
            path: p.clone(),
            cause,
        })?;
        self.write_atomic(&p, &bytes)
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a JSON-sized blob and checks its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let b = fs::read(&p).map_err(|cause| StoreError::Read {
            path: p.clone(),
            cause,
        })?;
        let actual = Digest::of(&b);
        if &actual != d {
            return Err(StoreError::Corrupt { path: p, actual });
        }
        Ok(b)
    }

    /// Stores a small blob (manifest, config); returns its digest.
    pub fn put_blob(&self, _lock: &Lock, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if !self.has_blob(&d) {
            self.write_atomic(&self.blob_path(&d), bytes)?;
        }
        Ok(d)
    }

    /// The layer's record, or `None` when the layer is not in the store.
    pub fn layer_info(&self, d: &DiffId) -> Result<Option<LayerInfo>, StoreError> {
        let p = self.layer_path(d).join("layer.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|cause| StoreError::Json { path: p, cause }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(cause) => Err(StoreError::Read { path: p, cause }),
        }
    }

    /// Every layer in the store.
    pub fn layers(&self) -> Result<Vec<LayerInfo>, StoreError> {
        let dir = self.root.join("layers");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(cause) => return Err(StoreError::Read { path: dir, cause }),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) else {
                continue;
            };
            if let Some(info) = self.layer_info(&DiffId(d))? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Every image, with its tags, sorted by tag (untagged last).
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        let idx = self.index()?;
        let mut by_id: BTreeMap<Digest, Image> = BTreeMap::new();
        for desc in &idx.manifests {
            let mp = self.blob_path(&desc.digest);
            let mbytes = self.read_blob(&desc.digest)?;
            let manifest: Manifest =
                serde_json::from_slice(&mbytes).map_err(|cause| StoreError::Json {
                    path: mp.clone(),
                    cause,
                })?;
            let id = manifest.config.digest.clone();
            let tag = desc
                .annotations
                .get(oci::ANNOTATION_REF_NAME)
                .and_then(|n| Reference::parse(n).ok());
            if let Some(img) = by_id.get_mut(&id) {
                img.tags.extend(tag);
                continue;
            }
            let config_raw = self.read_blob(&id)?;
            let config: ImageConfig =
                serde_json::from_slice(&config_raw).map_err(|cause| StoreError::Json {
                    path: self.blob_path(&id),
                    cause,
                })?;
            by_id.insert(
                id.clone(),
                Image {
                    id,
                    manifest_digest: desc.digest.clone(),
                    manifest,
                    tags: tag.into_iter().collect(),
                    config,
                    config_raw,
                },
            );
        }
        let mut v: Vec<Image> = by_id.into_values().collect();
        for i in &mut v {
            i.tags.sort();
            i.tags.dedup();
        }
        v.sort_by(|a, b| match (a.tags.first(), b.tags.first()) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.id.cmp(&b.id),
        });
        Ok(v)
    }

    /// Finds an image by name (tag `latest` by default), full ID or ID
    /// prefix, like docker: a name first, then an ID.
    pub fn resolve(&self, text: &str) -> Result<Image, StoreError> {
        let r = ImageRef::parse(text).map_err(StoreError::Reference)?;
        let images = self.images()?;
        let prefix = match r {
            ImageRef::Name {
                reference,
                id_prefix,
            } => {
                if let Some(i) = images.iter().find(|i| i.tags.contains(&reference)) {
                    return Ok(i.clone());
                }
                id_prefix
            }
            ImageRef::Id(p) => Some(p),
        };
        let Some(p) = prefix else {
            return Err(StoreError::NoSuchImage(text.into()));
        };
        let mut found = images.into_iter().filter(|i| i.id.hex().starts_with(&p));
        match (found.next(), found.next()) {
            (Some(i), None) => Ok(i),
            (Some(_), Some(_)) => Err(StoreError::Ambiguous(p)),
            _ => Err(StoreError::NoSuchImage(text.into())),
        }
    }

    /// The image's layer directories, top layer first (the order of
    /// `lowerdir=`).
    pub fn layer_dirs(&self, img: &Image) -> Result<Vec<PathBuf>, StoreError> {
        let name = image_name(img);
        if img.config.rootfs.diff_ids.is_empty() {
            return Err(StoreError::NoLayers(name));
        }
        let mut out = Vec::new();
        for d in img.config.rootfs.diff_ids.iter().rev() {
            let p = self.layer_diff(d);
            if !p.is_dir() {
                return Err(StoreError::MissingLayer {
                    image: name,
                    diff_id: d.clone(),
                });
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Sum of the image's layer sizes.
    pub fn image_size(&self, img: &Image) -> u64 {
        img.config
            .rootfs
            .diff_ids
            .iter()
            .filter_map(|d| self.layer_info(d).ok().flatten())
            .map(|i| i.size)
            .sum()
    }

    /// Points `reference` at the manifest `manifest` (moving it from any
    /// other image). An image that loses its last tag stays as untagged.
    pub fn set_tag(
        &self,
        lock: &Lock,
        manifest: &Descriptor,
        reference: Option<&Reference>,
    ) -> Result<(), StoreError> {
        let mut idx = self.index()?;
        let name = reference.map(|r| r.to_string());
        let orphaned: Vec<Descriptor> = match &name {
            Some(n) => idx
                .manifests
                .iter()
                .filter(|d| d.annotations.get(oci::ANNOTATION_REF_NAME) == Some(n))
                .filter(|d| d.digest != manifest.digest)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        idx.manifests.retain(|d| {
            let rn = d.annotations.get(oci::ANNOTATION_REF_NAME);
            // Drop the old holder of this name, and an untagged entry of the
            // manifest being tagged.
            let holds_name = rn.is_some() && rn == name.as_ref();
            let untagged_self = d.digest == manifest.digest && rn.is_none();
            !holds_name && !untagged_self
        });
        let mut entry =
            Descriptor::new(oci::MT_OCI_MANIFEST, manifest.digest.clone(), manifest.size);
        if let Some(n) = &name {
            entry
                .annotations
                .insert(oci::ANNOTATION_REF_NAME.into(), n.clone());
        }
        let already = idx.manifests.iter().any(|d| d.digest == manifest.digest);
        if name.is_some() || !already {
            idx.manifests.push(entry);
        }
        for o in orphaned {
            if !idx.manifests.iter().any(|d| d.digest == o.digest) {
                let mut e = o.clone();
                e.annotations.remove(oci::ANNOTATION_REF_NAME);
                idx.manifests.push(e);
            }
        }
        self.write_index(lock, &idx)
    }

    /// Containers using an image: `containers/NAME/image` holds its ID.
    pub fn containers_using(&self, id: &Digest) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join("containers")) {
            for e in rd.flatten() {
                if let Ok(s) = fs::read_to_string(e.path().join("image"))
                    && (s.trim() == id.to_string() || s.trim() == id.hex())
                {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out
    }
}

/// How messages name an image: its first tag, else its short ID.
pub fn image_name(img: &Image) -> String {
    match img.tags.first() {
        Some(t) => t.to_string(),
        None => img.id.short().to_string(),
    }
}

/// A work directory `tmp/WHAT-PID-N` where a layer is built before its
/// rename into the store; removed on drop unless kept. [`WorkDir::new`]
/// only names it: the caller creates it.
struct WorkDir {
    path: PathBuf,
}

static WORK_SEQ: AtomicU64 = AtomicU64::new(0);

impl WorkDir {
    fn new(store: &Store, what: &str) -> WorkDir {
        let n = WORK_SEQ.fetch_add(1, Ordering::Relaxed);
        WorkDir {
            path: store
                .tmp_dir()
                .join(format!("{what}-{}-{n}", std::process::id())),
        }
    }

    /// Keeps the directory: it was renamed away.
    fn keep(mut self) {
        self.path = PathBuf::new();
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name())
            && let (Ok(p), Ok(n)) = (sys::open_dir_path(parent), sys::cstr(name))
        {
            let _ = extract::remove_at(p.as_fd(), &n);
        }
    }
}
