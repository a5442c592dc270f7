//! `load` and `import`: from an input archive to images in the store.
//!
//! Owns recognizing the input format (docker save before and after Docker
//! 25, OCI layout directory or tar), choosing the manifest for this
//! platform, and the streaming pipeline of one layer:
//!
//! ```text
//! member bytes -> tee into tmp blob -> sha256 (blob digest) -> decompress
//!              -> sha256 (diffID) -> extract into tmp/layer-*/diff
//! ```
//!
//! Invariants: a layer becomes visible (renamed to `layers/HEX`) only after
//! the blob digest (when the manifest gives one) and the diffID (from the
//! config, for load) both matched; on any error its work directory is
//! removed. A layer whose diffID is already in the store is not read at all.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::compress::{self, CompressError};
use super::digest::{DiffId, Digest, HashingReader, TeeReader};
use super::extract::{self, ExtractError, ExtractOptions};
use super::oci::{self, Descriptor, DockerManifestEntry, ImageConfig, Index, Manifest};
use super::progress::{Progress, ProgressReader};
use super::reference::{Reference, ReferenceError};
use super::source::{self, Source, SourceError};
use super::{LayerInfo, Lock, MAX_JSON, Store, StoreError, WorkDir, format};
use crate::sys;

/// How to load.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    pub extract: ExtractOptions,
    /// Show progress when stderr is a terminal.
    pub progress: bool,
}

/// One image that was loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub id: Digest,
    pub tags: Vec<Reference>,
    pub new_layers: usize,
    pub reused_layers: usize,
    pub warnings: Vec<String>,
}

/// Why a load or import failed; layer errors name the archive member.
#[derive(Debug)]
pub enum LoadError {
    Source(SourceError),
    NotAnImage {
        input: String,
    },
    Json {
        member: String,
        cause: serde_json::Error,
    },
    BlobDigest {
        member: String,
        expected: Digest,
        actual: Digest,
    },
    BlobSize {
        member: String,
        expected: u64,
        actual: u64,
    },
    DiffId {
        member: String,
        expected: DiffId,
        actual: DiffId,
    },
    LayerCount {
        config: String,
        diff_ids: usize,
        layers: usize,
    },
    NoPlatform {
        member: String,
        arch: String,
    },
    Extract {
        member: String,
        cause: ExtractError,
    },
    Compress {
        member: String,
        cause: CompressError,
    },
    /// Reading or decompressing a layer failed outside the tar parser.
    Stream {
        member: String,
        cause: io::Error,
    },
    /// A step on the store's temporary files.
    Work {
        path: PathBuf,
        step: &'static str,
        cause: io::Error,
    },
    Store(StoreError),
    Reference(ReferenceError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Source(e) => e.fmt(f),
            LoadError::NotAnImage { input } => write!(
                f,
                "{input} is not an image archive (no manifest.json or index.json); use `layerfs import` for a layer tarball"
            ),
            LoadError::Json { member, cause } => write!(f, "invalid JSON in '{member}': {cause}"),
            LoadError::BlobDigest {
                member,
                expected,
                actual,
            } => write!(
                f,
                "'{member}': digest mismatch: expected {expected}, content has {actual}"
            ),
            LoadError::BlobSize {
                member,
                expected,
                actual,
            } => write!(
                f,
                "'{member}': size mismatch: expected {expected} bytes, got {actual}"
            ),
            LoadError::DiffId {
                member,
                expected,
                actual,
            } => write!(
                f,
                "layer '{member}': diffID mismatch: the config expects {expected}, the uncompressed tar has {actual}"
            ),
            LoadError::LayerCount {
                config,
                diff_ids,
                layers,
            } => write!(
                f,
                "config '{config}' lists {diff_ids} layers (rootfs.diff_ids) but the manifest has {layers}"
            ),
            LoadError::NoPlatform { member, arch } => {
                write!(f, "index '{member}' has no image for linux/{arch}")
            }
            LoadError::Extract { member, cause } => write!(f, "layer '{member}': {cause}"),
            LoadError::Compress { member, cause } => write!(f, "layer '{member}': {cause}"),
            LoadError::Stream { member, cause } => write!(f, "layer '{member}': {cause}"),
            LoadError::Work { path, step, cause } => {
                write!(f, "{step} {}: {cause}", path.display())
            }
            LoadError::Store(e) => e.fmt(f),
            LoadError::Reference(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        LoadError::Store(e)
    }
}

impl From<SourceError> for LoadError {
    fn from(e: SourceError) -> Self {
        LoadError::Source(e)
    }
}

/// The docker/OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A layer to load: where its bytes are, and what the manifest says.
#[derive(Debug, Clone)]
struct PlannedLayer {
    member: String,
    expected: Option<(Digest, Option<u64>)>,
}

/// An image to load.
#[derive(Debug)]
struct Planned {
    config_member: String,
    config: Vec<u8>,
    layers: Vec<PlannedLayer>,
    tags: Vec<Reference>,
}

/// The digest a member name carries (`blobs/sha256/HEX`), if any.
fn member_digest(member: &str) -> Option<Digest> {
    let m = source::lexical("", member)?;
    Digest::from_hex(m.strip_prefix("blobs/sha256/")?).ok()
}

fn blob_member(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn parse_json<T: serde::de::DeserializeOwned>(member: &str, b: &[u8]) -> Result<T, LoadError> {
    serde_json::from_slice(b).map_err(|cause| LoadError::Json {
        member: member.into(),
        cause,
    })
}

/// Reads a JSON blob named by a descriptor and checks digest and size.
fn read_verified(src: &Source, d: &Digest, size: Option<u64>) -> Result<Vec<u8>, LoadError> {
    let member = blob_member(d);
    let b = src.read_small(&member, MAX_JSON)?;
    let actual = Digest::of(&b);
    if &actual != d {
        return Err(LoadError::BlobDigest {
            member,
            expected: d.clone(),
            actual,
        });
    }
    if let Some(s) = size
        && s != b.len() as u64
    {
        return Err(LoadError::BlobSize {
            member,
            expected: s,
            actual: b.len() as u64,
        });
    }
    Ok(b)
}

fn plan(src: &Source) -> Result<Vec<Planned>, LoadError> {
    if src.exists("manifest.json") {
        plan_docker(src)
    } else if src.exists("index.json") {
        plan_oci(src)
    } else {
        Err(LoadError::NotAnImage {
            input: src.describe(),
        })
    }
}

/// `docker save`: manifest.json lists config and layer members by path.
fn plan_docker(src: &Source) -> Result<Vec<Planned>, LoadError> {
    let entries: Vec<DockerManifestEntry> =
        parse_json("manifest.json", &src.read_small("manifest.json", MAX_JSON)?)?;
    let mut out = Vec::new();
    for e in entries {
        let config = src.read_small(&e.config, MAX_JSON)?;
        if let Some(d) = member_digest(&e.config) {
            let actual = Digest::of(&config);
            if actual != d {
                return Err(LoadError::BlobDigest {
                    member: e.config,
                    expected: d,
                    actual,
                });
            }
        }
        let mut tags = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            tags.push(Reference::parse(&t).map_err(LoadError::Reference)?);
        }
        let layers = e
            .layers
            .iter()
            .map(|m| PlannedLayer {
                member: m.clone(),
                expected: member_digest(m).map(|d| (d, None)),
            })
            .collect();
        out.push(Planned {
            config_member: e.config,
            config,
            layers,
            tags,
        });
    }
    Ok(out)
}

/// The name an index.json entry gives its image: the full name containerd
/// and Docker 25+ record, else a ref name that is a full reference. A bare
/// tag (`latest`, what skopeo writes) names no repository: untagged.
fn entry_name(d: &Descriptor) -> Option<Reference> {
    if let Some(n) = d.annotations.get(oci::ANNOTATION_CONTAINERD_NAME)
        && let Ok(r) = Reference::parse(n)
    {
        return Some(r);
    }
    let n = d.annotations.get(oci::ANNOTATION_REF_NAME)?;
    if n.contains([':', '/']) {
        Reference::parse(n).ok()
    } else {
        None
    }
}

/// Follows nested indexes to the image manifest for this platform.
fn pick_manifest(
    src: &Source,
    d: &Descriptor,
    depth: u32,
) -> Result<(Digest, Manifest), LoadError> {
    let b = read_verified(src, &d.digest, Some(d.size))?;
    let member = blob_member(&d.digest);
    let nested = d.is_index()
        || (depth == 0 && d.media_type.is_empty() && {
            serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v.get("manifests").cloned())
                .is_some()
        });
    if !nested {
        return Ok((d.digest.clone(), parse_json(&member, &b)?));
    }
    if depth > 4 {
        return Err(LoadError::NoPlatform {
            member,
            arch: host_arch().into(),
        });
    }
    let idx: Index = parse_json(&member, &b)?;
    let arch = host_arch();
    let is_image = |m: &&Descriptor| {
        m.platform
            .as_ref()
            .is_none_or(|p| p.os != "unknown" && p.architecture != "unknown")
    };
    let candidates: Vec<&Descriptor> = idx.manifests.iter().filter(is_image).collect();
    let chosen = candidates
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or(if candidates.len() == 1 {
            candidates.first()
        } else {
            None
        })
        .ok_or_else(|| LoadError::NoPlatform {
            member: member.clone(),
            arch: arch.into(),
        })?;
    pick_manifest(src, chosen, depth + 1)
}

/// OCI image layout: index.json names manifests by digest.
fn plan_oci(src: &Source) -> Result<Vec<Planned>, LoadError> {
    let idx: Index = parse_json("index.json", &src.read_small("index.json", MAX_JSON)?)?;
    let mut by_manifest: BTreeMap<Digest, (Manifest, Vec<Reference>)> = BTreeMap::new();
    for d in &idx.manifests {
        let (md, m) = pick_manifest(src, d, 0)?;
        let slot = by_manifest.entry(md).or_insert_with(|| (m, Vec::new()));
        slot.1.extend(entry_name(d));
    }
    let mut out = Vec::new();
    for (_, (m, mut tags)) in by_manifest {
        tags.sort();
        tags.dedup();
        let config = read_verified(src, &m.config.digest, Some(m.config.size))?;
        out.push(Planned {
            config_member: blob_member(&m.config.digest),
            config,
            layers: m
                .layers
                .iter()
                .map(|l| PlannedLayer {
                    member: blob_member(&l.digest),
                    expected: Some((l.digest.clone(), Some(l.size))),
                })
                .collect(),
            tags,
        });
    }
    Ok(out)
}

fn rename(from: &Path, to: &Path) -> Result<(), LoadError> {
    fs::rename(from, to).map_err(|cause| LoadError::Work {
        path: to.to_path_buf(),
        step: "cannot move into place",
        cause,
    })
}

/// What is known about a layer before reading it.
struct LayerInput<'a> {
    member: String,
    reader: Box<dyn Read + 'a>,
    size: u64,
    expected_blob: Option<(Digest, Option<u64>)>,
    expected_diff: Option<DiffId>,
    label: String,
}

/// Streams one layer into the store; returns its record and warnings.
fn extract_layer(
    store: &Store,
    _lock: &Lock,
    input: LayerInput<'_>,
    opts: &LoadOptions,
    progress: &Progress,
) -> Result<(LayerInfo, Vec<String>), LoadError> {
    let member = input.member.clone();
    let work = WorkDir::new(store, "layer");
    fs::create_dir_all(work.path.join("diff")).map_err(|cause| LoadError::Work {
        path: work.path.clone(),
        step: "cannot create",
        cause,
    })?;
    let blob_path = work.path.join("blob");
    let blob_file = File::create(&blob_path).map_err(|cause| LoadError::Work {
        path: blob_path.clone(),
        step: "cannot create",
        cause,
    })?;
    let counted = ProgressReader {
        inner: input.reader,
        progress,
        label: input.label.clone(),
        done: 0,
        total: input.size,
    };
    let tee = TeeReader::new(counted, BufWriter::with_capacity(1 << 20, blob_file));
    let mut blob_hash = HashingReader::new(tee);
    let stream_err = |cause: io::Error| LoadError::Stream {
        member: member.clone(),
        cause,
    };
    let (compression, stats, diff_digest) = {
        let buffered = BufReader::with_capacity(1 << 18, &mut blob_hash);
        let (c, dec) = compress::decompress(buffered).map_err(|cause| LoadError::Compress {
            member: member.clone(),
            cause,
        })?;
        let mut diff_hash = HashingReader::new(dec);
        let dir = work.path.join("diff");
        let dirfd = sys::open_dir_path(&dir).map_err(|e| LoadError::Work {
            path: dir.clone(),
            step: "cannot open",
            cause: e.to_io(),
        })?;
        let stats =
            extract::extract(&mut diff_hash, dirfd.as_fd(), opts.extract).map_err(|cause| {
                match cause {
                    // Errors of the stream below the tar parser (a corrupt gzip
                    // member) are reported as such.
                    ExtractError::Read { cause, .. }
                        if cause.kind() == io::ErrorKind::InvalidInput
                            || cause.kind() == io::ErrorKind::InvalidData =>
                    {
                        LoadError::Stream {
                            member: member.clone(),
                            cause,
                        }
                    }
                    cause => LoadError::Extract {
                        member: member.clone(),
                        cause,
                    },
                }
            })?;
        let (d, _) = diff_hash.finish().map_err(stream_err)?;
        (c, stats, d)
    };
    let (blob_digest, blob_len, tee) = blob_hash.finish_into().map_err(stream_err)?;
    tee.into_writer()
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_data())
        .map_err(|cause| LoadError::Work {
            path: blob_path.clone(),
            step: "cannot write",
            cause,
        })?;
    if let Some((d, size)) = &input.expected_blob {
        if &blob_digest != d {
            return Err(LoadError::BlobDigest {
                member,
                expected: d.clone(),
                actual: blob_digest,
            });
        }
        if let Some(s) = size
            && *s != blob_len
        {
            return Err(LoadError::BlobSize {
                member,
                expected: *s,
                actual: blob_len,
            });
        }
    }
    let diff = DiffId(diff_digest);
    if let Some(want) = &input.expected_diff
        && want != &diff
    {
        return Err(LoadError::DiffId {
            member,
            expected: want.clone(),
            actual: diff,
        });
    }
    let info = LayerInfo {
        diff_id: diff.clone(),
        blob: Descriptor::new(
            oci::layer_media_type(compression),
            blob_digest.clone(),
            blob_len,
        ),
        size: stats.content_bytes,
        entries: stats.entries,
    };
    let warnings = stats
        .warnings
        .iter()
        .map(|w| format!("layer {}: {w}", diff.0.short()))
        .collect();
    if let Some(existing) = store.layer_info(&diff)? {
        // Same content already extracted (an import of a differently
        // compressed copy, or a layer whose blob went missing): keep the
        // directory, make sure its blob is there.
        if !store.has_blob(&existing.blob.digest) {
            rename(&blob_path, &store.blob_path(&blob_digest))?;
            let json = serde_json::to_vec_pretty(&info).map_err(|cause| LoadError::Json {
                member: "layer.json".into(),
                cause,
            })?;
            store.write_atomic(&store.layer_path(&diff).join("layer.json"), &json)?;
            return Ok((info, warnings));
        }
        return Ok((existing, Vec::new()));
    }
    let json = serde_json::to_vec_pretty(&info).map_err(|cause| LoadError::Json {
        member: "layer.json".into(),
        cause,
    })?;
    let lj = work.path.join("layer.json");
    File::create(&lj)
        .and_then(|mut f| f.write_all(&json))
        .map_err(|cause| LoadError::Work {
            path: lj.clone(),
            step: "cannot write",
            cause,
        })?;
    rename(&blob_path, &store.blob_path(&blob_digest))?;
    rename(&work.path, &store.layer_path(&diff))?;
    work.keep();
    Ok((info, warnings))
}

/// The store's record of a layer, when it has the layer and its blob.
fn existing_layer(store: &Store, d: &DiffId) -> Result<Option<LayerInfo>, LoadError> {
    Ok(store
        .layer_info(d)?
        .filter(|i| store.has_blob(&i.blob.digest) && store.layer_diff(d).is_dir()))
}

/// Writes config and manifest blobs and the index entries of one image.
fn commit_image(
    store: &Store,
    lock: &Lock,
    config: &[u8],
    layers: &[LayerInfo],
    tags: &[Reference],
) -> Result<Digest, LoadError> {
    let id = store.put_blob(lock, config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MT_OCI_MANIFEST.into()),
        config: Descriptor::new(oci::MT_OCI_CONFIG, id.clone(), config.len() as u64),
        layers: layers.iter().map(|l| l.blob.clone()).collect(),
    };
    let mbytes = serde_json::to_vec(&manifest).map_err(|cause| LoadError::Json {
        member: "manifest".into(),
        cause,
    })?;
    let md = store.put_blob(lock, &mbytes)?;
    let desc = Descriptor::new(oci::MT_OCI_MANIFEST, md, mbytes.len() as u64);
    if tags.is_empty() {
        store.set_tag(lock, &desc, None)?;
    }
    for t in tags {
        store.set_tag(lock, &desc, Some(t))?;
    }
    Ok(id)
}

/// Loads every image of `input` (a file or directory).
pub fn load(
    store: &Store,
    lock: &Lock,
    input: &Path,
    opts: &LoadOptions,
) -> Result<Vec<Loaded>, LoadError> {
    let src = Source::open(input, &store.tmp_dir())?;
    let plans = plan(&src)?;
    let progress = Progress::new(opts.progress);
    let mut out = Vec::new();
    for p in plans {
        let r = load_one(store, lock, &src, p, opts, &progress);
        progress.clear();
        out.push(r?);
    }
    Ok(out)
}

fn load_one(
    store: &Store,
    lock: &Lock,
    src: &Source,
    p: Planned,
    opts: &LoadOptions,
    progress: &Progress,
) -> Result<Loaded, LoadError> {
    let config: ImageConfig = parse_json(&p.config_member, &p.config)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != p.layers.len() {
        return Err(LoadError::LayerCount {
            config: p.config_member,
            diff_ids: diff_ids.len(),
            layers: p.layers.len(),
        });
    }
    let mut infos = Vec::new();
    let mut warnings = Vec::new();
    let (mut new_layers, mut reused_layers) = (0, 0);
    let n = p.layers.len();
    for (i, (l, diff)) in p.layers.iter().zip(diff_ids).enumerate() {
        if let Some(info) = existing_layer(store, diff)? {
            reused_layers += 1;
            infos.push(info);
            continue;
        }
        let (reader, size) = src.open_member(&l.member)?;
        let (info, w) = extract_layer(
            store,
            lock,
            LayerInput {
                member: l.member.clone(),
                reader,
                size,
                expected_blob: l.expected.clone(),
                expected_diff: Some(diff.clone()),
                label: format!("Loading layer {}/{n} {}", i + 1, diff.0.short()),
            },
            opts,
            progress,
        )?;
        new_layers += 1;
        warnings.extend(w);
        infos.push(info);
    }
    let id = commit_image(store, lock, &p.config, &infos, &p.tags)?;
    Ok(Loaded {
        id,
        tags: p.tags,
        new_layers,
        reused_layers,
        warnings,
    })
}

/// Imports one layer tarball as a one-layer image.
pub fn import(
    store: &Store,
    lock: &Lock,
    file: &Path,
    tag: Option<&Reference>,
    opts: &LoadOptions,
) -> Result<Loaded, LoadError> {
    let open = || {
        File::open(file).map_err(|cause| {
            LoadError::Source(SourceError::Open {
                path: file.to_path_buf(),
                cause,
            })
        })
    };
    let member = file.display().to_string();
    // Hash first: a blob the store already has is not extracted again.
    let (blob_digest, size) = HashingReader::new(BufReader::with_capacity(1 << 20, open()?))
        .finish()
        .map_err(|cause| LoadError::Stream {
            member: member.clone(),
            cause,
        })?;
    let known = store
        .layers()?
        .into_iter()
        .find(|l| l.blob.digest == blob_digest && store.has_blob(&blob_digest));
    let progress = Progress::new(opts.progress);
    let (info, warnings, new_layers) = match known {
        Some(info) => (info, Vec::new(), 0),
        None => {
            let r = extract_layer(
                store,
                lock,
                LayerInput {
                    member: member.clone(),
                    reader: Box::new(open()?),
                    size,
                    expected_blob: Some((blob_digest, Some(size))),
                    expected_diff: None,
                    label: "Importing".into(),
                },
                opts,
                &progress,
            );
            progress.clear();
            let (info, w) = r?;
            (info, w, 1)
        }
    };
    let (secs, nanos) = format::now();
    let created = format::format_rfc3339(secs, nanos);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let config = serde_json::json!({
        "architecture": host_arch(),
        "os": "linux",
        "created": created,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [info.diff_id.to_string()]},
        "history": [{
            "created": created,
            "created_by": format!("layerfs import {name}"),
            "comment": format!("Imported from {name}"),
        }],
    });
    let config = serde_json::to_vec(&config).map_err(|cause| LoadError::Json {
        member: "config".into(),
        cause,
    })?;
    let tags: Vec<Reference> = tag.cloned().into_iter().collect();
    let id = commit_image(store, lock, &config, std::slice::from_ref(&info), &tags)?;
    Ok(Loaded {
        id,
        tags,
        new_layers,
        reused_layers: 1 - new_layers,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_digest_table() {
        let hex = "a".repeat(64);
        let cases: Vec<(String, bool)> = vec![
            (format!("blobs/sha256/{hex}"), true),
            (format!("./blobs/sha256/{hex}"), true),
            (format!("blobs/sha512/{hex}"), false),
            ("abc/layer.tar".into(), false),
            (format!("../blobs/sha256/{hex}"), false),
        ];
        for (m, want) in cases {
            assert_eq!(member_digest(&m).is_some(), want, "{m}");
        }
    }

    #[test]
    fn entry_name_table() {
        let d = |anns: &[(&str, &str)]| {
            let mut x = Descriptor::new(oci::MT_OCI_MANIFEST, Digest::of(b""), 0);
            for (k, v) in anns {
                x.annotations.insert((*k).into(), (*v).into());
            }
            x
        };
        let r = |s: &str| Reference::parse(s).ok();
        let cases = vec![
            (d(&[(oci::ANNOTATION_REF_NAME, "latest")]), None),
            (
                d(&[(oci::ANNOTATION_REF_NAME, "busybox:1")]),
                r("busybox:1"),
            ),
            (
                d(&[
                    (oci::ANNOTATION_REF_NAME, "latest"),
                    (
                        oci::ANNOTATION_CONTAINERD_NAME,
                        "docker.io/library/busybox:latest",
                    ),
                ]),
                r("busybox:latest"),
            ),
            (d(&[]), None),
        ];
        for (desc, want) in cases {
            assert_eq!(entry_name(&desc), want, "{:?}", desc.annotations);
        }
    }
}
