//! The runtime state of live mounts: a state file describing each mount's
//! stack, and a control socket serving its counters.
//!
//! FUSE mounts do not show their options in /proc/self/mountinfo, so the
//! daemon publishes them (`layerfs explain/layers/stats MOUNTPOINT` read
//! them). Layout:
//!
//! ```text
//! RUNDIR/KEY.json   the MountState below (mode 0600), replaced atomically
//! RUNDIR/KEY.sock   the control socket (mode 0600)
//! ```
//!
//! RUNDIR is `$LAYERFS_RUNTIME_DIR` if set, else `/run/layerfs` for root,
//! else `$XDG_RUNTIME_DIR/layerfs`, else `/tmp/layerfs-UID`; it is created
//! with mode 0700 and must belong to the caller. KEY is the first 32 hex
//! digits of the SHA-256 of the canonical mountpoint path. Both files are
//! removed when the mount ends (unmount or signal); a daemon killed with
//! SIGKILL leaves them behind, and readers ignore a state whose pid is gone.
//!
//! Control protocol: connect, send one line, read one line back, the
//! connection closes. `stats` answers the [`Snapshot`] as JSON; `trace FILE`
//! (an absolute path) starts tracing a running mount into FILE and answers
//! `{"trace":"FILE"}`; `refresh` makes the daemon forget what it and the
//! kernel cached about the layers (after a lower layer changed) and answers
//! what it did, `{"refreshed":{...}}`; errors answer `{"error":"..."}`. Only the mount's
//! owner (and root) can open the socket: the directory is 0700 and the
//! socket 0600.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use log::{debug, warn};
use serde::{Deserialize, Serialize};

use crate::fuse::KernelCache;
use crate::overlay::Overlay;
use crate::overlay::stats::Snapshot;
use crate::overlay::trace::Tracer;
use crate::store::digest::Digest;
use crate::store::format::{format_rfc3339, now};
use crate::sys;

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// The longest request line the control socket reads.
const MAX_REQUEST: u64 = 4096;

/// What a state file says about one live mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountState {
    pub version: u32,
    pub mountpoint: PathBuf,
    /// The daemon serving it.
    pub pid: u32,
    pub uid: u32,
    /// The image name or the SOURCE argument, if any.
    pub source: Option<String>,
    /// Lower layers, top first (canonical paths).
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// The trace file given at mount time.
    pub trace: Option<PathBuf>,
    /// The control socket.
    pub control: PathBuf,
    /// When the mount went live (RFC 3339).
    pub started: String,
}

/// Why runtime state could not be written or read.
#[derive(Debug)]
pub enum StateError {
    /// Creating or checking the runtime directory.
    RuntimeDir {
        path: PathBuf,
        cause: io::Error,
    },
    /// The runtime directory belongs to someone else.
    NotOwner {
        path: PathBuf,
        owner: u32,
    },
    Bind {
        path: PathBuf,
        cause: io::Error,
    },
    Write {
        path: PathBuf,
        cause: io::Error,
    },
    Read {
        path: PathBuf,
        cause: io::Error,
    },
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    /// Nothing is published for this mountpoint.
    NotAMount {
        path: PathBuf,
        rundir: PathBuf,
    },
    /// The state is left over from a daemon that is gone.
    Stale {
        mountpoint: PathBuf,
        pid: u32,
    },
    /// A path that no live layerfs mount contains.
    Outside {
        path: PathBuf,
    },
    Connect {
        path: PathBuf,
        cause: io::Error,
    },
    /// The daemon answered with an error, or garbage.
    Reply {
        mountpoint: PathBuf,
        message: String,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::RuntimeDir { path, cause } => {
                write!(f, "runtime directory {}: {cause}", path.display())
            }
            StateError::NotOwner { path, owner } => write!(
                f,
                "runtime directory {} belongs to uid {owner}, not to us",
                path.display()
            ),
            StateError::Bind { path, cause } => {
                write!(
                    f,
                    "cannot create control socket {}: {cause}",
                    path.display()
                )
            }
            StateError::Write { path, cause } => {
                write!(f, "cannot write {}: {cause}", path.display())
            }
            StateError::Read { path, cause } => {
                write!(f, "cannot read {}: {cause}", path.display())
            }
            StateError::Json { path, cause } => {
                write!(f, "invalid mount state {}: {cause}", path.display())
            }
            StateError::NotAMount { path, rundir } => write!(
                f,
                "{} is not a layerfs mount of this user (no state in {})",
                path.display(),
                rundir.display()
            ),
            StateError::Stale { mountpoint, pid } => write!(
                f,
                "the layerfs daemon of {} (pid {pid}) is gone",
                mountpoint.display()
            ),
            StateError::Outside { path } => {
                write!(f, "{} is not inside a layerfs mount", path.display())
            }
            StateError::Connect { path, cause } => {
                write!(f, "cannot reach control socket {}: {cause}", path.display())
            }
            StateError::Reply {
                mountpoint,
                message,
            } => write!(f, "daemon of {}: {message}", mountpoint.display()),
        }
    }
}

impl std::error::Error for StateError {}

/// Picks the runtime directory (pure; see the module docs).
pub fn choose_runtime_dir(
    euid: u32,
    override_dir: Option<&str>,
    xdg_runtime_dir: Option<&str>,
) -> PathBuf {
    if let Some(d) = override_dir.filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if euid == 0 {
        return PathBuf::from("/run/layerfs");
    }
    match xdg_runtime_dir.filter(|d| d.starts_with('/')) {
        Some(d) => Path::new(d).join("layerfs"),
        None => PathBuf::from(format!("/tmp/layerfs-{euid}")),
    }
}

/// The runtime directory of this process.
pub fn runtime_dir() -> PathBuf {
    let o = std::env::var("LAYERFS_RUNTIME_DIR").ok();
    let x = std::env::var("XDG_RUNTIME_DIR").ok();
    choose_runtime_dir(sys::geteuid(), o.as_deref(), x.as_deref())
}

/// The file name stem of a mountpoint's state (pure).
pub fn key(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let d = Digest::of(mountpoint.as_os_str().as_bytes());
    d.hex()[..32].to_string()
}

/// Creates the runtime directory (0700) if needed and checks its owner.
fn ensure_runtime_dir(dir: &Path) -> Result<(), StateError> {
    let err = |cause| StateError::RuntimeDir {
        path: dir.to_path_buf(),
        cause,
    };
    match fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let md = fs::symlink_metadata(dir).map_err(err)?;
    if !md.is_dir() {
        return Err(err(io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    if md.uid() != sys::geteuid() {
        return Err(StateError::NotOwner {
            path: dir.to_path_buf(),
            owner: md.uid(),
        });
    }
    Ok(())
}

/// What the daemon knows before it publishes.
#[derive(Clone, Debug, Default)]
pub struct Description {
    pub mountpoint: PathBuf,
    pub source: Option<String>,
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub trace: Option<PathBuf>,
}

/// The published files of a live mount; removed on drop or [`Self::remove`].
#[derive(Clone, Debug)]
pub struct Published {
    pub state: PathBuf,
    pub socket: PathBuf,
}

impl Published {
    pub fn remove(&self) {
        let _ = fs::remove_file(&self.state);
        let _ = fs::remove_file(&self.socket);
    }
}

/// Publishes a live mount served by this process: [`bind`],
/// [`Binding::write_state`] and [`Binding::serve`] in one.
pub fn publish(
    d: &Description,
    overlay: Weak<Overlay>,
    kernel: Option<KernelCache>,
) -> Result<PublishGuard, StateError> {
    let b = bind(d)?;
    b.write_state(d, std::process::id())?;
    b.serve(&d.mountpoint, overlay, kernel)
}

/// A mount's control socket, bound but not yet served. Split from
/// [`Binding::serve`] so that a mount command can bind the socket and write
/// the state file before it returns while the daemon it forked serves the
/// socket: both files exist once the command has returned.
#[derive(Debug)]
pub struct Binding {
    published: Published,
    listener: UnixListener,
}

/// Binds the control socket of the mount `d` describes (mode 0600).
pub fn bind(d: &Description) -> Result<Binding, StateError> {
    let dir = runtime_dir();
    ensure_runtime_dir(&dir)?;
    let k = key(&d.mountpoint);
    let published = Published {
        state: dir.join(format!("{k}.json")),
        socket: dir.join(format!("{k}.sock")),
    };
    // A leftover of a daemon that died: nobody answers on it.
    let _ = fs::remove_file(&published.socket);
    let listener = UnixListener::bind(&published.socket).map_err(|cause| StateError::Bind {
        path: published.socket.clone(),
        cause,
    })?;
    fs::set_permissions(&published.socket, fs::Permissions::from_mode(0o600)).map_err(|cause| {
        StateError::Bind {
            path: published.socket.clone(),
            cause,
        }
    })?;
    Ok(Binding {
        published,
        listener,
    })
}

impl Binding {
    /// Writes (atomically replaces) the state file, naming `pid` as the
    /// daemon serving the mount.
    pub fn write_state(&self, d: &Description, pid: u32) -> Result<(), StateError> {
        let published = &self.published;
        let (secs, nanos) = now();
        let state = MountState {
            version: STATE_VERSION,
            mountpoint: d.mountpoint.clone(),
            pid,
            uid: sys::geteuid(),
            source: d.source.clone(),
            lowerdirs: d.lowerdirs.clone(),
            upperdir: d.upperdir.clone(),
            workdir: d.workdir.clone(),
            trace: d.trace.clone(),
            control: published.socket.clone(),
            started: format_rfc3339(secs, nanos),
        };
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| StateError::Write { path, cause }
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| werr(&published.state)(io::Error::other(e)))?;
        let tmp = published
            .state
            .with_extension(format!("json.{}.new", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr(&tmp))?;
        f.write_all(&json).map_err(werr(&tmp))?;
        drop(f);
        fs::rename(&tmp, &published.state).map_err(werr(&published.state))
    }

    /// Starts the control thread (it holds only a weak reference to the
    /// overlay). `kernel` reaches the mount's kernel caches for `refresh`
    /// (without it, refresh only drops the daemon's caches). The guard
    /// removes the published files when dropped, also when this fails.
    pub fn serve(
        self,
        mountpoint: &Path,
        overlay: Weak<Overlay>,
        kernel: Option<KernelCache>,
    ) -> Result<PublishGuard, StateError> {
        let guard = PublishGuard(self.published);
        let listener = self.listener;
        let mp = mountpoint.to_path_buf();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(listener, overlay, kernel.as_ref(), &mp))
            .map_err(|cause| StateError::Bind {
                path: guard.0.socket.clone(),
                cause,
            })?;
        Ok(guard)
    }
}

/// Removes the published files when dropped.
#[derive(Debug)]
pub struct PublishGuard(pub Published);

impl Drop for PublishGuard {
    fn drop(&mut self) {
        self.0.remove();
    }
}

fn serve_control(
    listener: UnixListener,
    overlay: Weak<Overlay>,
    kernel: Option<&KernelCache>,
    mountpoint: &Path,
) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let Some(ov) = overlay.upgrade() else { return };
        if let Err(e) = answer(stream, &ov, kernel) {
            debug!("control socket of {}: {e}", mountpoint.display());
        }
    }
}

/// A request on the control socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Stats,
    Trace(PathBuf),
    Refresh,
}

/// Parses one request line (pure).
pub fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.split_once(' ') {
        None if line == "stats" => Ok(Request::Stats),
        None if line == "refresh" => Ok(Request::Refresh),
        Some(("trace", p)) if p.starts_with('/') => Ok(Request::Trace(PathBuf::from(p))),
        Some(("trace", _)) => Err("trace needs an absolute path".into()),
        _ => Err(format!("unknown request '{line}'")),
    }
}

fn answer(stream: UnixStream, ov: &Arc<Overlay>, kernel: Option<&KernelCache>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line)?;
    let reply = match parse_request(&line) {
        Ok(Request::Stats) => serde_json::to_string(&ov.stats()).map_err(io::Error::other)?,
        Ok(Request::Trace(p)) => match start_trace(ov, &p) {
            Ok(()) => serde_json::json!({ "trace": p }).to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        },
        Ok(Request::Refresh) => refresh_caches(ov, kernel).to_string(),
        Err(e) => serde_json::json!({ "error": e }).to_string(),
    };
    let mut w = &stream;
    writeln!(w, "{reply}")
}

/// Drops the daemon's caches, then the kernel's (this runs on the control
/// thread, never on a FUSE request thread: see [`KernelCache`]).
fn refresh_caches(ov: &Overlay, kernel: Option<&KernelCache>) -> serde_json::Value {
    let started = std::time::Instant::now();
    let r = ov.refresh();
    let k = kernel.map(|k| k.invalidate(&r)).unwrap_or_default();
    serde_json::json!({ "refreshed": {
        "directories": r.dirs,
        "directories_changed": r.dirs_changed,
        "inodes_invalidated": k.inodes,
        "entries_invalidated": k.entries,
        "not_cached": k.not_cached,
        "kernel": kernel.is_some(),
        "millis": started.elapsed().as_millis() as u64,
    }})
}

/// Opens a trace file for appending (mode 0600 when created).
pub fn open_trace(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn start_trace(ov: &Overlay, path: &Path) -> Result<(), String> {
    if let Some(t) = ov.tracer() {
        return Err(format!("already tracing to {}", t.path().display()));
    }
    let f = open_trace(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let t = Tracer::spawn(f, path).map_err(|e| format!("cannot start tracing: {e}"))?;
    ov.set_tracer(t).map_err(|t| {
        warn!("tracer raced");
        format!("already tracing to {}", t.path().display())
    })
}

// ----------------------------------------------------------------------
// Readers
// ----------------------------------------------------------------------

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

fn read_state(path: &Path) -> Result<MountState, StateError> {
    let b = fs::read(path).map_err(|cause| StateError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    serde_json::from_slice(&b).map_err(|cause| StateError::Json {
        path: path.to_path_buf(),
        cause,
    })
}

/// The state of the mount at `mountpoint`.
pub fn find(mountpoint: &Path) -> Result<MountState, StateError> {
    let abs = crate::overlay::layers::absolute(mountpoint);
    let canon = fs::canonicalize(&abs).unwrap_or(abs);
    let dir = runtime_dir();
    let p = dir.join(format!("{}.json", key(&canon)));
    if !p.exists() {
        return Err(StateError::NotAMount {
            path: canon,
            rundir: dir,
        });
    }
    let st = read_state(&p)?;
    if !pid_alive(st.pid) {
        return Err(StateError::Stale {
            mountpoint: st.mountpoint,
            pid: st.pid,
        });
    }
    Ok(st)
}

/// Every live mount published in the runtime directory.
pub fn list() -> Vec<MountState> {
    let Ok(rd) = fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<MountState> = rd
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| read_state(&e.path()).ok())
        .filter(|s| pid_alive(s.pid))
        .collect();
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    out
}

/// Splits `path` into the mount containing it and the path inside the mount
/// (pure: the deepest mountpoint that is a prefix wins).
pub fn split_at_mount<'a>(
    path: &Path,
    mounts: &'a [MountState],
) -> Option<(&'a MountState, PathBuf)> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.components().count())
        .and_then(|m| {
            let rest = path.strip_prefix(&m.mountpoint).ok()?;
            Some((m, Path::new("/").join(rest)))
        })
}

/// The mount containing `path` (made absolute lexically) and the path
/// inside it.
pub fn find_containing(path: &Path) -> Result<(MountState, PathBuf), StateError> {
    let abs = crate::overlay::layers::absolute(path);
    let mounts = list();
    split_at_mount(&abs, &mounts)
        .map(|(m, rest)| (m.clone(), rest))
        .ok_or(StateError::Outside { path: abs })
}

/// Sends one request line to the mount's control socket; returns the reply.
pub fn request(st: &MountState, line: &str) -> Result<serde_json::Value, StateError> {
    let cerr = |cause| StateError::Connect {
        path: st.control.clone(),
        cause,
    };
    let s = UnixStream::connect(&st.control).map_err(cerr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(cerr)?;
    let mut w = &s;
    writeln!(w, "{line}").map_err(cerr)?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(cerr)?;
    let v: serde_json::Value = serde_json::from_str(&reply).map_err(|e| StateError::Reply {
        mountpoint: st.mountpoint.clone(),
        message: format!("unreadable reply: {e}"),
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(StateError::Reply {
            mountpoint: st.mountpoint.clone(),
            message: e.to_string(),
        });
    }
    Ok(v)
}

/// The counters of a live mount.
pub fn stats(st: &MountState) -> Result<Snapshot, StateError> {
    let v = request(st, "stats")?;
    serde_json::from_value(v).map_err(|e| StateError::Reply {
        mountpoint: st.mountpoint.clone(),
        message: format!("unreadable statistics: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_table() {
        let cases: &[(u32, Option<&str>, Option<&str>, &str)] = &[
            (0, None, Some("/run/user/0"), "/run/layerfs"),
            (1000, None, Some("/run/user/1000"), "/run/user/1000/layerfs"),
            (1000, None, None, "/tmp/layerfs-1000"),
            (1000, None, Some("relative"), "/tmp/layerfs-1000"),
            (0, Some("/x"), None, "/x"),
            (1000, Some(""), None, "/tmp/layerfs-1000"),
        ];
        for (uid, o, x, want) in cases {
            assert_eq!(
                choose_runtime_dir(*uid, *o, *x),
                PathBuf::from(want),
                "{uid} {o:?} {x:?}"
            );
        }
    }

    #[test]
    fn keys_are_stable_and_short() {
        let a = key(Path::new("/mnt/a"));
        assert_eq!(a.len(), 32);
        assert_eq!(a, key(Path::new("/mnt/a")));
        assert_ne!(a, key(Path::new("/mnt/b")));
    }

    #[test]
    fn requests() {
        assert_eq!(parse_request("stats\n"), Ok(Request::Stats));
        assert_eq!(
            parse_request("trace /t.jsonl\n"),
            Ok(Request::Trace(PathBuf::from("/t.jsonl")))
        );
        assert_eq!(parse_request("refresh\n"), Ok(Request::Refresh));
        assert!(parse_request("refresh now").is_err());
        assert!(parse_request("trace t.jsonl").is_err());
        assert!(parse_request("bogus").is_err());
        assert!(parse_request("").is_err());
    }

    fn st(mnt: &str) -> MountState {
        MountState {
            version: STATE_VERSION,
            mountpoint: PathBuf::from(mnt),
            pid: 1,
            uid: 0,
            source: None,
            lowerdirs: vec![],
            upperdir: None,
            workdir: None,
            trace: None,
            control: PathBuf::new(),
            started: String::new(),
        }
    }

    #[test]
    fn split_at_mount_table() {
        let mounts = vec![st("/mnt"), st("/mnt/inner"), st("/srv/m")];
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("/mnt/etc/passwd", Some(("/mnt", "/etc/passwd"))),
            ("/mnt/inner/x", Some(("/mnt/inner", "/x"))),
            ("/mnt", Some(("/mnt", "/"))),
            ("/mntx/a", None),
            ("/srv/m/a/b", Some(("/srv/m", "/a/b"))),
            ("/etc/passwd", None),
        ];
        for (p, want) in cases {
            let got = split_at_mount(Path::new(p), &mounts).map(|(m, r)| (m.mountpoint.clone(), r));
            let want = want.map(|(m, r)| (PathBuf::from(m), PathBuf::from(r)));
            assert_eq!(got, want, "{p}");
        }
    }
}
