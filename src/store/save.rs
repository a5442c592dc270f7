//! `save`: images of the store as one tar that both OCI tools and docker
//! tools read, the way Docker 25+ writes it:
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 one manifest descriptor per saved name (or one
//!                            untagged descriptor for an image saved by ID),
//!                            annotated with io.containerd.image.name (the
//!                            full name) and org.opencontainers.image.ref.name
//!                            (the tag)
//! manifest.json              docker save's [{Config, RepoTags, Layers}], whose
//!                            paths point into blobs/sha256/
//! blobs/sha256/HEX           manifests, configs and layers, each once, exactly
//!                            the bytes the store holds
//! ```
//!
//! Owns: choosing the blobs and names of the saved images, and writing the
//! archive. Does not own: reading archives back (`load`).
//!
//! Invariants: every blob is verified against its digest while it is
//! copied; the archive is deterministic for the same images and names
//! (sorted blobs, fixed header metadata); with `-o FILE` the file appears
//! only complete (written next to it, then renamed).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tar::{EntryType, Header};

use super::digest::{Digest, HashingReader};
use super::oci::{self, Descriptor, DockerManifestEntry, Index};
use super::reference::{ImageRef, Reference};
use super::{Image, Store, StoreError};

/// Why a save failed.
#[derive(Debug)]
pub enum SaveError {
    Store(StoreError),
    /// A blob an image needs is not in the store.
    MissingBlob {
        image: String,
        digest: Digest,
    },
    /// A blob whose bytes do not match its digest.
    CorruptBlob {
        path: PathBuf,
        actual: Digest,
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
        what: &'static str,
        cause: serde_json::Error,
    },
}

impl fmt::Display for SaveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaveError::Store(e) => e.fmt(f),
            SaveError::MissingBlob { image, digest } => {
                write!(f, "image {image}: blob {digest} is missing from the store")
            }
            SaveError::CorruptBlob { path, actual } => write!(
                f,
                "store blob {} is corrupt (its content has digest {actual})",
                path.display()
            ),
            SaveError::Read { path, cause } => write!(f, "cannot read {}: {cause}", path.display()),
            SaveError::Write { path, cause } => {
                write!(f, "cannot write {}: {cause}", path.display())
            }
            SaveError::Json { what, cause } => write!(f, "cannot encode {what}: {cause}"),
        }
    }
}

impl std::error::Error for SaveError {}

impl From<StoreError> for SaveError {
    fn from(e: StoreError) -> Self {
        SaveError::Store(e)
    }
}

/// The full name containerd records (`docker.io/library/busybox:latest`).
pub fn full_name(r: &Reference) -> String {
    let first = r.repo.split('/').next().unwrap_or_default();
    let repo = if !r.repo.contains('/') {
        format!("docker.io/library/{}", r.repo)
    } else if first.contains(['.', ':']) || first == "localhost" {
        r.repo.clone()
    } else {
        format!("docker.io/{}", r.repo)
    };
    format!("{repo}:{}", r.tag)
}

/// One image to save and the names it is saved under.
struct Planned {
    image: Image,
    names: Vec<Reference>,
}

/// Resolves the arguments: a name saves that name; an ID saves the image
/// with no names (as docker does). Several arguments naming one image
/// merge.
fn plan(store: &Store, texts: &[String]) -> Result<Vec<Planned>, SaveError> {
    let mut out: Vec<Planned> = Vec::new();
    for t in texts {
        let img = store.resolve(t)?;
        let name = match ImageRef::parse(t) {
            Ok(ImageRef::Name { reference, .. }) if img.tags.contains(&reference) => {
                Some(reference)
            }
            _ => None,
        };
        match out.iter_mut().find(|p| p.image.id == img.id) {
            Some(p) => p.names.extend(name),
            None => out.push(Planned {
                image: img,
                names: name.into_iter().collect(),
            }),
        }
    }
    for p in &mut out {
        p.names.sort();
        p.names.dedup();
    }
    Ok(out)
}

/// What the archive holds, before writing it.
struct Contents {
    /// member name → (digest, store path), sorted.
    blobs: BTreeMap<String, (Digest, PathBuf)>,
    index: Vec<u8>,
    manifest_json: Vec<u8>,
}

fn blob_member(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn contents(store: &Store, plans: &[Planned]) -> Result<Contents, SaveError> {
    let mut blobs = BTreeMap::new();
    let mut index = Index::default();
    let mut docker: Vec<DockerManifestEntry> = Vec::new();
    for p in plans {
        let img = &p.image;
        let label = super::image_name(img);
        let mut add = |d: &Digest| -> Result<(), SaveError> {
            let path = store.blob_path(d);
            if !path.is_file() {
                return Err(SaveError::MissingBlob {
                    image: label.clone(),
                    digest: d.clone(),
                });
            }
            blobs.insert(blob_member(d), (d.clone(), path));
            Ok(())
        };
        add(&img.manifest_digest)?;
        add(&img.id)?;
        for l in &img.manifest.layers {
            add(&l.digest)?;
        }
        let msize = fs::metadata(store.blob_path(&img.manifest_digest))
            .map_err(|cause| SaveError::Read {
                path: store.blob_path(&img.manifest_digest),
                cause,
            })?
            .len();
        let desc = Descriptor::new(oci::MT_OCI_MANIFEST, img.manifest_digest.clone(), msize);
        if p.names.is_empty() {
            index.manifests.push(desc.clone());
        }
        for n in &p.names {
            let mut d = desc.clone();
            d.annotations
                .insert(oci::ANNOTATION_CONTAINERD_NAME.into(), full_name(n));
            d.annotations
                .insert(oci::ANNOTATION_REF_NAME.into(), n.tag.clone());
            index.manifests.push(d);
        }
        docker.push(DockerManifestEntry {
            config: blob_member(&img.id),
            repo_tags: if p.names.is_empty() {
                None
            } else {
                Some(p.names.iter().map(|n| n.to_string()).collect())
            },
            layers: img
                .manifest
                .layers
                .iter()
                .map(|l| blob_member(&l.digest))
                .collect(),
        });
    }
    let index = serde_json::to_vec(&index).map_err(|cause| SaveError::Json {
        what: "index.json",
        cause,
    })?;
    let manifest_json = serde_json::to_vec(&docker).map_err(|cause| SaveError::Json {
        what: "manifest.json",
        cause,
    })?;
    Ok(Contents {
        blobs,
        index,
        manifest_json,
    })
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn write_archive<W: Write>(c: &Contents, out: W, dest: &Path) -> Result<W, SaveError> {
    let werr = |cause| SaveError::Write {
        path: dest.to_path_buf(),
        cause,
    };
    let mut tar = tar::Builder::new(out);
    for d in ["blobs/", "blobs/sha256/"] {
        let mut h = header(EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, d, io::empty()).map_err(werr)?;
    }
    for (member, (digest, path)) in &c.blobs {
        let rerr = |cause| SaveError::Read {
            path: path.clone(),
            cause,
        };
        let f = File::open(path).map_err(rerr)?;
        let size = f.metadata().map_err(rerr)?.len();
        let mut hr = HashingReader::new(BufReader::with_capacity(1 << 20, f).take(size));
        let mut h = header(EntryType::Regular, 0o644, size);
        tar.append_data(&mut h, member, &mut hr).map_err(werr)?;
        let (actual, _) = hr.finish().map_err(rerr)?;
        if &actual != digest {
            return Err(SaveError::CorruptBlob {
                path: path.clone(),
                actual,
            });
        }
    }
    let small: [(&str, &[u8]); 3] = [
        ("index.json", &c.index),
        ("manifest.json", &c.manifest_json),
        ("oci-layout", oci::OCI_LAYOUT.as_bytes()),
    ];
    for (name, data) in small {
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        tar.append_data(&mut h, name, data).map_err(werr)?;
    }
    tar.into_inner().map_err(werr)
}

/// What was saved.
#[derive(Debug, Clone, Serialize)]
pub struct Saved {
    pub images: usize,
    pub blobs: usize,
}

/// Saves `images` into the file `out` (complete or absent).
pub fn save_to_file(store: &Store, images: &[String], out: &Path) -> Result<Saved, SaveError> {
    let plans = plan(store, images)?;
    let c = contents(store, &plans)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| SaveError::Write { path, cause }
    };
    let r = (|| {
        let f = File::create(&tmp).map_err(werr(&tmp))?;
        let w = write_archive(&c, BufWriter::with_capacity(1 << 20, f), out)?;
        let f = w.into_inner().map_err(|e| werr(&tmp)(e.into_error()))?;
        f.sync_all().map_err(werr(&tmp))?;
        fs::rename(&tmp, out).map_err(werr(out))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r?;
    Ok(Saved {
        images: plans.len(),
        blobs: c.blobs.len(),
    })
}

/// Saves `images` to a stream (stdout).
pub fn save_to<W: Write>(store: &Store, images: &[String], out: W) -> Result<Saved, SaveError> {
    let plans = plan(store, images)?;
    let c = contents(store, &plans)?;
    let mut w = write_archive(&c, out, Path::new("-"))?;
    w.flush().map_err(|cause| SaveError::Write {
        path: "-".into(),
        cause,
    })?;
    Ok(Saved {
        images: plans.len(),
        blobs: c.blobs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_name_table() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("me/app:v1", "docker.io/me/app:v1"),
            ("quay.io/x/y:2", "quay.io/x/y:2"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app", "localhost/app:latest"),
        ];
        for (input, want) in cases {
            let r = Reference::parse(input).unwrap();
            assert_eq!(full_name(&r), want, "{input}");
        }
    }
}
