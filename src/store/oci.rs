//! The JSON documents of the OCI image layout and of `docker save`, as serde
//! types, plus the media types layerfs reads and writes. Parsing only: no
//! I/O, no policy (which manifest to pick is in [`super::load`]).
//!
//! Unknown fields are ignored when reading; the store keeps the original
//! config bytes (so the image ID, the config's digest, never changes) and
//! writes its own manifests and index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::{DiffId, Digest};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The annotation of index.json entries that names the image.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full image name containerd and Docker 25+ put next to the ref name.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The content of the `oci-layout` file.
pub const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }

    /// True for a nested index (OCI index or docker manifest list).
    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(MT_OCI_INDEX.into()),
            manifests: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RootFs {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<DiffId>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The fields of an image config layerfs uses; the rest stays in the raw
/// bytes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ImageConfig {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<History>,
}

/// One entry of `docker save`'s manifest.json.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// The layer media type for a compression.
pub fn layer_media_type(c: super::compress::Compression) -> &'static str {
    use super::compress::Compression;
    match c {
        Compression::None => MT_LAYER_TAR,
        Compression::Gzip => MT_LAYER_GZIP,
        Compression::Zstd => MT_LAYER_ZSTD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_docker_manifest_json() {
        let s = r#"[{"Config":"abc.json","RepoTags":["busybox:latest"],"Layers":["x/layer.tar"]},
                    {"Config":"blobs/sha256/00","RepoTags":null,"Layers":[],"LayerSources":{}}]"#;
        let m: Vec<DockerManifestEntry> = serde_json::from_str(s).unwrap();
        assert_eq!(
            m[0].repo_tags.as_deref(),
            Some(&["busybox:latest".to_string()][..])
        );
        assert_eq!(m[1].repo_tags, None);
    }

    #[test]
    fn parse_config_with_history() {
        let d = Digest::of(b"layer");
        let s = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"]}},
               "rootfs":{{"type":"layers","diff_ids":["{d}"]}},
               "history":[{{"created":"2024-01-01T00:00:00Z","created_by":"ADD x /","empty_layer":false}},
                          {{"created_by":"CMD [\"sh\"]","empty_layer":true}}]}}"#
        );
        let c: ImageConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(c.rootfs.diff_ids, vec![DiffId(d)]);
        assert_eq!(c.history.len(), 2);
        assert!(c.history[1].empty_layer);
    }

    #[test]
    fn index_rejects_bad_digest() {
        let s = r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../../etc","size":1}]}"#;
        assert!(serde_json::from_str::<Index>(s).is_err());
    }
}
