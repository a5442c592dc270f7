//! Removing images (`rmi`) and reclaiming space (`prune`).
//!
//! Owns the reachability rule: a layer or blob stays while an index entry
//! (through its manifest and config) or a container (through its image's
//! config) reaches it. `rmi` only edits index.json; `prune` deletes what is
//! no longer reachable. Both run under the store lock.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::digest::{DiffId, Digest};
use super::oci::{self, ImageConfig, Manifest};
use super::reference::{ImageRef, Reference};
use super::{Lock, Store, StoreError, extract};
use crate::sys;

/// What `rmi` did to one image.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub untagged: Vec<Reference>,
    /// Set when the image itself is gone from the index.
    pub deleted: Option<Digest>,
}

/// Removes a tag, or a whole image when named by ID or by its last tag.
/// Refuses an image in use by a container, or an ID with several tags,
/// unless `force`.
pub fn rmi(store: &Store, lock: &Lock, text: &str, force: bool) -> Result<Removed, StoreError> {
    let img = store.resolve(text)?;
    let by_tag = match ImageRef::parse(text).map_err(StoreError::Reference)? {
        ImageRef::Name { reference, .. } if img.tags.contains(&reference) => Some(reference),
        _ => None,
    };
    let name = super::image_name(&img);
    let untag: Vec<Reference> = match &by_tag {
        Some(r) => vec![r.clone()],
        None => {
            if img.tags.len() > 1 && !force {
                return Err(StoreError::MultipleTags { image: text.into() });
            }
            img.tags.clone()
        }
    };
    let delete = untag.len() == img.tags.len();
    if delete
        && !force
        && let Some(c) = store.containers_using(&img.id).into_iter().next()
    {
        return Err(StoreError::InUse {
            image: name,
            container: c,
        });
    }
    let mut idx = store.index()?;
    let names: HashSet<String> = untag.iter().map(|r| r.to_string()).collect();
    let mut keep = Vec::new();
    for d in idx.manifests {
        let rn = d.annotations.get(oci::ANNOTATION_REF_NAME);
        let of_image = manifest_config(store, &d.digest).ok() == Some(img.id.clone());
        let drop = of_image && (delete || rn.is_some_and(|n| names.contains(n)));
        if !drop {
            keep.push(d);
        }
    }
    idx.manifests = keep;
    store.write_index(lock, &idx)?;
    Ok(Removed {
        untagged: untag,
        deleted: delete.then_some(img.id),
    })
}

fn manifest_config(store: &Store, d: &Digest) -> Result<Digest, StoreError> {
    let b = store.read_blob(d)?;
    let m: Manifest = serde_json::from_slice(&b).map_err(|cause| StoreError::Json {
        path: store.blob_path(d),
        cause,
    })?;
    Ok(m.config.digest)
}

/// What `prune` removed.
#[derive(Debug, Default)]
pub struct Pruned {
    pub layers: Vec<DiffId>,
    pub blobs: Vec<Digest>,
    pub bytes: u64,
}

/// Disk usage of a tree (allocated blocks; hard links once), never
/// following symlinks.
fn disk_usage(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    let mut n = if seen.insert((m.dev(), m.ino())) {
        m.blocks() * 512
    } else {
        0
    };
    if m.is_dir()
        && let Ok(rd) = fs::read_dir(p)
    {
        for e in rd.flatten() {
            n += disk_usage(&e.path(), seen);
        }
    }
    n
}

fn remove(path: &Path) -> Result<(), StoreError> {
    let err = |cause: std::io::Error| StoreError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default();
    let pfd = sys::open_dir_path(parent).map_err(|e| err(e.to_io()))?;
    let c =
        CString::new(name.as_bytes()).map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
    extract::remove_at(pfd.as_fd(), &c).map_err(|e| err(e.to_io()))
}

/// Deletes every layer and blob no image or container reaches.
pub fn prune(store: &Store, lock: &Lock) -> Result<Pruned, StoreError> {
    let _ = lock;
    let mut live_blobs: HashSet<Digest> = HashSet::new();
    let mut live_layers: HashSet<DiffId> = HashSet::new();
    let mut configs: Vec<Digest> = Vec::new();
    for d in store.index()?.manifests {
        live_blobs.insert(d.digest.clone());
        let b = store.read_blob(&d.digest)?;
        let m: Manifest = serde_json::from_slice(&b).map_err(|cause| StoreError::Json {
            path: store.blob_path(&d.digest),
            cause,
        })?;
        live_blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
        configs.push(m.config.digest);
    }
    // Containers keep their image's layers even after `rmi -f`.
    if let Ok(rd) = fs::read_dir(store.root().join("containers")) {
        for e in rd.flatten() {
            if let Ok(s) = fs::read_to_string(e.path().join("image")) {
                let s = s.trim();
                if let Ok(d) = Digest::parse(s).or_else(|_| Digest::from_hex(s)) {
                    configs.push(d);
                }
            }
        }
    }
    for c in configs {
        live_blobs.insert(c.clone());
        let Ok(b) = store.read_blob(&c) else { continue };
        let cfg: ImageConfig = serde_json::from_slice(&b).map_err(|cause| StoreError::Json {
            path: store.blob_path(&c),
            cause,
        })?;
        live_layers.extend(cfg.rootfs.diff_ids);
    }
    let mut out = Pruned::default();
    let mut seen = HashSet::new();
    for info in store.layers()? {
        if live_layers.contains(&info.diff_id) {
            live_blobs.insert(info.blob.digest);
            continue;
        }
        let p = store.layer_path(&info.diff_id);
        out.bytes += disk_usage(&p, &mut seen);
        remove(&p)?;
        out.layers.push(info.diff_id);
    }
    let blobs = store.root().join("blobs/sha256");
    if let Ok(rd) = fs::read_dir(&blobs) {
        for e in rd.flatten() {
            let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) else {
                continue;
            };
            if live_blobs.contains(&d) {
                continue;
            }
            out.bytes += disk_usage(&e.path(), &mut seen);
            remove(&e.path())?;
            out.blobs.push(d);
        }
    }
    Ok(out)
}
