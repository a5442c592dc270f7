//! The inspection tools on a live mount: the published state, `explain`,
//! `layers`, the copy-on-write trace (at mount time and attached later),
//! `stats` and `diff`. Needs root and /dev/fuse (see
//! `common::mount_tests_required`).
//!
//! Every command runs with `LAYERFS_RUNTIME_DIR` pointing into the test's
//! temporary directory, so tests never see each other's (or real) mounts.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Unmounts on drop, even when an assertion fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if common::is_mounted(&self.0)
            && let Err(e) = common::unmount(&self.0, true)
        {
            eprintln!("error: {e}");
        }
    }
}

struct Env {
    _t: tempfile::TempDir,
    base: PathBuf,
    run: PathBuf,
}

impl Env {
    fn new() -> Env {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let base = t.path().to_path_buf();
        let run = base.join("run");
        Env { _t: t, base, run }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    fn cmd(&self, args: &[&str]) -> Output {
        let bin = common::layerfs_bin().expect("layerfs binary");
        Command::new(bin)
            .env("LAYERFS_RUNTIME_DIR", &self.run)
            .env_remove("LAYERFS_TRACE")
            .current_dir(&self.base)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "layerfs {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Runs a command that must fail with one line on stderr; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(!o.status.success(), "layerfs {args:?} succeeded");
        let e = String::from_utf8(o.stderr).unwrap();
        assert_eq!(e.lines().count(), 1, "not one line: {e}");
        e
    }
}

fn write(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// l2 (bottom): etc/{passwd,hosts}, bin/sh, usr/lib/x, opt/old/a.
/// l1: a `.wh.` whiteout of etc/hosts, opt opaque (marker), bin/sh
/// replaced, lib -> usr/lib.
fn build_layers(e: &Env) {
    write(&e.p("l2/etc/passwd"), "root:x:0:0\n");
    write(&e.p("l2/etc/hosts"), "127.0.0.1\n");
    write(&e.p("l2/bin/sh"), "sh\n");
    write(&e.p("l2/usr/lib/x"), "lib\n");
    write(&e.p("l2/opt/old/a"), "a\n");
    write(&e.p("l1/etc/.wh.hosts"), "");
    write(&e.p("l1/opt/.wh..wh..opq"), "");
    write(&e.p("l1/opt/new"), "new\n");
    write(&e.p("l1/bin/sh"), "busybox\n");
    std::os::unix::fs::symlink("usr/lib", e.p("l1/lib")).unwrap();
    for d in ["up", "wk", "mnt"] {
        fs::create_dir_all(e.p(d)).unwrap();
    }
}

fn mount(e: &Env, extra: &[&str]) -> Mounted {
    let mnt = e.p("mnt");
    let guard = Mounted(mnt.clone());
    let mut args = vec![
        "mount", "--layer", "l1", "--layer", "l2", "--upper", "up", "--work", "wk",
    ];
    args.extend_from_slice(extra);
    args.push("mnt");
    e.ok(&args);
    assert!(common::is_mounted(&mnt));
    guard
}

fn trace_lines(p: &Path) -> Vec<Value> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The trace writer flushes within a batch; give it a moment.
fn wait_for_trace(p: &Path, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let v = trace_lines(p);
        if want(&v) {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    trace_lines(p)
}

#[test]
fn inspection_of_a_live_mount() {
    if !common::mount_tests_required() || common::is_fuse_overlayfs() {
        return;
    }
    let e = Env::new();
    build_layers(&e);
    let trace = e.p("trace.jsonl");
    let opt = format!("trace={}", trace.display());
    let mut guard = mount(&e, &["-o", &opt]);
    let mnt = e.p("mnt");

    // The published state: a 0700 directory with a 0600 state file and socket.
    let md = fs::metadata(&e.run).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    let files: Vec<PathBuf> = fs::read_dir(&e.run)
        .unwrap()
        .map(|x| x.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let m = fs::symlink_metadata(f).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600, "{}", f.display());
    }
    let state_file = files
        .iter()
        .find(|f| f.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let state: Value = serde_json::from_slice(&fs::read(state_file).unwrap()).unwrap();
    assert_eq!(state["mountpoint"], mnt.to_str().unwrap());
    assert_eq!(state["lowerdirs"][0], e.p("l1").to_str().unwrap());
    assert_eq!(state["upperdir"], e.p("up").to_str().unwrap());

    // Before any change: explain on the layers as the mount sees them.
    let hosts = e.json(&["explain", "--json", mnt.join("etc/hosts").to_str().unwrap()]);
    assert_eq!(hosts["status"], "whited_out");
    assert_eq!(hosts["whiteouts"][0]["layer"], 1);
    assert_eq!(hosts["whiteouts"][0]["encoding"], "wh_file");
    assert_eq!(hosts["hides"][0]["layer"], 2);
    assert_eq!(hosts["hides"][0]["reason"]["why"], "whiteout");

    let lib = e.json(&["explain", "--json", "mnt", "/lib/x"]);
    assert_eq!(lib["status"], "found");
    assert_eq!(lib["resolved"], "/usr/lib/x");
    assert_eq!(lib["symlinks"][0]["path"], "/lib");
    assert_eq!(lib["served_by"]["index"], 2);

    let old = e.json(&["explain", "--json", "mnt", "/opt/old/a"]);
    assert_eq!(old["status"], "missing");
    assert_eq!(old["opaque_dirs"][0]["path"], "/opt");
    assert_eq!(old["opaque_dirs"][0]["encoding"], "marker_file");
    assert_eq!(old["hides"][0]["reason"]["why"], "opaque");

    let text = e.ok(&["explain", "mnt", "/bin/sh"]);
    assert!(text.contains("served by     layer 1 (lower)"), "{text}");
    assert!(
        text.contains("file in layer 2 (lower): covered by the file /bin/sh"),
        "{text}"
    );

    // Changes through the mount.
    let mut passwd = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("etc/passwd"))
        .unwrap();
    std::io::Write::write_all(&mut passwd, b"me:x:1000:1000\n").unwrap();
    drop(passwd);
    fs::remove_file(mnt.join("bin/sh")).unwrap();
    fs::create_dir(mnt.join("d")).unwrap();
    write(&mnt.join("d/f"), "f\n");
    fs::rename(mnt.join("d"), mnt.join("d2")).unwrap();
    fs::remove_dir_all(mnt.join("usr/lib")).unwrap();
    fs::create_dir(mnt.join("usr/lib")).unwrap();
    write(&mnt.join("usr/lib/n"), "n\n");

    // The trace: every event, in order, with the documented fields.
    let lines = wait_for_trace(&trace, |v| {
        v.iter()
            .any(|l| l["event"] == "opaque" && l["path"] == "/usr/lib")
    });
    let find = |ev: &str, path: &str| {
        lines
            .iter()
            .find(|l| l["event"] == ev && l["path"] == path)
            .unwrap_or_else(|| panic!("no {ev} {path} in {lines:#?}"))
    };
    let cu = find("copy_up", "/etc/passwd");
    assert_eq!(cu["kind"], "file");
    assert_eq!(cu["size"], 11);
    assert!(["copy", "reflink"].contains(&cu["method"].as_str().unwrap()));
    assert!(cu["duration_us"].is_u64());
    assert_eq!(find("copy_up", "/etc")["method"], "metadata");
    find("whiteout", "/bin/sh");
    find("whiteout", "/usr/lib/x");
    find("opaque", "/usr/lib");
    let rn = find("rename", "/d2");
    assert_eq!(rn["from"], "/d");
    assert_eq!(rn["exchange"], false);
    for l in &lines {
        assert!(l["ts"].as_str().unwrap().ends_with('Z'));
        assert!(l["ts_unix_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000);
    }

    // Counters.
    let s = e.json(&["stats", "--json", "mnt"]);
    assert!(s["lookups"].as_u64().unwrap() > 0);
    assert!(s["copy_ups"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(s["renames"], 1);
    assert!(s["whiteouts"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["opaque_dirs"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["inodes"].as_u64().unwrap() >= 1);
    assert_eq!(s["trace"], trace.to_str().unwrap());
    let text = e.ok(&["stats", "mnt"]);
    assert!(text.contains("copy-ups"), "{text}");
    // Tracing is already on.
    let err = e.fails(&["stats", "mnt", "--trace", "other.jsonl"]);
    assert!(err.contains("already tracing"), "{err}");

    // After the changes.
    let pw = e.json(&["explain", "--json", "mnt", "/etc/passwd"]);
    assert_eq!(pw["served_by"]["index"], 0);
    assert_eq!(pw["served_by"]["role"], "upper");
    assert_eq!(pw["copied_up"]["also_in"], serde_json::json!([2]));
    assert_eq!(pw["hides"][0]["layer"], 2);
    assert_eq!(pw["hides"][0]["reason"]["why"], "non_directory_above");
    let sh = e.json(&["explain", "--json", "mnt", "/bin/sh"]);
    assert_eq!(sh["status"], "whited_out");
    assert_eq!(sh["whiteouts"][0]["layer"], 0);
    assert_eq!(sh["whiteouts"][0]["encoding"], "chardev");

    let layers = e.json(&["layers", "--json", "mnt"]);
    let ls = layers["layers"].as_array().unwrap();
    assert_eq!(ls.len(), 3);
    assert_eq!(ls[0]["role"], "upper");
    assert_eq!(ls[1]["dir"], e.p("l1").to_str().unwrap());
    assert_eq!(ls[1]["whiteouts"], 1);
    assert_eq!(ls[2]["entries"], 11);
    assert_eq!(ls[2]["size"], 11 + 10 + 3 + 4 + 2);

    let diff = e.ok(&["diff", "up"]);
    assert_eq!(
        diff,
        "C /bin\nD /bin/sh\nA /d2\nA /d2/f\nC /etc\nC /etc/passwd\nC /usr\nC /usr/lib\nA /usr/lib/n\nD /usr/lib/x\n"
    );
    let diff = e.ok(&[
        "diff",
        "up",
        "--layer",
        "l1",
        "--layer",
        "l2",
        "--exclude",
        "/usr",
    ]);
    assert_eq!(
        diff,
        "C /bin\nD /bin/sh\nA /d2\nA /d2/f\nC /etc\nC /etc/passwd\n"
    );

    // Unmounted: the state is gone and the mount is unknown.
    guard.0 = PathBuf::new();
    common::unmount(&mnt, true).unwrap();
    for _ in 0..100 {
        if fs::read_dir(&e.run).unwrap().next().is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(fs::read_dir(&e.run).unwrap().count(), 0);
    let err = e.fails(&["stats", "mnt"]);
    assert!(err.contains("is not a layerfs mount"), "{err}");
    let err = e.fails(&["explain", mnt.join("etc/passwd").to_str().unwrap()]);
    assert!(err.contains("is not inside a layerfs mount"), "{err}");
}

/// `explain` follows a renamed directory to where the layers below hold it
/// and names the layer holding a metadata-only copy's data; `diff` shows
/// the move.
#[test]
fn explain_follows_renamed_directories_and_metadata_only_copies() {
    if !common::mount_tests_required() || common::is_fuse_overlayfs() {
        return;
    }
    let e = Env::new();
    build_layers(&e);
    let _guard = mount(&e, &[]);
    let mnt = e.p("mnt");
    fs::rename(mnt.join("opt"), mnt.join("opt2")).unwrap();
    let mut perm = fs::metadata(mnt.join("usr/lib/x")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
    fs::set_permissions(mnt.join("usr/lib/x"), perm).unwrap();
    let new = e.json(&["explain", "--json", "mnt", "/opt2/new"]);
    assert_eq!(new["status"], "found", "{new}");
    assert_eq!(new["served_by"]["index"], 1, "{new}");
    assert_eq!(new["renamed"][0]["path"], "/opt2", "{new}");
    assert_eq!(new["renamed"][0]["layer"], 0, "{new}");
    assert_eq!(new["renamed"][0]["redirect"], "opt", "{new}");
    let old = e.json(&["explain", "--json", "mnt", "/opt"]);
    assert_eq!(old["status"], "whited_out", "{old}");
    let x = e.json(&["explain", "--json", "mnt", "/usr/lib/x"]);
    assert_eq!(x["served_by"]["index"], 0, "{x}");
    assert_eq!(x["data_from"], 2, "{x}");
    let text = e.ok(&["explain", "mnt", "/opt2/new"]);
    assert!(text.contains("renamed       /opt2 in layer 0"), "{text}");
    let diff = e.ok(&["diff", "up"]);
    assert!(
        diff.contains("D /opt\n") && diff.contains("A /opt2\n") && diff.contains("A /opt2/new\n"),
        "{diff}"
    );
    assert!(!diff.contains("/opt2/old"), "opt was opaque: {diff}");
}

#[test]
fn trace_attaches_to_a_running_mount() {
    if !common::mount_tests_required() || common::is_fuse_overlayfs() {
        return;
    }
    let e = Env::new();
    build_layers(&e);
    let _guard = mount(&e, &[]);
    let trace = e.p("late.jsonl");
    let out = e.ok(&["stats", "mnt", "--trace", "late.jsonl"]);
    assert!(out.contains("tracing"), "{out}");
    fs::remove_file(e.p("mnt/etc/passwd")).unwrap();
    let lines = wait_for_trace(&trace, |v| v.len() >= 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines[0]["event"], "copy_up");
    assert_eq!(lines[0]["path"], "/etc");
    assert_eq!(lines[1]["event"], "whiteout");
    assert_eq!(lines[1]["path"], "/etc/passwd");
    let s = e.json(&["stats", "--json", "mnt"]);
    assert_eq!(s["trace"], trace.to_str().unwrap());
    assert_eq!(fs::metadata(&trace).unwrap().mode() & 0o777, 0o600);
}
