//! Images loaded into the store and mounted by name: the merged tree must
//! be exactly the expected one, for every input format and compression.
//! Needs root and /dev/fuse (see `common::mount_tests_required`).

mod common;
#[path = "../tests/store_fixtures/mod.rs"]
mod store_fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use store_fixtures::*;

/// Unmounts on drop, even when an assertion fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = common::unmount(&self.0, true) {
            eprintln!("error: {e}");
        }
    }
}

fn layerfs(root: &Path, args: &[&str]) -> String {
    let bin = common::layerfs_bin().expect("layerfs binary");
    let o = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "layerfs {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn mount(root: &Path, image: &str, mnt: &Path, extra: &[&str]) -> Mounted {
    fs::create_dir_all(mnt).unwrap();
    let mut args = vec!["mount", image, mnt.to_str().unwrap()];
    args.extend_from_slice(extra);
    let guard = Mounted(mnt.to_path_buf());
    layerfs(root, &args);
    assert!(common::is_mounted(mnt), "{} is not mounted", mnt.display());
    guard
}

#[test]
fn loaded_images_mount_with_the_expected_tree() {
    if !common::mount_tests_required() {
        return;
    }
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = t.path().join("store");
    let inputs: Vec<(&str, PathBuf)> = vec![
        ("oci-gzip:1", {
            let d = t.path().join("oci-gz");
            write_oci_dir(&d, &[standard_image("oci-gzip:1")], Comp::Gzip);
            d
        }),
        ("oci-zstd:1", {
            let d = t.path().join("oci-zst");
            write_oci_dir(&d, &[standard_image("oci-zstd:1")], Comp::Zstd);
            let p = t.path().join("oci-zst.tar");
            fs::write(&p, tar_dir(&d)).unwrap();
            p
        }),
        ("legacy:1", {
            let p = t.path().join("legacy.tar");
            fs::write(&p, docker_legacy_tar(&standard_image("legacy:1"))).unwrap();
            p
        }),
        ("docker25:1", {
            let p = t.path().join("d25.tar");
            fs::write(&p, docker25_tar(&standard_image("docker25:1"), t.path())).unwrap();
            p
        }),
    ];
    for (tag, input) in &inputs {
        assert_eq!(
            layerfs(&root, &["load", "-i", input.to_str().unwrap()]),
            format!("Loaded image: {tag}\n")
        );
        let mnt = t.path().join(format!("mnt-{tag}"));
        let m = mount(&root, tag, &mnt, &[]);
        assert_eq!(tree_of(&m.0), expected_tree(), "{tag}");
        // Read-only without --upper.
        assert!(fs::write(m.0.join("new"), "x").is_err());
    }
    // Every format shares the same four layer directories.
    assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 4);
}

#[test]
fn image_mount_with_upper_layer() {
    if !common::mount_tests_required() {
        return;
    }
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = t.path().join("store");
    let p = t.path().join("img.tar");
    fs::write(&p, docker_legacy_tar(&standard_image("rw:1"))).unwrap();
    layerfs(&root, &["load", "-i", p.to_str().unwrap()]);
    let (upper, work) = (t.path().join("upper"), t.path().join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let mnt = t.path().join("mnt");
    {
        let m = mount(
            &root,
            "rw:1",
            &mnt,
            &[
                "--upper",
                upper.to_str().unwrap(),
                "--work",
                work.to_str().unwrap(),
            ],
        );
        fs::write(m.0.join("etc/new"), "new\n").unwrap();
        fs::remove_file(m.0.join("etc/keep")).unwrap();
        fs::write(m.0.join("bin/tool"), "changed\n").unwrap();
        let mut want = expected_tree();
        want.remove("etc/keep");
        want.insert("etc/new".into(), "f 644 new\n".into());
        want.insert("bin/tool".into(), "f 755 changed\n".into());
        assert_eq!(tree_of(&m.0), want);
    }
    // The store's layers did not change.
    let fresh = t.path().join("mnt2");
    let m = mount(&root, "rw:1", &fresh, &[]);
    assert_eq!(tree_of(&m.0), expected_tree());
    assert_eq!(fs::read_to_string(upper.join("etc/new")).unwrap(), "new\n");
}
