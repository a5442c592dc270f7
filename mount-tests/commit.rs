//! The commit walk-through of issue 6 end to end: `run`, `commit -m`,
//! `commit -c`, `history`, running the committed image, `save`, `load` into
//! a fresh store, and skopeo reading the saved archive (skipped without
//! skopeo). The busybox base image is built here from the host's static
//! busybox, with the harness shared with mount-tests/run.rs (runner_env).
//!
//! Runs as an unprivileged user: as ourselves when we are not root, else as
//! `$LAYERFS_TEST_USER` (default `tester`, created by scripts/setup.sh).
//! Each test has its own store (`--root`). Without /dev/fuse, busybox or
//! such a user, every test prints "skipped", unless
//! `LAYERFS_REQUIRE_MOUNT_TESTS=1`, which makes that a failure.

use std::fs;
use std::path::Path;
use std::process::Command;

mod runner_env;
use runner_env::*;

fn inspect(e: &Env, root: &Path, image: &str) -> serde_json::Value {
    let mut c = e.cmd(&["inspect", image]);
    c.arg("--root").arg(root);
    let o = c.output().unwrap();
    assert!(o.status.success(), "inspect {image}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array().and_then(|a| a.first()).cloned().unwrap_or(v)
}

/// The names in the store's blob of an image's top layer.
fn top_layer_names(store: &Path, info: &serde_json::Value) -> Vec<String> {
    let top = info["RootFS"]["Layers"].as_array().unwrap().last().unwrap();
    let hex = &top.as_str().unwrap()[7..];
    // Stored uncompressed: the blob digest is the diffID.
    let blob = fs::read(store.join("blobs/sha256").join(hex)).unwrap();
    let mut a = tar::Archive::new(blob.as_slice());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

const INSTALL_NODE: &str = "mkdir -p /usr/local/node/bin /usr/local/node/lib && \
    printf '#!/bin/sh\necho node v20.0.0\n' > /usr/local/node/bin/node && \
    chmod 755 /usr/local/node/bin/node && \
    echo 'module.exports = 1' > /usr/local/node/lib/index.js && \
    ln /usr/local/node/lib/index.js /usr/local/node/lib/hardlink.js && \
    ln -s ../node/bin/node /usr/local/node/nodejs && \
    rm /bin/notexec && echo changed > /etc/hostname 2>/dev/null; true";

const ADD_APP: &str = "mkdir -p /app && \
    printf '#!/bin/sh\necho app running\nexec /usr/local/node/bin/node\n' > /app/run && \
    chmod 755 /app/run";

#[test]
fn commit_walkthrough_history_run_save_load_skopeo() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    // Add node.
    e.ok(&["run", "--name", "n1", "busybox", "sh", "-c", INSTALL_NODE]);
    let bad = e.run(&["commit", "-c", "RUN echo hi", "n1", "x"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert_eq!(stderr(&bad).lines().count(), 1, "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("invalid -c instruction"),
        "{}",
        stderr(&bad)
    );
    let node_id = e.ok(&["commit", "-m", "Add node", "n1", "node-base"]);
    assert!(node_id.trim().starts_with("sha256:"), "{node_id}");
    // The same changes give the same layer.
    e.ok(&["commit", "-m", "again", "n1", "node-again"]);
    let store = e.store();
    let node = inspect(&e, &store, "node-base");
    let again = inspect(&e, &store, "node-again");
    assert_eq!(node["RootFS"], again["RootFS"]);
    assert_eq!(node["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    let names = top_layer_names(&store, &node);
    for want in [
        "usr/",
        "usr/local/node/bin/node",
        "usr/local/node/lib/hardlink.js",
        "usr/local/node/nodejs",
        "bin/.wh.notexec",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    for n in &names {
        assert!(
            !n.ends_with("etc/hostname")
                && !n.ends_with("etc/hosts")
                && !n.ends_with("resolv.conf"),
            "runner file {n} in the layer"
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    // Add app, with a CMD.
    e.ok(&["run", "--name", "n2", "node-base", "sh", "-c", ADD_APP]);
    e.ok(&[
        "commit",
        "-c",
        r#"CMD ["/app/run"]"#,
        "-c",
        "ENV APP=1",
        "-m",
        "Add app",
        "n2",
        "app",
    ]);
    let hist = e.ok(&["history", "app"]);
    let pos = |s: &str| hist.find(s).unwrap_or_else(|| panic!("{s} not in\n{hist}"));
    assert!(pos("Add app") < pos("Add node"), "{hist}");
    assert!(pos("Add node") < pos("Imported from"), "{hist}");
    let app = inspect(&e, &store, "app");
    assert_eq!(app["Config"]["Cmd"], serde_json::json!(["/app/run"]));
    assert_eq!(app["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    // Running the image with no command runs the app.
    let out = e.ok(&["run", "--rm", "app"]);
    assert!(
        out.contains("app running") && out.contains("node v20.0.0"),
        "{out}"
    );
    // Save, load into a fresh store: same image, same layers.
    let archive = e.path("app.tar");
    let a = archive.to_str().unwrap().to_string();
    e.ok(&["save", "app", "-o", &a]);
    let fresh = e.path("fresh");
    let mut c = e.cmd(&["load", "-q", "-i", &a]);
    c.arg("--root").arg(&fresh);
    let o = c.output().unwrap();
    assert!(o.status.success(), "load: {}", stderr(&o));
    let loaded = inspect(&e, &fresh, "app");
    assert_eq!(loaded["Id"], app["Id"]);
    assert_eq!(loaded["RootFS"], app["RootFS"]);
    assert_eq!(loaded["Descriptor"]["digest"], app["Descriptor"]["digest"]);
    // skopeo reads both views with the same layer digests.
    let manifest_layers: Vec<String> = {
        let m = fs::read(
            store
                .join("blobs/sha256")
                .join(&app["Descriptor"]["digest"].as_str().unwrap()[7..]),
        )
        .unwrap();
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    if Command::new("skopeo").arg("--version").output().is_err() {
        println!("skopeo checks skipped: skopeo is not installed");
        return;
    }
    for transport in ["oci-archive", "docker-archive"] {
        let o = Command::new("skopeo")
            .args(["inspect", &format!("{transport}:{a}")])
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo {transport}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let layers: Vec<String> = v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert_eq!(layers, manifest_layers, "{transport}: {}", stdout(&o));
    }
}

/// A lower directory renamed in a container (a redirect, which OCI layers
/// cannot carry) and lower files whose mode alone changed (metadata-only
/// copies, whose data stays below) commit to an image that shows the same
/// tree and contents.
#[test]
fn commit_keeps_renamed_directories_and_metadata_only_copies() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    e.ok(&[
        "run",
        "--name",
        "m1",
        "busybox",
        "sh",
        "-c",
        "mv /home /house && touch /house/app/new && chmod 600 /etc/passwd && chmod 750 /bin/busybox",
    ]);
    e.ok(&["commit", "m1", "moved"]);
    let store = e.store();
    let names = top_layer_names(&store, &inspect(&e, &store, "moved"));
    for want in [
        ".wh.home",
        "house/",
        "house/.wh..wh..opq",
        "house/app/",
        "house/app/new",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let out = e.ok(&[
        "run",
        "--rm",
        "moved",
        "sh",
        "-c",
        "cat /etc/passwd; ls /house/app; test -e /home || echo no-home; stat -c %a /etc/passwd /bin/busybox",
    ]);
    assert!(
        out.contains("app:x:1000:1000:app:/home/app:/bin/sh"),
        "{out}"
    );
    assert!(out.contains("new"), "{out}");
    assert!(out.contains("no-home"), "{out}");
    assert!(out.contains("600\n750"), "{out}");
}

#[test]
fn commit_refuses_unknown_container_and_removed_image() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let o = e.run(&["commit", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    e.ok(&["run", "--name", "c1", "busybox", "true"]);
    // The image's config blob is gone: one clear line.
    let info = inspect(&e, &e.store(), "busybox");
    let id = info["Id"].as_str().unwrap();
    fs::remove_file(e.store().join("blobs/sha256").join(&id[7..])).unwrap();
    let o = e.run(&["commit", "c1", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("was removed"), "{}", stderr(&o));
}
