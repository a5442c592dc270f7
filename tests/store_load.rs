//! `layerfs load/import/images/history/inspect/tag/rmi/prune` through the
//! built binary, on images built in code (tests/store_fixtures). The merged
//! view of the loaded layers is computed with the OCI rules and compared
//! with the expected tree; mount-tests/store.rs checks the real mount.

mod store_fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use store_fixtures::*;

struct Env {
    t: tempfile::TempDir,
    root: PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    Env { t, root }
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.t.path().join(p)
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_layerfs"))
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "layerfs {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(!o.status.success(), "layerfs {args:?} succeeded");
        String::from_utf8(o.stderr).unwrap()
    }

    fn inspect(&self, image: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", image])).unwrap();
        v[0].clone()
    }

    fn lower_dirs(&self, image: &str) -> Vec<PathBuf> {
        let v = self.inspect(image);
        v["GraphDriver"]["Data"]["LowerDir"]
            .as_str()
            .unwrap()
            .split(':')
            .map(PathBuf::from)
            .collect()
    }

    fn merged(&self, image: &str) -> std::collections::BTreeMap<String, String> {
        merge_layers(&self.lower_dirs(image))
    }

    fn count(&self, sub: &str) -> usize {
        fs::read_dir(self.root.join(sub)).map_or(0, |r| r.count())
    }

    /// Nothing of a failed load is visible.
    fn nothing_left(&self) {
        assert_eq!(self.count("layers"), 0, "a layer directory stayed");
        assert_eq!(self.count("tmp"), 0, "work files stayed in tmp/");
        let idx = fs::read_to_string(self.root.join("index.json")).unwrap_or_default();
        assert!(!idx.contains("ref.name"), "index changed: {idx}");
    }
}

fn write(p: &Path, b: &[u8]) {
    fs::write(p, b).unwrap();
}

#[test]
fn load_oci_layout_dir_all_compressions() {
    for c in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let e = env();
        let dir = e.path("oci");
        write_oci_dir(&dir, &[standard_image("test/std:1")], c);
        let out = e.ok(&["load", "-i", dir.to_str().unwrap()]);
        assert_eq!(out, "Loaded image: test/std:1\n", "{c:?}");
        assert_eq!(e.merged("test/std:1"), expected_tree(), "{c:?}");
        assert_eq!(e.count("layers"), 4);
        // The store is itself an OCI layout with the layer blobs as received.
        let v = e.inspect("test/std:1");
        let md = v["Descriptor"]["digest"].as_str().unwrap();
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(e.root.join("blobs/sha256").join(hex(md))).unwrap())
                .unwrap();
        assert_eq!(m["layers"][0]["mediaType"], media_type(c));
        assert!(e.root.join("oci-layout").is_file());
    }
}

#[test]
fn load_oci_tar_and_gzipped_docker_save() {
    let e = env();
    let dir = e.path("oci");
    write_oci_dir(&dir, &[standard_image("a:1")], Comp::Zstd);
    let t = e.path("oci.tar");
    write(&t, &tar_dir(&dir));
    assert_eq!(
        e.ok(&["load", "-i", t.to_str().unwrap()]),
        "Loaded image: a:1\n"
    );
    assert_eq!(e.merged("a:1"), expected_tree());
    let legacy = e.path("save.tar.gz");
    write(
        &legacy,
        &compress(&docker_legacy_tar(&standard_image("b:2")), Comp::Gzip),
    );
    assert_eq!(
        e.ok(&["load", "-i", legacy.to_str().unwrap()]),
        "Loaded image: b:2\n"
    );
    assert_eq!(e.merged("b:2"), expected_tree());
    // Same layers: nothing new was extracted.
    assert_eq!(e.count("layers"), 4);
}

#[test]
fn load_docker_save_legacy_and_25() {
    let e = env();
    let legacy = e.path("legacy.tar");
    write(
        &legacy,
        &docker_legacy_tar(&standard_image("busybox:legacy")),
    );
    assert_eq!(
        e.ok(&["load", "-i", legacy.to_str().unwrap()]),
        "Loaded image: busybox:legacy\n"
    );
    assert_eq!(e.merged("busybox:legacy"), expected_tree());
    let d25 = e.path("d25.tar");
    write(
        &d25,
        &docker25_tar(&standard_image("busybox:25"), e.t.path()),
    );
    assert_eq!(
        e.ok(&["load", "-i", d25.to_str().unwrap()]),
        "Loaded image: busybox:25\n"
    );
    assert_eq!(e.merged("busybox:25"), expected_tree());
    // One config, one image ID, two tags.
    let images = e.ok(&["images"]);
    assert!(
        images.starts_with("REPOSITORY   TAG      IMAGE ID       CREATED"),
        "{images}"
    );
    assert_eq!(images.lines().count(), 3, "{images}");
    assert_eq!(
        e.inspect("busybox:25")["Id"],
        e.inspect("busybox:legacy")["Id"]
    );
}

#[test]
fn legacy_symlinked_duplicate_layer() {
    let e = env();
    let base = layer_tar(&[E::File("a", "a\n", 0o644)]);
    let img = TestImage {
        layers: vec![base.clone(), layer_tar(&[E::File("b", "b\n", 0o644)]), base],
        tags: vec!["dup:1".into()],
        empty_history: 0,
    };
    let p = e.path("dup.tar");
    write(&p, &docker_legacy_tar(&img));
    e.ok(&["load", "-i", p.to_str().unwrap()]);
    assert_eq!(e.count("layers"), 2);
    assert_eq!(e.lower_dirs("dup:1").len(), 3);
}

#[test]
fn shared_base_layers_are_extracted_once() {
    let e = env();
    let mut second = standard_image("two:1");
    second.layers.truncate(2);
    second
        .layers
        .push(layer_tar(&[E::File("extra", "x\n", 0o644)]));
    let dir = e.path("oci");
    write_oci_dir(&dir, &[standard_image("one:1"), second], Comp::Gzip);
    let out = e.ok(&["load", "-i", dir.to_str().unwrap()]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(e.count("layers"), 5);
    let one = e.lower_dirs("one:1");
    let two = e.lower_dirs("two:1");
    assert_eq!(one[3], two[2]);
    assert_eq!(one[2], two[1]);
    // Loading again extracts nothing: the layer directories stay the same.
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before: Vec<u64> = one.iter().map(|p| ino(p)).collect();
    e.ok(&["load", "-i", dir.to_str().unwrap()]);
    let after: Vec<u64> = one.iter().map(|p| ino(p)).collect();
    assert_eq!(before, after);
}

#[test]
fn import_detects_compression_from_magic() {
    let e = env();
    let layer = layer_tar(&[E::Dir("etc", 0o755), E::File("etc/motd", "hi\n", 0o644)]);
    // Misleading file names on purpose.
    for (name, c) in [
        ("plain.tar.gz", Comp::None),
        ("gz.tar", Comp::Gzip),
        ("zst.tgz", Comp::Zstd),
    ] {
        let p = e.path(name);
        write(&p, &compress(&layer, c));
        let out = e.ok(&[
            "import",
            p.to_str().unwrap(),
            &format!("imp:{}", name.replace('.', "-")),
        ]);
        assert!(out.starts_with("sha256:") && out.len() == 72, "{out}");
    }
    // Three blobs of one layer: one directory.
    assert_eq!(e.count("layers"), 1);
    let merged = e.merged("imp:gz-tar");
    assert_eq!(merged["etc/motd"], "f 644 hi\n");
    // Importing the same file again reuses everything, same image ID
    // differs only by creation time.
    let p = e.path("gz.tar");
    e.ok(&["import", p.to_str().unwrap()]);
    assert_eq!(e.count("layers"), 1);
    let untagged = e.ok(&["images"]);
    assert!(untagged.contains("<none>"), "{untagged}");
}

#[test]
fn images_history_inspect_tag_rmi_prune() {
    let e = env();
    let dir = e.path("oci");
    write_oci_dir(&dir, &[standard_image("app:v1")], Comp::Gzip);
    e.ok(&["load", "-i", dir.to_str().unwrap()]);
    let id = e.inspect("app:v1")["Id"].as_str().unwrap().to_string();
    let short = &hex(&id)[..12];

    let images = e.ok(&["images"]);
    let row: Vec<&str> = images
        .lines()
        .nth(1)
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(row[0], "app");
    assert_eq!(row[1], "v1");
    assert_eq!(row[2], short);
    assert!(row[3].ends_with("ago"), "{images}");
    assert!(row[4].ends_with('B'), "{images}");

    let history = e.ok(&["history", "app:v1"]);
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("IMAGE"), "{history}");
    assert!(lines[0].contains("CREATED BY") && lines[0].contains("COMMENT"));
    assert_eq!(lines.len(), 1 + 5, "{history}");
    assert!(lines[1].starts_with(short), "{history}");
    assert!(
        lines[1].contains("CMD") && lines[1].contains(" 0B"),
        "{history}"
    );
    assert!(
        lines[2..].iter().all(|l| l.starts_with("<missing>")),
        "{history}"
    );

    let v = e.inspect("app:v1");
    assert_eq!(v["RepoTags"], serde_json::json!(["app:v1"]));
    assert_eq!(v["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(v["RootFS"]["Layers"].as_array().unwrap().len(), 4);
    assert_eq!(e.inspect(short)["Id"], v["Id"]);
    assert_eq!(e.inspect(&id)["Id"], v["Id"]);

    assert_eq!(e.ok(&["tag", "app:v1", "app:latest"]), "");
    assert_eq!(e.inspect("app")["Id"], v["Id"]);
    // By ID with two tags: refused without -f.
    assert!(e.fails(&["rmi", short]).contains("must be forced"));
    assert_eq!(e.ok(&["rmi", "app:latest"]), "Untagged: app:latest\n");
    // A container using the image blocks its removal.
    fs::create_dir_all(e.root.join("containers/c1")).unwrap();
    fs::write(e.root.join("containers/c1/image"), &id).unwrap();
    assert!(e.fails(&["rmi", "app:v1"]).contains("container c1"));
    fs::remove_dir_all(e.root.join("containers/c1")).unwrap();
    // Nothing to prune while the image exists.
    assert_eq!(e.ok(&["prune"]), "Total reclaimed space: 0B\n");
    assert_eq!(
        e.ok(&["rmi", "app:v1"]),
        format!("Untagged: app:v1\nDeleted: {id}\n")
    );
    assert!(e.fails(&["inspect", "app:v1"]).contains("No such image"));
    let pruned = e.ok(&["prune"]);
    assert!(pruned.starts_with("Deleted layers:\n"), "{pruned}");
    assert!(!pruned.ends_with("space: 0B\n"), "{pruned}");
    assert_eq!(e.count("layers"), 0);
    assert_eq!(e.count("blobs/sha256"), 0);
}

#[test]
fn layer_digest_mismatch_leaves_nothing() {
    let e = env();
    let dir = e.path("oci");
    write_oci_dir(&dir, &[standard_image("bad:1")], Comp::None);
    // Corrupt the second layer's blob, keeping its name.
    let l1 = sha256(&standard_layers()[1]);
    let p = dir.join("blobs/sha256").join(hex(&l1));
    let mut b = fs::read(&p).unwrap();
    let i = b.iter().position(|&c| c == b'v').unwrap();
    b[i] = b'w';
    fs::write(&p, &b).unwrap();
    let err = e.fails(&["load", "-i", dir.to_str().unwrap()]);
    assert!(
        err.contains(hex(&l1)) && err.contains("digest mismatch"),
        "{err}"
    );
    // The first layer was complete and verified: it may stay; the bad one
    // must not. Then nothing half-visible: only verified layers exist.
    assert!(e.count("layers") <= 1);
    assert_eq!(e.count("tmp"), 0);
    assert!(!e.root.join("layers").join(hex(&l1)).exists());
}

#[test]
fn diff_id_mismatch_leaves_nothing() {
    let e = env();
    let img = standard_image("bad:1");
    // A docker-save archive whose config lists a wrong diffID.
    let mut tar = docker_legacy_tar(&img);
    let good = hex(&sha256(&img.layers[0])).to_string();
    let bad = "0".repeat(64);
    // Rewrite the config inside the archive: rebuild with a patched config.
    let cfg = String::from_utf8(img.config())
        .unwrap()
        .replace(&good, &bad);
    let mut b = tar::Builder::new(Vec::new());
    let mut ar = tar::Archive::new(&tar[..]);
    let cd = hex(&sha256(cfg.as_bytes())).to_string();
    for en in ar.entries().unwrap() {
        let mut en = en.unwrap();
        let path = en.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut en, &mut data).unwrap();
        if path.ends_with(".json") && path != "manifest.json" {
            raw_long(&mut b, &format!("{cd}.json"), cfg.as_bytes());
        } else if path == "manifest.json" {
            let m = String::from_utf8(data).unwrap();
            let old = m
                .split('"')
                .find(|s| s.ends_with(".json"))
                .unwrap()
                .to_string();
            raw_long(
                &mut b,
                "manifest.json",
                m.replace(&old, &format!("{cd}.json")).as_bytes(),
            );
        } else if en.header().entry_type() == tar::EntryType::Regular {
            raw_long(&mut b, &path, &data);
        }
    }
    tar = finish(b);
    let p = e.path("bad.tar");
    write(&p, &tar);
    let err = e.fails(&["load", "-i", p.to_str().unwrap()]);
    assert!(
        err.contains("diffID mismatch") && err.contains(&bad),
        "{err}"
    );
    assert!(err.contains("layer.tar"), "names the layer: {err}");
    e.nothing_left();
}

#[test]
fn manifest_pointing_outside_the_archive() {
    let e = env();
    let manifest = br#"[{"Config":"../../../etc/passwd","RepoTags":["x:1"],"Layers":[]}]"#;
    let mut b = tar::Builder::new(Vec::new());
    raw_long(&mut b, "manifest.json", manifest);
    let p = e.path("evil.tar");
    write(&p, &finish(b));
    let err = e.fails(&["load", "-i", p.to_str().unwrap()]);
    assert!(err.contains("points outside the archive"), "{err}");
    // Layers that climb out, in a directory: refused too.
    let dir = e.path("evil");
    fs::create_dir(&dir).unwrap();
    let img = standard_image("x:1");
    fs::write(dir.join("c.json"), img.config()).unwrap();
    fs::write(
        dir.join("manifest.json"),
        br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["../oci.tar","a","b","c"]}]"#,
    )
    .unwrap();
    fs::write(e.path("oci.tar"), b"secret").unwrap();
    let err = e.fails(&["load", "-i", dir.to_str().unwrap()]);
    assert!(err.contains("points outside the archive"), "{err}");
    // A blob that is a symlink to a file outside the layout directory.
    let dir = e.path("oci");
    write_oci_dir(&dir, &[standard_image("y:1")], Comp::None);
    let l0 = hex(&sha256(&standard_layers()[0])).to_string();
    let blob = dir.join("blobs/sha256").join(&l0);
    fs::rename(&blob, e.path("outside-blob")).unwrap();
    std::os::unix::fs::symlink(e.path("outside-blob"), &blob).unwrap();
    let err = e.fails(&["load", "-i", dir.to_str().unwrap()]);
    assert!(err.contains("points outside the archive"), "{err}");
    e.nothing_left();
}

#[test]
fn hostile_layer_in_an_image_leaves_nothing() {
    let e = env();
    let mut b = tar::Builder::new(Vec::new());
    raw(&mut b, b"ok", tar::EntryType::Regular, b"", b"fine", 0o644);
    raw(
        &mut b,
        b"../../escape",
        tar::EntryType::Regular,
        b"",
        b"x",
        0o644,
    );
    let img = TestImage {
        layers: vec![finish(b)],
        tags: vec!["evil:1".into()],
        empty_history: 0,
    };
    let p = e.path("evil.tar");
    write(&p, &docker_legacy_tar(&img));
    let err = e.fails(&["load", "-i", p.to_str().unwrap()]);
    assert!(err.contains("../../escape"), "{err}");
    e.nothing_left();
    assert!(!e.t.path().join("escape").exists());
}

#[test]
fn truncated_archive_fails_cleanly() {
    let e = env();
    let full = compress(&docker_legacy_tar(&standard_image("t:1")), Comp::Gzip);
    let p = e.path("t.tar.gz");
    write(&p, &full[..full.len() / 2]);
    let err = e.fails(&["load", "-i", p.to_str().unwrap()]);
    assert!(err.contains("t.tar.gz"), "{err}");
    e.nothing_left();
    let layer = compress(&layer_tar(&[E::File("f", "data", 0o644)]), Comp::Zstd);
    let p = e.path("l.zst");
    write(&p, &layer[..layer.len() - 5]);
    e.fails(&["import", p.to_str().unwrap(), "t:2"]);
    e.nothing_left();
}

#[test]
fn leftovers_are_cleaned_by_the_next_command() {
    let e = env();
    let layer = e.path("l.tar");
    write(&layer, &layer_tar(&[E::File("f", "x", 0o644)]));
    e.ok(&["import", layer.to_str().unwrap(), "a:1"]);
    // An interrupted load leaves work in tmp/ (possibly read-only dirs).
    let junk = e.root.join("tmp/layer-99999-0/diff/ro");
    fs::create_dir_all(&junk).unwrap();
    fs::write(junk.join("f"), "x").unwrap();
    fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    e.ok(&["tag", "a:1", "a:2"]);
    assert_eq!(e.count("tmp"), 0);
}

#[test]
fn concurrent_loads_are_serialized() {
    let e = env();
    let mut paths = Vec::new();
    for i in 0..4 {
        let mut img = standard_image(&format!("c:{i}"));
        img.layers.push(layer_tar(&[E::File(
            "n",
            if i % 2 == 0 { "even" } else { "odd" },
            0o644,
        )]));
        let dir = e.path(&format!("oci{i}"));
        write_oci_dir(&dir, &[img], Comp::Gzip);
        paths.push(dir);
    }
    let children: Vec<_> = paths
        .iter()
        .map(|p| {
            Command::new(env!("CARGO_BIN_EXE_layerfs"))
                .arg("--root")
                .arg(&e.root)
                .args(["load", "-i"])
                .arg(p)
                .output()
        })
        .collect();
    for c in children {
        let o = c.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let images = e.ok(&["images", "-q"]);
    assert_eq!(images.lines().count(), 2, "{images}");
    assert_eq!(e.count("layers"), 6);
}

#[test]
fn not_an_image_points_to_import() {
    let e = env();
    let p = e.path("layer.tar");
    write(&p, &layer_tar(&[E::File("f", "x", 0o644)]));
    let err = e.fails(&["load", "-i", p.to_str().unwrap()]);
    assert!(err.contains("layerfs import"), "{err}");
}
