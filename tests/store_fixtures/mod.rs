//! Test images built in code: layer tars (well-formed and hostile), and
//! whole images as an OCI layout (directory or tar), a legacy `docker save`
//! archive and a Docker 25+ (OCI-in-tar) archive, gzip or zstd.
//!
//! The standard image has four layers that add, modify, whiteout and
//! opaque-replace files; [`expected_tree`] is what mounting it must show.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

pub fn sha256(b: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for x in Sha256::digest(b) {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

pub fn hex(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

/// One entry of a well-formed layer.
#[derive(Clone, Debug)]
pub enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static str, u32),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    /// `.wh.NAME` for this path.
    Whiteout(&'static str),
    /// `DIR/.wh..wh..opq`.
    Opaque(&'static str),
}

pub const MTIME: u64 = 1_700_000_000;

/// Appends a raw entry; the name and link bytes are written as they are
/// (up to 100 bytes), so hostile names survive.
pub fn raw(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: EntryType,
    link: &[u8],
    data: &[u8],
    mode: u32,
) {
    let mut h = Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name);
        g.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

pub fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, m) => raw(
                &mut b,
                format!("{p}/").as_bytes(),
                EntryType::Directory,
                b"",
                b"",
                *m,
            ),
            E::File(p, c, m) => raw(
                &mut b,
                p.as_bytes(),
                EntryType::Regular,
                b"",
                c.as_bytes(),
                *m,
            ),
            E::Symlink(p, t) => raw(
                &mut b,
                p.as_bytes(),
                EntryType::Symlink,
                t.as_bytes(),
                b"",
                0o777,
            ),
            E::Hardlink(p, t) => raw(
                &mut b,
                p.as_bytes(),
                EntryType::Link,
                t.as_bytes(),
                b"",
                0o644,
            ),
            E::Whiteout(p) => {
                let (d, n) = p.rsplit_once('/').map_or(("", *p), |(d, n)| (d, n));
                let name = if d.is_empty() {
                    format!(".wh.{n}")
                } else {
                    format!("{d}/.wh.{n}")
                };
                raw(&mut b, name.as_bytes(), EntryType::Regular, b"", b"", 0o644)
            }
            E::Opaque(d) => raw(
                &mut b,
                format!("{d}/.wh..wh..opq").as_bytes(),
                EntryType::Regular,
                b"",
                b"",
                0o644,
            ),
        }
    }
    b.into_inner().unwrap()
}

/// Finishes a raw builder (end-of-archive blocks included).
pub fn finish(b: tar::Builder<Vec<u8>>) -> Vec<u8> {
    b.into_inner().unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(b: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => b.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(b, 3).unwrap(),
    }
}

pub fn media_type(c: Comp) -> &'static str {
    match c {
        Comp::None => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// An image to build: uncompressed layer tars, base first.
#[derive(Clone)]
pub struct TestImage {
    pub layers: Vec<Vec<u8>>,
    pub tags: Vec<String>,
    /// Extra history entries with empty_layer (e.g. CMD), appended last.
    pub empty_history: usize,
}

impl TestImage {
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha256(l)).collect()
    }

    pub fn config(&self) -> Vec<u8> {
        let mut history: Vec<serde_json::Value> = (0..self.layers.len())
            .map(|i| {
                serde_json::json!({
                    "created": "2024-01-02T03:04:05Z",
                    "created_by": format!("/bin/sh -c #(nop) ADD layer{i} /"),
                })
            })
            .collect();
        for _ in 0..self.empty_history {
            history.push(serde_json::json!({
                "created": "2024-01-02T03:04:06Z",
                "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]",
                "empty_layer": true,
            }));
        }
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-02T03:04:06Z",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
            "history": history,
        }))
        .unwrap()
    }
}

/// The standard four-layer image.
pub fn standard_layers() -> Vec<Vec<u8>> {
    vec![
        // 1: base
        layer_tar(&[
            E::Dir("etc", 0o755),
            E::File("etc/os-release", "ID=test\n", 0o644),
            E::File("etc/keep", "keep\n", 0o644),
            E::File("etc/gone", "gone\n", 0o644),
            E::Dir("bin", 0o755),
            E::File("bin/tool", "#!/bin/sh\necho v1\n", 0o755),
            E::Hardlink("bin/tool-link", "bin/tool"),
            E::Symlink("bin/sh", "/bin/tool"),
            E::Dir("opt", 0o755),
            E::Dir("opt/app", 0o755),
            E::File("opt/app/old1", "old1\n", 0o644),
            E::Dir("opt/app/sub", 0o700),
            E::File("opt/app/sub/old2", "old2\n", 0o600),
            E::File("suid", "x", 0o4755),
        ]),
        // 2: modify and add
        layer_tar(&[
            E::Dir("bin", 0o755),
            E::File("bin/tool", "#!/bin/sh\necho v2\n", 0o755),
            E::Dir("var", 0o755),
            E::File("var/new", "new\n", 0o640),
        ]),
        // 3: whiteouts
        layer_tar(&[
            E::Dir("etc", 0o755),
            E::Whiteout("etc/gone"),
            E::Whiteout("var"),
        ]),
        // 4: opaque directory replacing opt/app
        layer_tar(&[
            E::Dir("opt", 0o755),
            E::Dir("opt/app", 0o755),
            E::Opaque("opt/app"),
            E::File("opt/app/fresh", "fresh\n", 0o644),
        ]),
    ]
}

pub fn standard_image(tag: &str) -> TestImage {
    TestImage {
        layers: standard_layers(),
        tags: vec![tag.to_string()],
        empty_history: 1,
    }
}

/// What the merged standard image looks like (see [`tree_of`]).
pub fn expected_tree() -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    let mut put = |p: &str, v: &str| {
        t.insert(p.to_string(), v.to_string());
    };
    put("bin", "d 755");
    put("bin/sh", "l /bin/tool");
    put("bin/tool", "f 755 #!/bin/sh\necho v2\n");
    put("bin/tool-link", "f 755 #!/bin/sh\necho v1\n");
    put("etc", "d 755");
    put("etc/keep", "f 644 keep\n");
    put("etc/os-release", "f 644 ID=test\n");
    put("opt", "d 755");
    put("opt/app", "d 755");
    put("opt/app/fresh", "f 644 fresh\n");
    put("suid", "f 4755 x");
    t
}

/// A directory's tree: `d MODE`, `f MODE CONTENT`, `l TARGET`, `c MAJ:MIN`,
/// `p`, keyed by relative path.
pub fn tree_of(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mode = m.mode() & 0o7777;
        let v = if ft.is_dir() {
            walk(root, &p, out);
            format!("d {mode:o}")
        } else if ft.is_symlink() {
            format!("l {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!(
                "f {mode:o} {}",
                String::from_utf8_lossy(&fs::read(&p).unwrap())
            )
        } else if ft.is_char_device() {
            format!("c {}:{}", libc::major(m.rdev()), libc::minor(m.rdev()))
        } else {
            "p".to_string()
        };
        out.insert(rel, v);
    }
}

/// Writes an OCI image layout for `images` into `dir`.
pub fn write_oci_dir(dir: &Path, images: &[TestImage], c: Comp) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> (String, usize) {
        let d = sha256(b);
        fs::write(blobs.join(hex(&d)), b).unwrap();
        (d, b.len())
    };
    let mut manifests = Vec::new();
    for img in images {
        let layers: Vec<serde_json::Value> = img
            .layers
            .iter()
            .map(|l| {
                let (d, n) = put(&compress(l, c));
                serde_json::json!({"mediaType": media_type(c), "digest": d, "size": n})
            })
            .collect();
        let (cd, cn) = put(&img.config());
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
            "layers": layers,
        }))
        .unwrap();
        let (md, mn) = put(&manifest);
        for t in &img.tags {
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": mn,
                "annotations": {"org.opencontainers.image.ref.name": t},
            }));
        }
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap(),
    )
    .unwrap();
}

/// Tars a directory (regular files and directories, sorted).
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files.sort();
    for rel in files {
        let p = dir.join(&rel);
        let data = fs::read(&p).unwrap();
        raw_long(&mut b, &rel, &data);
    }
    finish(b)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// A regular file of any name length (GNU long names as needed).
pub fn raw_long(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
}

/// A legacy `docker save` archive: `ID/layer.tar`, `CONFIG.json`,
/// manifest.json, repositories. The second of two identical layers is a
/// symlink to the first, as docker writes it.
pub fn docker_legacy_tar(img: &TestImage) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let config = img.config();
    let cd = sha256(&config);
    let mut layer_paths = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, l) in img.layers.iter().enumerate() {
        let id = hex(&sha256(format!("layer-id-{i}").as_bytes())).to_string();
        let path = format!("{id}/layer.tar");
        let d = sha256(l);
        if let Some(first) = seen.get(&d) {
            raw(
                &mut b,
                path.as_bytes(),
                EntryType::Symlink,
                format!("../{first}").as_bytes(),
                b"",
                0o777,
            );
        } else {
            raw_long(&mut b, &path, l);
            seen.insert(d, path.clone());
        }
        raw_long(&mut b, &format!("{id}/VERSION"), b"1.0");
        layer_paths.push(path);
    }
    raw_long(&mut b, &format!("{}.json", hex(&cd)), &config);
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", hex(&cd)),
        "RepoTags": img.tags,
        "Layers": layer_paths,
    }]);
    raw_long(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    finish(b)
}

/// A Docker 25+ `docker save` archive: an OCI layout (layers uncompressed
/// blobs, index.json with containerd names) plus manifest.json pointing
/// into blobs/sha256/.
pub fn docker25_tar(img: &TestImage, scratch: &Path) -> Vec<u8> {
    let dir = scratch.join("docker25");
    let _ = fs::remove_dir_all(&dir);
    let untagged = TestImage {
        tags: vec![],
        ..img.clone()
    };
    write_oci_dir(&dir, &[untagged], Comp::None);
    let config = img.config();
    let cd = sha256(&config);
    // Docker 25 index.json: one entry, full name + bare tag.
    let mdigest = {
        let layers: Vec<serde_json::Value> = img
            .layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": media_type(Comp::None), "digest": sha256(l), "size": l.len()}))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": layers,
        }))
        .unwrap();
        fs::write(
            dir.join("blobs/sha256").join(hex(&sha256(&manifest))),
            &manifest,
        )
        .unwrap();
        (sha256(&manifest), manifest.len())
    };
    let mut anns = serde_json::Map::new();
    if let Some(t) = img.tags.first() {
        anns.insert(
            "io.containerd.image.name".into(),
            format!("docker.io/library/{t}").into(),
        );
        anns.insert(
            "org.opencontainers.image.ref.name".into(),
            t.rsplit_once(':').map_or("latest", |x| x.1).into(),
        );
    }
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest.0, "size": mdigest.1, "annotations": anns}]}))
        .unwrap(),
    )
    .unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", hex(&cd)),
        "RepoTags": img.tags,
        "Layers": img.layers.iter().map(|l| format!("blobs/sha256/{}", hex(&sha256(l)))).collect::<Vec<_>>(),
    }]);
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    tar_dir(&dir)
}

/// What an overlay of `layers` (top first) shows, computed from the layer
/// directories' trees with the OCI whiteout rules: the reference the mount
/// tests and the load tests compare against.
pub fn merge_layers(layers: &[std::path::PathBuf]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut hidden: Vec<String> = Vec::new(); // paths hidden with all below
    let mut opaque: Vec<String> = Vec::new(); // dirs whose lower contents are hidden
    for l in layers {
        let tree = tree_of(l);
        let mut new_hidden = Vec::new();
        let mut new_opaque = Vec::new();
        for (p, v) in &tree {
            let (dir, name) = p.rsplit_once('/').map_or(("", p.as_str()), |(d, n)| (d, n));
            if name == ".wh..wh..opq" {
                new_opaque.push(dir.to_string());
                continue;
            }
            if let Some(n) = name.strip_prefix(".wh.") {
                new_hidden.push(if dir.is_empty() {
                    n.to_string()
                } else {
                    format!("{dir}/{n}")
                });
                continue;
            }
            let under = |a: &str| p == a || p.starts_with(&format!("{a}/"));
            if hidden.iter().any(|h| under(h)) {
                continue;
            }
            if opaque
                .iter()
                .any(|o| p.starts_with(&format!("{o}/")) || o.is_empty())
            {
                continue;
            }
            // An upper non-directory hides everything below it.
            let mut anc = p.as_str();
            let mut blocked = false;
            while let Some((a, _)) = anc.rsplit_once('/') {
                if out.get(a).is_some_and(|v| !v.starts_with('d')) {
                    blocked = true;
                }
                anc = a;
            }
            if blocked || out.contains_key(p) {
                continue;
            }
            out.insert(p.clone(), v.clone());
        }
        hidden.extend(new_hidden);
        opaque.extend(new_opaque);
    }
    out
}
