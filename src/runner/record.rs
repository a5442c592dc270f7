//! Container records under the store root: one directory per container.
//!
//! ```text
//! ROOT/containers/ID/config.json   the Record below (name, image, command, state)
//! ROOT/containers/ID/image         the image ID (the store's reference convention:
//!                                  rmi refuses it, prune keeps its layers)
//! ROOT/containers/ID/upper, work   the container's writable layer and work dir
//! ROOT/containers/ID/init/         a lower layer above the image with empty mount
//!                                  targets (proc, sys, dev, etc/hosts, ...), so the
//!                                  runner never writes into upper
//! ROOT/containers/ID/hosts, hostname, resolv.conf
//!                                  bind-mounted over the init layer's stubs
//! ROOT/containers/ID/merged        the mountpoint (only used inside the runner's
//!                                  private mount namespace)
//! ROOT/containers/ID/lock          flock(2)ed by the runner while it runs
//! ```
//!
//! Invariants: a container directory is created complete under the store
//! lock (names are unique); `lock` is held exactly while a runner uses the
//! container, so a record whose status says running but whose lock is free
//! belongs to a runner that was killed.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};
use crate::sys::{self, ns};

/// Why a container record operation failed.
#[derive(Debug)]
pub enum RecordError {
    Store(StoreError),
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    NameInUse {
        name: String,
        id: String,
    },
    BadName(String),
    NoSuchContainer(String),
    Ambiguous(String),
    Running(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Store(e) => e.fmt(f),
            RecordError::Io { what, path, cause } => {
                write!(f, "cannot {what} {}: {cause}", path.display())
            }
            RecordError::Json { path, cause } => {
                write!(f, "invalid container record {}: {cause}", path.display())
            }
            RecordError::NameInUse { name, id } => write!(
                f,
                "the container name \"{name}\" is already in use by container {}: remove it or pick another name",
                short(id)
            ),
            RecordError::BadName(n) => write!(
                f,
                "invalid container name \"{n}\": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            ),
            RecordError::NoSuchContainer(n) => write!(f, "No such container: {n}"),
            RecordError::Ambiguous(n) => {
                write!(f, "container ID prefix '{n}' matches several containers")
            }
            RecordError::Running(n) => {
                write!(f, "container {n} is running: stop it first or use -f")
            }
        }
    }
}

impl std::error::Error for RecordError {}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RecordError + 'a {
    move |cause| RecordError::Io {
        what,
        path: path.to_path_buf(),
        cause,
    }
}

/// The 12-character form of an ID.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Where a container is in its life.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// `config.json`: everything needed to show and to start the container again.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub name: String,
    /// The image ID (`sha256:...`).
    pub image: String,
    /// The image as the user named it.
    pub image_name: String,
    /// The command with its arguments (entrypoint included).
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// The `-u` value or the image's User; empty for root.
    #[serde(default)]
    pub user: String,
    pub hostname: String,
    #[serde(default)]
    pub tty: bool,
    /// Unix seconds.
    pub created: u64,
    #[serde(default)]
    pub started: Option<u64>,
    #[serde(default)]
    pub finished: Option<u64>,
    pub status: Status,
    #[serde(default)]
    pub exit_code: Option<i32>,
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new random 64-hex-digit container ID.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if ns::getrandom(&mut b).is_err() {
        // Never expected; fall back on time and pid (unique enough locally).
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b[..16].copy_from_slice(&t.to_le_bytes());
        b[16..20].copy_from_slice(&ns::getpid().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nifty", "proud", "quirky", "sharp", "tender", "vivid", "witty", "zen",
];
const NOUNS: &[&str] = &[
    "babbage", "curie", "darwin", "euler", "fermat", "gauss", "hopper", "knuth", "lovelace",
    "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wirth",
];

/// A docker-style name (`adjective_noun`) derived from an ID.
pub fn default_name(id: &str) -> String {
    let n = u64::from_str_radix(&id[..id.len().min(8)], 16).unwrap_or(0) as usize;
    format!(
        "{}_{}",
        ADJECTIVES[n % ADJECTIVES.len()],
        NOUNS[(n / ADJECTIVES.len()) % NOUNS.len()]
    )
}

/// Checks a `--name` (docker's rule).
pub fn check_name(n: &str) -> Result<(), RecordError> {
    let mut b = n.bytes();
    let ok = b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RecordError::BadName(n.into()))
    }
}

/// One container directory.
#[derive(Debug, Clone)]
pub struct Container {
    pub dir: PathBuf,
}

impl Container {
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn init(&self) -> PathBuf {
        self.dir.join("init")
    }
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// The files bind-mounted over /etc/NAME in the container.
    pub fn etc_file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn read(&self) -> Result<Record, RecordError> {
        let p = self.config();
        let b = fs::read(&p).map_err(io_err("read", &p))?;
        serde_json::from_slice(&b).map_err(|cause| RecordError::Json { path: p, cause })
    }

    /// Replaces config.json atomically.
    pub fn write(&self, r: &Record) -> Result<(), RecordError> {
        let p = self.config();
        let tmp = self.dir.join(".config.json.new");
        let b = serde_json::to_vec_pretty(r).map_err(|cause| RecordError::Json {
            path: p.clone(),
            cause,
        })?;
        // The supervisor runs with umask 0 (FUSE applies the callers'):
        // give the record its mode explicitly.
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("write", &tmp))?;
        f.write_all(&b).map_err(io_err("write", &tmp))?;
        drop(f);
        fs::rename(&tmp, &p).map_err(io_err("write", &p))
    }

    /// Takes the run lock; `Ok(None)` when another runner holds it.
    pub fn try_lock(&self) -> Result<Option<File>, RecordError> {
        let p = self.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("open", &p))?;
        match sys::flock(f.as_fd(), true, true) {
            Ok(()) => Ok(Some(f)),
            Err(e) if e.0 == libc::EWOULDBLOCK => Ok(None),
            Err(e) => Err(RecordError::Io {
                what: "lock",
                path: p,
                cause: e.to_io(),
            }),
        }
    }

    /// Takes the run lock for a runner (retrying briefly: `ps` takes it for
    /// an instant to see whether a container runs) and records our pid in
    /// it for `rm -f`. `Ok(None)`: another runner has the container.
    pub fn lock_for_run(&self) -> Result<Option<File>, RecordError> {
        for _ in 0..20 {
            if let Some(mut f) = self.try_lock()? {
                let _ = f.set_len(0);
                let _ = writeln!(f, "{}", ns::getpid());
                return Ok(Some(f));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(None)
    }

    /// Whether a runner is using the container now.
    pub fn is_running(&self) -> bool {
        matches!(self.try_lock(), Ok(None))
    }

    /// Deletes the whole directory (the caller must be able to: see
    /// `userns::enter` for uppers holding files of other ids).
    pub fn remove(&self) -> Result<(), RecordError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(RecordError::Io {
                what: "remove",
                path: self.dir.clone(),
                cause,
            }),
        }
    }
}

fn containers_dir(store: &Store) -> PathBuf {
    store.root().join("containers")
}

/// Every container with its record (unreadable records are skipped).
pub fn list(store: &Store) -> Vec<(Container, Record)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(containers_dir(store)) {
        for e in rd.flatten() {
            let c = Container { dir: e.path() };
            if let Ok(r) = c.read() {
                out.push((c, r));
            }
        }
    }
    out.sort_by(|a, b| b.1.created.cmp(&a.1.created).then(a.1.id.cmp(&b.1.id)));
    out
}

/// Finds a container by name, full ID or unique ID prefix.
pub fn find(store: &Store, text: &str) -> Result<(Container, Record), RecordError> {
    let all = list(store);
    if let Some(i) = all.iter().position(|(_, r)| r.name == text || r.id == text) {
        return Ok(all[i].clone());
    }
    let mut m = all
        .into_iter()
        .filter(|(_, r)| !text.is_empty() && r.id.starts_with(text));
    match (m.next(), m.next()) {
        (Some(c), None) => Ok(c),
        (Some(_), Some(_)) => Err(RecordError::Ambiguous(text.into())),
        _ => Err(RecordError::NoSuchContainer(text.into())),
    }
}

/// What [`create`] writes besides the record.
pub struct EtcFiles {
    pub hosts: String,
    pub hostname: String,
    pub resolv_conf: Vec<u8>,
}

/// Whose the name of a new container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The user's (`--name`): taken as is, or refused when in use.
    Given,
    /// Made up ([`default_name`]): when in use, the first free of
    /// `NAME_2`, `NAME_3`, ... is taken instead (there are only a few
    /// hundred made-up names, so kept containers make clashes likely).
    Generated,
}

/// Creates a container directory for `record` (its `id` and `name` set by
/// the caller), checking under the store lock that the name is free (with
/// [`Naming::Generated`], `record.name` becomes a free variant). On error
/// nothing is left behind.
pub fn create(
    store: &Store,
    record: &mut Record,
    etc: &EtcFiles,
    naming: Naming,
) -> Result<Container, RecordError> {
    let lock = store.lock().map_err(RecordError::Store)?;
    let taken: Vec<(String, String)> = list(store)
        .into_iter()
        .map(|(_, r)| (r.name, r.id))
        .collect();
    let in_use = |n: &str| taken.iter().find(|(name, _)| name == n).map(|(_, id)| id);
    if let Some(id) = in_use(&record.name) {
        match naming {
            Naming::Given => {
                return Err(RecordError::NameInUse {
                    name: record.name.clone(),
                    id: id.clone(),
                });
            }
            Naming::Generated => {
                let base = record.name.clone();
                record.name = (2..)
                    .map(|k| format!("{base}_{k}"))
                    .find(|n| in_use(n).is_none())
                    .unwrap_or(base);
            }
        }
    }
    let base = containers_dir(store);
    fs::create_dir_all(&base).map_err(io_err("create", &base))?;
    // Built in the store's tmp/ and renamed into place: complete or absent.
    let tmp = store.tmp_dir().join(format!("container-{}", record.id));
    let c = Container { dir: tmp.clone() };
    let build = || -> Result<(), RecordError> {
        fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        for d in [
            "upper",
            "work",
            "merged",
            "init/proc",
            "init/sys",
            "init/dev",
            "init/etc",
        ] {
            let p = tmp.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        for f in ["hosts", "hostname", "resolv.conf"] {
            let p = tmp.join("init/etc").join(f);
            fs::write(&p, b"").map_err(io_err("create", &p))?;
        }
        let files: [(&str, &[u8]); 4] = [
            ("hosts", etc.hosts.as_bytes()),
            ("hostname", etc.hostname.as_bytes()),
            ("resolv.conf", &etc.resolv_conf),
            ("image", record.image.as_bytes()),
        ];
        for (name, data) in files {
            let p = tmp.join(name);
            fs::write(&p, data).map_err(io_err("write", &p))?;
        }
        c.write(record)
    };
    let dest = base.join(&record.id);
    let r = build().and_then(|()| fs::rename(&tmp, &dest).map_err(io_err("create", &dest)));
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    drop(lock);
    r.map(|()| Container { dir: dest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "x_y.z", "9lives"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(check_name(&default_name(&id)).is_ok());
        assert_eq!(default_name("00000000"), "brave_babbage");
    }

    #[test]
    fn create_find_remove() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path().to_path_buf());
        let rec = |id: &str, name: &str| Record {
            id: id.into(),
            name: name.into(),
            image: "sha256:ab".into(),
            image_name: "img".into(),
            command: vec!["sh".into()],
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
            hostname: "h".into(),
            tty: false,
            created: 1,
            started: None,
            finished: None,
            status: Status::Created,
            exit_code: None,
        };
        let etc = EtcFiles {
            hosts: "127.0.0.1 localhost\n".into(),
            hostname: "h\n".into(),
            resolv_conf: vec![],
        };
        let a = create(&store, &mut rec("aaaa1", "one"), &etc, Naming::Given).unwrap();
        create(&store, &mut rec("aaaa2", "two"), &etc, Naming::Given).unwrap();
        assert!(matches!(
            create(&store, &mut rec("bbbb", "one"), &etc, Naming::Given),
            Err(RecordError::NameInUse { .. })
        ));
        // A made-up name that clashes becomes the first free variant.
        for (id, want) in [("cccc1", "one_2"), ("cccc2", "one_3")] {
            let mut r = rec(id, "one");
            create(&store, &mut r, &etc, Naming::Generated).unwrap();
            assert_eq!(r.name, want);
            assert_eq!(find(&store, want).unwrap().1.id, id);
        }
        assert!(!store.root().join("containers/bbbb").exists());
        assert!(a.upper().is_dir() && a.init().join("etc/hosts").is_file());
        assert_eq!(find(&store, "one").unwrap().1.id, "aaaa1");
        assert_eq!(find(&store, "aaaa2").unwrap().1.name, "two");
        assert!(matches!(
            find(&store, "aaaa"),
            Err(RecordError::Ambiguous(_))
        ));
        assert!(matches!(
            find(&store, "zz"),
            Err(RecordError::NoSuchContainer(_))
        ));
        assert_eq!(
            fs::read_to_string(a.dir.join("image")).unwrap(),
            "sha256:ab"
        );
        let lock = a.try_lock().unwrap();
        assert!(lock.is_some());
        assert!(a.is_running());
        drop(lock);
        assert!(!a.is_running());
        a.remove().unwrap();
        assert!(matches!(
            find(&store, "one"),
            Err(RecordError::NoSuchContainer(_))
        ));
    }
}
