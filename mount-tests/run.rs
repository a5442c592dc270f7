//! The rootless runner end to end: `layerfs run/ps/start/rm` on a busybox
//! image built here from the host's static busybox (Debian: busybox-static).
//!
//! Runs as an unprivileged user: as ourselves when we are not root, else as
//! `$LAYERFS_TEST_USER` (default `tester`, created by scripts/setup.sh).
//! Each test has its own store (`--root`). Without /dev/fuse, busybox or
//! such a user, every test prints "skipped", unless
//! `LAYERFS_REQUIRE_MOUNT_TESTS=1`, which makes that a failure.

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod runner_env;
use runner_env::*;

impl Env {
    /// Loads an image with this run config (Env, Cmd, ...) on top of busybox.
    fn load_config_image(&self, tag: &str, config: serde_json::Value, extra: &[(&str, &str)]) {
        let layers = vec![busybox_layer(), extra_layer(extra)];
        let dir = self.path(&format!("oci-{}", tag.replace(':', "-")));
        write_oci(&dir, tag, &layers, config);
        let d = dir.to_str().unwrap().to_string();
        self.ok(&["load", "-q", "-i", &d]);
    }
}

fn extra_layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, content) in files {
        if let Some(d) = p.strip_suffix('/') {
            add_dir(&mut b, d, 0o755);
        } else {
            add_file(&mut b, p, 0o755, content.as_bytes());
        }
    }
    b.into_inner().unwrap()
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(b);
    format!(
        "sha256:{}",
        d.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Writes an OCI image layout with one image.
fn write_oci(dir: &Path, tag: &str, layers: &[Vec<u8>], config: serde_json::Value) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = sha256(b);
        fs::write(blobs.join(&d[7..]), b).unwrap();
        (d, b.len())
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let ldesc: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let (d, n) = put(l);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n})
        })
        .collect();
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (cd, cn) = put(&cfg);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": ldesc,
    }))
    .unwrap();
    let (md, mn) = put(&manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": format!("{tag}:latest")},
        }]}))
        .unwrap(),
    )
    .unwrap();
}

/// Asserts a runner error: status 125, exactly one line on stderr
/// containing `needle`.
fn assert_runner_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(125), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("layerfs: "), "{err}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}

/// Starts a container whose command prints `ready` once it runs.
fn spawn_ready(e: &Env, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = e
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "container did not start");
    (child, out)
}

fn kill(child: &Child, sig: i32) {
    // SAFETY: plain syscall on our child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Waits up to `secs` for `child`; past that, fails with where its threads are stuck in the
/// kernel, so that a hang shows as a failure rather than a test run that never ends.
fn wait_bounded(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let mut stacks = String::new();
            let tasks = format!("/proc/{}/task", child.id());
            for t in fs::read_dir(&tasks).into_iter().flatten().flatten() {
                let p = t.path();
                let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
                let stack = fs::read_to_string(p.join("stack")).unwrap_or_default();
                stacks.push_str(&format!("{} {}{stack}\n", p.display(), comm));
            }
            panic!("pid {} still running after {secs} s:\n{stacks}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{name}: {c}"));
            }
        }
    }
    out
}

#[test]
fn hello_exit_status_and_cleanup() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let o = e.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo hello; id -u; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello\n0\n");
    assert_eq!(
        e.containers(),
        Vec::<String>::new(),
        "--rm left a container"
    );
    let code = |args: &[&str]| e.run(args).status.code();
    assert_eq!(code(&["run", "--rm", "busybox", "true"]), Some(0));
    assert_eq!(code(&["run", "--rm", "busybox", "false"]), Some(1));
    assert_eq!(
        code(&["run", "--rm", "busybox", "sh", "-c", "kill -9 $$"]),
        Some(137)
    );
    assert_eq!(
        code(&["run", "--rm", "busybox", "sh", "-c", "kill -TERM $$"]),
        Some(143)
    );
    let o = e.run(&["run", "--rm", "busybox", "nosuchcommand"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(stderr(&o).contains("nosuchcommand: executable file not found in $PATH"));
    let o = e.run(&["run", "--rm", "busybox", "/no/such/path"]);
    assert_eq!(o.status.code(), Some(127));
    let o = e.run(&["run", "--rm", "busybox", "/bin/notexec"]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(stderr(&o).contains("Permission denied"));
    let o = e.run(&["run", "--rm", "busybox", "/etc"]);
    assert_eq!(o.status.code(), Some(126));
    assert_eq!(e.containers(), Vec::<String>::new());
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    e.ok(&["run", "--name", "taken", "busybox", "true"]);
    let before = e.containers();
    assert_eq!(before.len(), 1);
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "nosuchimage", "true"],
            "No such image: nosuchimage",
        ),
        (
            &["run", "-u", "bob", "busybox", "id"],
            "unable to find user bob",
        ),
        (
            &["run", "-u", "app:nogroup", "busybox", "id"],
            "unable to find group nogroup",
        ),
        (
            &["run", "-w", "/does/not/exist", "busybox", "pwd"],
            "/does/not/exist",
        ),
        (
            &["run", "-w", "relative", "busybox", "pwd"],
            "not an absolute path",
        ),
        (
            &["run", "--name", "taken", "busybox", "true"],
            "already in use",
        ),
        (
            &["run", "--name", "bad/name", "busybox", "true"],
            "invalid container name",
        ),
        (
            &["run", "--hostname", "bad_host", "busybox", "true"],
            "invalid hostname",
        ),
        (
            &["run", "-e", "=x", "busybox", "true"],
            "invalid environment variable",
        ),
        (&["run", "noconfig"], "no command specified"),
        (&["run"], "requires an IMAGE"),
        (
            &["run", "--rootfs", "/does/not/exist", "--", "sh"],
            "/does/not/exist",
        ),
        (&["start", "nosuch"], "No such container: nosuch"),
    ];
    e.load_config_image("noconfig", serde_json::json!({}), &[]);
    for (args, needle) in cases {
        let o = e.run(args);
        assert_runner_error(&o, needle);
        assert_eq!(e.containers(), before, "{args:?} left something behind");
    }
    let tmp = fs::read_dir(e.store().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "store tmp/ not empty");
}

#[test]
fn isolation_pid_namespace_and_hostname() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let script = "echo pid=$$; ls /; test -e /work || test -e /var/tmp/layerfs-run-* || echo hidden; \
                  ps -o pid,comm | wc -l; hostname; cat /etc/hostname; grep -c . /etc/hosts; \
                  cat /proc/1/status | grep -c Name; mount | grep -c ' /proc '";
    let o = e.run(&[
        "run",
        "--rm",
        "--hostname",
        "box1",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    // The command is pid 2 (pid 1 is the runner's init).
    assert_eq!(lines[0], "pid=2", "{out}");
    let ls: Vec<&str> = lines[1..]
        .iter()
        .take_while(|l| **l != "hidden")
        .copied()
        .collect();
    assert_eq!(
        ls,
        [
            "bin", "dev", "etc", "home", "proc", "root", "srv", "sys", "tmp", "var"
        ],
        "{out}"
    );
    let rest = &lines[1 + ls.len()..];
    assert_eq!(rest[0], "hidden", "host paths visible: {out}");
    // ps header + init + sh + ps (+ wc) at most: no host process.
    let n: usize = rest[1].trim().parse().unwrap();
    assert!(n <= 5, "{out}");
    assert_eq!(rest[2], "box1");
    assert_eq!(rest[3], "box1");
    // /dev is minimal, /sys read-only, /etc/hosts names the host.
    let o = e.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "ls /dev | tr '\\n' ' '; touch /sys/x 2>/dev/null || echo sys-ro; echo data > /dev/null && echo null-ok",
    ]);
    let out = stdout(&o);
    assert!(
        out.starts_with("fd full null ptmx pts random shm stderr stdin stdout tty urandom zero "),
        "{out}"
    );
    assert!(out.contains("sys-ro") && out.contains("null-ok"), "{out}");
    // The default hostname is the short container ID.
    let o = e.run(&["run", "--name", "h", "busybox", "hostname"]);
    let id = e.containers().pop().unwrap();
    assert_eq!(stdout(&o).trim(), &id[..12]);
}

#[test]
fn runner_files_never_reach_the_upper_layer() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    e.ok(&[
        "run",
        "--name",
        "w",
        "busybox",
        "sh",
        "-c",
        "echo x > /tmp/file; echo nameserver 10.0.0.1 > /etc/resolv.conf; ls /proc >/dev/null",
    ]);
    let id = e.containers().pop().unwrap();
    let upper = e.store().join("containers").join(&id).join("upper");
    let mut found = Vec::new();
    for entry in walk(&upper) {
        found.push(entry.strip_prefix(&upper).unwrap().display().to_string());
    }
    found.sort();
    assert_eq!(found, ["tmp", "tmp/file"], "upper holds {found:?}");
    // The container's resolv.conf edit went to its own file, kept for start.
    let o = e.ok(&["start", "-a", "w"]);
    assert_eq!(o, "");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

#[test]
fn env_workdir_entrypoint_from_config() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    e.load_config_image(
        "cfg",
        serde_json::json!({
            "Env": ["FOO=from-image", "PATH=/bin", "KEEP=1"],
            "WorkingDir": "/srv/app",
            "Cmd": ["sh", "-c", "echo $FOO $KEEP $HOME $HOSTNAME; pwd; echo $PATH"],
        }),
        &[
            ("srv/", ""),
            ("srv/app/", ""),
            ("srv/app/hello", "#!/bin/sh\necho hello from app\n"),
        ],
    );
    let out = e.ok(&["run", "--rm", "--hostname", "cfgbox", "cfg"]);
    assert_eq!(out, "from-image 1 /root cfgbox\n/srv/app\n/bin\n");
    let out = e.ok(&[
        "run",
        "--rm",
        "-e",
        "FOO=flag",
        "-e",
        "NEW=2",
        "-w",
        "/tmp",
        "cfg",
        "sh",
        "-c",
        "echo $FOO $NEW $KEEP; pwd",
    ]);
    assert_eq!(out, "flag 2 1\n/tmp\n");
    // A command with a slash is relative to the working directory.
    let out = e.ok(&["run", "--rm", "cfg", "./hello"]);
    assert_eq!(out, "hello from app\n");
    e.load_config_image(
        "ep",
        serde_json::json!({"Entrypoint": ["echo", "ep"], "Cmd": ["default"]}),
        &[],
    );
    assert_eq!(e.ok(&["run", "--rm", "ep"]), "ep default\n");
    assert_eq!(e.ok(&["run", "--rm", "ep", "a", "b"]), "ep a b\n");
    // No PATH in the image: the default one.
    let out = e.ok(&["run", "--rm", "busybox", "sh", "-c", "echo $PATH"]);
    assert_eq!(
        out,
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
}

#[test]
fn user_flag_with_rootfs() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let rootfs = e.path("rootfs");
    fs::create_dir(&rootfs).unwrap();
    let c = CString::new(rootfs.to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), who.uid, who.gid) }, 0);
    let tar = e.path("busybox.tar");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&rootfs)
        .uid(who.uid)
        .gid(who.gid)
        .status()
        .unwrap();
    assert!(st.success());
    let r = rootfs.to_str().unwrap();
    assert_eq!(
        e.ok(&["run", "--rootfs", r, "--", "sh", "-c", "echo ok; id -u"]),
        "ok\n0\n"
    );
    if has_subids(who) {
        assert_eq!(
            e.ok(&["run", "-u", "app", "--rootfs", r, "--", "id"]),
            "uid=1000(app) gid=1000(app) groups=10(wheel)\n"
        );
        assert_eq!(
            e.ok(&["run", "-u", "1000:10", "--rootfs", r, "--", "id"]),
            "uid=1000(app) gid=10(wheel)\n"
        );
    }
}

/// Whether the user has /etc/subuid and /etc/subgid ranges (ids besides
/// root are mapped then).
fn has_subids(who: As) -> bool {
    // SAFETY: plain getter; as root the runner maps the host ids.
    if unsafe { libc::getuid() } == 0 && who.uid == 0 {
        return true;
    }
    let name = {
        // SAFETY: getpwuid returns NULL or a valid entry; copied at once.
        unsafe {
            let pw = libc::getpwuid(who.uid);
            if pw.is_null() {
                return false;
            }
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned()
        }
    };
    let has = |f: &str| {
        fs::read_to_string(f).is_ok_and(|s| {
            s.lines().any(|l| {
                l.starts_with(&format!("{name}:")) || l.starts_with(&format!("{}:", who.uid))
            })
        })
    };
    has("/etc/subuid") && has("/etc/subgid") && Path::new("/usr/bin/newuidmap").exists()
}

#[test]
fn user_flag_on_image() {
    let Some(who) = setup() else { return };
    if !has_subids(who) {
        return;
    }
    let e = Env::new(who);
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "-u",
            "app",
            "busybox",
            "sh",
            "-c",
            "id; echo $HOME; touch /tmp/x"
        ]),
        "uid=1000(app) gid=1000(app) groups=10(wheel)\n/home/app\n"
    );
}

#[test]
fn signals_reach_the_command() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let (child, mut out) = spawn_ready(&e, &["run", "--rm", "busybox", "sh", "-c", script]);
    kill(&child, libc::SIGTERM);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(rest, "got-term\n");
    // A command that does not handle SIGINT dies of it: 128 + 2.
    let (child, _out) = spawn_ready(
        &e,
        &[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo ready; exec sleep 100",
        ],
    );
    kill(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130));
}

#[test]
fn kill_9_of_the_runner_leaves_nothing_running() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let marker = format!("sleep {}", 3000 + std::process::id() % 1000);
    let script = format!("echo ready; {marker} & {marker}");
    let (mut child, _out) =
        spawn_ready(&e, &["run", "--name", "k9", "busybox", "sh", "-c", &script]);
    let mounts_before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!processes_with(&marker).is_empty());
    kill(&child, libc::SIGKILL);
    wait_bounded(&mut child, 30);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left running: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = e.containers().pop().unwrap();
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&id)
    );
    assert!(!mounts_before.contains(&id));
    let ps = e.ok(&["ps"]);
    assert!(!ps.contains("k9"), "{ps}");
    let ps = e.ok(&["ps", "-a"]);
    assert!(ps.contains("k9") && ps.contains("Dead"), "{ps}");
    // The container can run again and be removed.
    e.ok(&["rm", "k9"]);
    assert_eq!(e.containers(), Vec::<String>::new());
}

#[test]
fn two_containers_at_once_each_with_its_changes() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let start = |name: &str| {
        let script = format!(
            "echo {name} > /who; trap 'cat /who; exit 0' TERM; echo ready; while :; do sleep 0.02; done"
        );
        spawn_ready(&e, &["run", "--name", name, "busybox", "sh", "-c", &script])
    };
    // Both are running at the same time, each on its own mount.
    let (a, mut aout) = start("a");
    let (b, mut bout) = start("b");
    let ps = e.ok(&["ps"]);
    assert_eq!(ps.lines().count(), 3, "{ps}");
    kill(&a, libc::SIGTERM);
    kill(&b, libc::SIGTERM);
    for (mut out, name) in [(&mut aout, "a"), (&mut bout, "b")] {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        assert_eq!(s, format!("{name}\n"));
    }
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    // The image itself is untouched; each upper holds its own change.
    let o = e.run(&["run", "--rm", "busybox", "cat", "/who"]);
    assert_eq!(o.status.code(), Some(1));
    for name in ["a", "b"] {
        let (c, _) = find_container(&e, name);
        assert_eq!(
            fs::read_to_string(c.join("upper/who")).unwrap(),
            format!("{name}\n")
        );
    }
    // The layers are shared, never copied: one layer directory in the store.
    assert_eq!(fs::read_dir(e.store().join("layers")).unwrap().count(), 1);
}

/// The directory and record of a container, by name.
fn find_container(e: &Env, name: &str) -> (PathBuf, serde_json::Value) {
    for id in e.containers() {
        let dir = e.store().join("containers").join(&id);
        let rec: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
        if rec["name"] == name {
            return (dir, rec);
        }
    }
    panic!("no container {name}");
}

#[test]
fn start_keeps_changes_ps_rm_and_rmi() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    let script = "echo run >> /log; wc -l < /log";
    assert_eq!(
        e.ok(&["run", "--name", "p", "busybox", "sh", "-c", script])
            .trim(),
        "1"
    );
    assert_eq!(e.ok(&["start", "-a", "p"]).trim(), "2");
    assert_eq!(e.ok(&["start", "p"]).trim(), "3");
    // Another container of the same image does not see them.
    let o = e.run(&["run", "--rm", "busybox", "cat", "/log"]);
    assert_eq!(o.status.code(), Some(1));
    let ps = e.ok(&["ps", "-a"]);
    let row = ps
        .lines()
        .find(|l| l.ends_with(" p"))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        row.contains("busybox") && row.contains("Exited (0)"),
        "{row}"
    );
    assert!(row.contains("\"sh -c echo run >> /…\""), "{row}");
    assert!(!e.ok(&["ps"]).contains(" p\n"));
    let (_, rec) = find_container(&e, "p");
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(rec["status"], "exited");
    // A failing start keeps the status of the command.
    let o = e.run(&["run", "--name", "f", "busybox", "sh", "-c", "exit 9"]);
    assert_eq!(o.status.code(), Some(9));
    assert_eq!(e.run(&["start", "f"]).status.code(), Some(9));
    assert!(e.ok(&["ps", "-a"]).contains("Exited (9)"));
    // rmi refuses an image in use; rm frees it.
    let o = e.run(&["rmi", "busybox"]);
    assert!(
        !o.status.success() && stderr(&o).contains("container"),
        "{}",
        stderr(&o)
    );
    assert_eq!(e.ok(&["rm", "p", "f"]), "p\nf\n");
    assert_eq!(e.containers(), Vec::<String>::new());
    e.ok(&["rmi", "busybox"]);
}

#[test]
fn stdin_and_terminal() {
    let Some(who) = setup() else { return };
    let e = Env::new(who);
    // -i passes stdin; without it the command reads /dev/null.
    let mut c = e
        .cmd(&["run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "piped\ndone\n");
    let o = e
        .cmd(&["run", "--rm", "busybox", "cat"])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "");
    assert!(o.status.success());
    // -t: a terminal of the container's own devpts; `script` gives the runner one too.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped the -t part: no script(1)");
        return;
    }
    let inner = format!(
        "{} --root {} run --rm -t busybox sh -c 'tty; test -t 0 && echo stdin-tty; echo TERM=$TERM; exit 4'",
        bin().display(),
        e.store().display()
    );
    let mut s = Command::new("script");
    s.args(["-qec", &inner, "/dev/null"])
        .current_dir(e.dir.path())
        .stdin(Stdio::null());
    // SAFETY: plain getter.
    if unsafe { libc::getuid() } == 0 {
        s.uid(who.uid).gid(who.gid);
    }
    let o = s.output().unwrap();
    let out = stdout(&o).replace('\r', "");
    assert_eq!(o.status.code(), Some(4), "{out} {}", stderr(&o));
    assert_eq!(out, "/dev/pts/0\nstdin-tty\nTERM=xterm\n");
    // An interactive shell on the terminal.
    let inner = format!(
        "{} --root {} run --rm -it busybox sh",
        bin().display(),
        e.store().display()
    );
    let mut s = Command::new("script");
    s.args(["-qec", &inner, "/dev/null"])
        .current_dir(e.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: plain getter.
    if unsafe { libc::getuid() } == 0 {
        s.uid(who.uid).gid(who.gid);
    }
    let mut c = s.spawn().unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"echo sum=$((40+2))\nexit 6\n")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(6));
    assert!(stdout(&o).contains("sum=42"), "{}", stdout(&o));
}

#[test]
fn as_root_too() {
    // SAFETY: plain getter.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: not root");
        return;
    }
    let Some(_) = setup() else { return };
    let e = Env::new(As { uid: 0, gid: 0 });
    assert_eq!(
        e.ok(&["run", "--rm", "busybox", "sh", "-c", "echo $$; id -u"]),
        "2\n0\n"
    );
    assert_eq!(e.containers(), Vec::<String>::new());
}
