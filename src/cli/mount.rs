//! `layerfs mount` and the fuse-overlayfs-compatible form: both end in
//! [`run`], the one code path that checks the layers, mounts and serves.
//!
//! Sequence: validate and open every directory, mount and answer the
//! kernel's INIT, bind the control socket, all while attached to the
//! terminal and before any thread exists (so errors reach the user, and the
//! fork copies everything); then point stdio to /dev/null, fork, and in the
//! parent put stdio back, write the state file naming the daemon, and exit
//! 0 without waiting for the daemon: the mount is live and published when
//! the command returns. The daemon (the child) starts its threads, leaves
//! the session (setsid) and serves; requests that arrive before it serves
//! wait in the kernel.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use fuser::MountOption;
use log::{error, info};

use super::options::{Flag, MountOptions, OptionError};
use super::state;
use crate::fuse::{self, FuseOptions, LayerFs, MountSpec};
use crate::overlay::layers::{self, Overlap};
use crate::overlay::trace::Tracer;
use crate::overlay::{Overlay, Stack, StackError, UpperOptions};
use crate::store::{Store, StoreError};
use crate::sys::{self, process};

/// `layerfs mount`: the friendly spelling of the fuse-overlayfs command line.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// A read-only layer directory; repeat it, the first one is the top layer.
    #[arg(long = "layer", value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    /// The writable upper layer (needs --work on the same filesystem).
    #[arg(long, value_name = "DIR", requires = "work")]
    pub upper: Option<PathBuf>,
    /// The work directory for atomic copy-up (same filesystem as --upper).
    #[arg(long, value_name = "DIR", requires = "upper")]
    pub work: Option<PathBuf>,
    /// Mount options, as with the fuse-overlayfs form (see `layerfs --help`).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Stay in the foreground instead of serving in the background.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Log every request to stderr (implies -f).
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// An image in the store (name[:tag] or ID): its layers become the
    /// lower layers, top first.
    #[arg(value_name = "IMAGE", conflicts_with = "layers")]
    pub image: Option<String>,
    /// Where to mount the merged view.
    pub mountpoint: PathBuf,
}

/// A mount to perform, however it was spelled.
#[derive(Debug)]
pub struct MountRequest {
    pub options: MountOptions,
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
}

impl MountArgs {
    /// The mount to perform; an image is looked up in `store`.
    pub fn into_request(self, store: &Store) -> Result<MountRequest, MountError> {
        let mut options = MountOptions::default();
        for o in &self.options {
            options.apply(o).map_err(MountError::Option)?;
        }
        if !self.layers.is_empty() {
            options.lowerdirs = self.layers;
        }
        let mut source = None;
        if let Some(name) = &self.image {
            let img = store.resolve(name).map_err(MountError::Image)?;
            options.lowerdirs = store.layer_dirs(&img).map_err(MountError::Image)?;
            source = Some(name.clone());
        }
        if self.upper.is_some() {
            options.upperdir = self.upper;
            options.workdir = self.work;
        }
        Ok(MountRequest {
            options,
            source,
            mountpoint: self.mountpoint,
            foreground: self.foreground || self.debug,
            debug: self.debug,
        })
    }
}

/// Why a mount did not happen. Each variant names the paths involved.
#[derive(Debug)]
pub enum MountError {
    Option(OptionError),
    NoLowerdir,
    UpperWithoutWork,
    WorkWithoutUpper,
    Path {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    NotADirectory {
        what: &'static str,
        path: PathBuf,
    },
    Overlap(Overlap),
    /// The work directory inside the upper one or the other way round:
    /// the work files would show in the merged view, or the upper layer
    /// in the work directory (kernel overlayfs refuses it the same way).
    UpperWorkNested {
        upper: PathBuf,
        work: PathBuf,
    },
    /// Copy-up renames from the work directory into the upper one.
    UpperWorkDevices {
        upper: PathBuf,
        work: PathBuf,
    },
    Stack(StackError),
    Mount {
        mountpoint: PathBuf,
        cause: std::io::Error,
    },
    Daemon(String),
    /// The image named on the command line is not usable.
    Image(StoreError),
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Option(e) => e.fmt(f),
            MountError::NoLowerdir => {
                write!(
                    f,
                    "no lower layer given: name an IMAGE from the store, or use -o lowerdir=DIR[:DIR...] or --layer DIR"
                )
            }
            MountError::UpperWithoutWork => write!(f, "upperdir= needs workdir= as well"),
            MountError::WorkWithoutUpper => write!(f, "workdir= needs upperdir= as well"),
            MountError::Path { what, path, cause } => {
                write!(f, "{what} {}: {cause}", path.display())
            }
            MountError::NotADirectory { what, path } => {
                write!(f, "{what} {} is not a directory", path.display())
            }
            MountError::Overlap(o) => o.fmt(f),
            MountError::UpperWorkNested { upper, work } => write!(
                f,
                "upper directory {} and work directory {} must be separate subtrees (neither inside the other)",
                upper.display(),
                work.display()
            ),
            MountError::UpperWorkDevices { upper, work } => write!(
                f,
                "work directory {} must be on the same filesystem as upper directory {} (copy-up renames from one into the other)",
                work.display(),
                upper.display()
            ),
            MountError::Stack(e) => e.fmt(f),
            MountError::Mount { mountpoint, cause } => {
                write!(f, "cannot mount on {}: {cause}", mountpoint.display())
            }
            MountError::Daemon(s) => f.write_str(s),
            MountError::Image(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for MountError {}

/// Resolves a directory the user named: absolute, symlinks resolved, and it
/// must be a directory.
fn resolve_dir(what: &'static str, p: &Path) -> Result<PathBuf, MountError> {
    let abs = layers::absolute(p);
    let canon = std::fs::canonicalize(&abs).map_err(|cause| MountError::Path {
        what,
        path: abs.clone(),
        cause,
    })?;
    if !canon.is_dir() {
        return Err(MountError::NotADirectory { what, path: abs });
    }
    Ok(canon)
}

/// Everything checked and opened, ready to mount.
struct Prepared {
    overlay: Overlay,
    mountpoint: PathBuf,
    spec: MountSpec,
    fuse: FuseOptions,
    /// What the daemon publishes for `explain`/`layers`/`stats` (see `state`).
    state: state::Description,
    /// The trace file, opened before the fork so errors reach the user.
    trace: Option<(PathBuf, std::fs::File)>,
}

fn prepare(req: &MountRequest) -> Result<Prepared, MountError> {
    let o = &req.options;
    if o.lowerdirs.is_empty() {
        return Err(MountError::NoLowerdir);
    }
    match (&o.upperdir, &o.workdir) {
        (Some(_), None) => return Err(MountError::UpperWithoutWork),
        (None, Some(_)) => return Err(MountError::WorkWithoutUpper),
        _ => {}
    }
    let mountpoint = resolve_dir("mountpoint", &req.mountpoint)?;
    let mut lowers = Vec::new();
    for l in &o.lowerdirs {
        lowers.push(resolve_dir("lower directory", l)?);
    }
    let upper = match (&o.upperdir, &o.workdir) {
        (Some(u), Some(w)) => Some((
            resolve_dir("upper directory", u)?,
            resolve_dir("work directory", w)?,
        )),
        _ => None,
    };
    let mut dirs: Vec<(&'static str, &Path)> = lowers
        .iter()
        .map(|l| ("lower directory", l.as_path()))
        .collect();
    if let Some((u, w)) = &upper {
        dirs.push(("upper directory", u));
        dirs.push(("work directory", w));
    }
    layers::check_overlap(&mountpoint, &dirs).map_err(MountError::Overlap)?;
    if let Some((u, w)) = &upper {
        let nested = || MountError::UpperWorkNested {
            upper: u.clone(),
            work: w.clone(),
        };
        if layers::contains(u, w) || layers::contains(w, u) {
            return Err(nested());
        }
        let dev = |what, p: &Path| {
            std::fs::metadata(p)
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
                .map_err(|cause| MountError::Path {
                    what,
                    path: p.to_path_buf(),
                    cause,
                })
        };
        if dev("upper directory", u)? != dev("work directory", w)? {
            return Err(MountError::UpperWorkDevices {
                upper: u.clone(),
                work: w.clone(),
            });
        }
    }
    let trace_path = o
        .trace
        .clone()
        .or_else(|| {
            std::env::var_os("LAYERFS_TRACE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .map(|p| layers::absolute(&p));
    let trace = match trace_path {
        Some(p) => Some((
            p.clone(),
            state::open_trace(&p).map_err(|cause| MountError::Path {
                what: "cannot open trace file",
                path: p,
                cause,
            })?,
        )),
        None => None,
    };
    let state = state::Description {
        mountpoint: mountpoint.clone(),
        source: req.source.clone(),
        lowerdirs: lowers.clone(),
        upperdir: upper.as_ref().map(|(u, _)| u.clone()),
        workdir: upper.as_ref().map(|(_, w)| w.clone()),
        trace: trace.as_ref().map(|(p, _)| p.clone()),
    };

    let stack = Stack::open(
        &lowers,
        upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
    )
    .map_err(MountError::Stack)?;
    let upper_dir = upper.as_ref().map(|(u, _)| u.clone()).unwrap_or_default();
    let overlay = Overlay::new(
        stack,
        UpperOptions {
            volatile: o.volatile,
            whiteout: o.whiteout,
            redirect_dir: o.redirect_dir,
            metacopy: o.metacopy,
            xattrs: o.xattr_namespace,
        },
    )
    .map_err(|cause| MountError::Path {
        what: "cannot prepare the work directory for upper directory",
        path: upper_dir,
        cause: cause.to_io(),
    })?;

    let root = sys::geteuid() == 0;
    // Each caller's umask is applied to the modes it asks for.
    sys::set_umask(0);
    let mut mount_options = vec![
        MountOption::FSName(
            o.fsname
                .clone()
                .or_else(|| req.source.clone())
                .unwrap_or_else(|| "layerfs".into()),
        ),
        MountOption::Subtype(o.subtype.clone().unwrap_or_else(|| "layerfs".into())),
    ];
    // Later flags override earlier ones: keep the last of each kind.
    let mut dev = false;
    let mut suid = false;
    let mut exec = true;
    let mut atime = true;
    let mut sync = None;
    let mut dirsync = false;
    for f in &o.flags {
        match *f {
            Flag::Dev(v) => dev = v,
            Flag::Suid(v) => suid = v,
            Flag::Exec(v) => exec = v,
            Flag::Atime(v) => atime = v,
            Flag::Sync(v) => sync = Some(v),
            Flag::DirSync => dirsync = true,
            Flag::ReadOnly(_) => {}
        }
    }
    mount_options.push(if o.read_only() {
        MountOption::RO
    } else {
        MountOption::RW
    });
    mount_options.push(if dev {
        MountOption::Dev
    } else {
        MountOption::NoDev
    });
    mount_options.push(if suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    mount_options.push(if exec {
        MountOption::Exec
    } else {
        MountOption::NoExec
    });
    mount_options.push(if atime {
        MountOption::Atime
    } else {
        MountOption::NoAtime
    });
    match sync {
        Some(true) => mount_options.push(MountOption::Sync),
        Some(false) => mount_options.push(MountOption::Async),
        None => {}
    }
    if dirsync {
        mount_options.push(MountOption::DirSync);
    }
    mount_options.extend(o.kernel.iter().cloned().map(MountOption::CUSTOM));
    // As root, like fuse-overlayfs: everyone may use the mount, and the
    // kernel checks permissions from the reported modes.
    if root || o.default_permissions {
        mount_options.push(MountOption::DefaultPermissions);
    }
    let spec = MountSpec {
        mount_options,
        allow_other: root || o.allow_other,
        allow_root: o.allow_root,
    };
    let mut fuse = FuseOptions::default();
    if let Some(t) = o.timeout {
        fuse.timeout = t;
    }
    if let Some(n) = o.threads {
        fuse.threads = n;
    }
    if let Some(n) = o.uring {
        fuse.uring_threads = n;
    }
    if let Some(r) = o.readdirplus {
        fuse.readdirplus = r;
    }
    fuse.dir_nlink = o.dir_nlink;
    fuse.xattrs = o.xattrs;
    if let Some(n) = o.max_inodes {
        fuse.max_inodes = crate::overlay::NodeLimit(n);
    }
    // Only a mapping shows the overflow ids: skip two /proc reads at start-up without one.
    let overflow = |kind, mapped: bool| match mapped {
        true => overflow_id(kind),
        false => crate::overlay::idmap::DEFAULT_OVERFLOW_ID,
    };
    fuse.idmap = o.idmap((
        overflow("uid", !o.uidmapping.is_empty()),
        overflow("gid", !o.gidmapping.is_empty()),
    ));
    // The kernel refuses passthrough once writeback is negotiated.
    fuse.writeback = o.writeback;
    fuse.passthrough = o.passthrough.unwrap_or(true)
        && o.writeback != Some(true)
        && root
        && sys::in_initial_userns();
    Ok(Prepared {
        overlay,
        mountpoint,
        spec,
        fuse,
        state,
        trace,
    })
}

/// The id shown for ids without a mapping, as the kernel shows it.
fn overflow_id(kind: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/kernel/overflow{kind}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(crate::overlay::idmap::DEFAULT_OVERFLOW_ID)
}

fn init_logging(debug: bool) {
    let mut b = env_logger::Builder::new();
    if debug {
        b.filter_level(log::LevelFilter::Debug);
    } else {
        b.filter_level(log::LevelFilter::Warn)
            .filter_module("fuser", log::LevelFilter::Error);
    }
    b.parse_env("LAYERFS_LOG");
    let _ = b.try_init();
}

/// Mounts and serves. Returns the process exit code.
pub fn run(req: MountRequest) -> i32 {
    init_logging(req.debug);
    match run_inner(req) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}

fn run_inner(req: MountRequest) -> Result<(), MountError> {
    let prepared = prepare(&req)?;
    sys::raise_nofile_limit();
    // Termination signals go to one thread; block them before any other
    // thread exists so that all threads inherit the mask, and before the
    // mount so that none can leave a mount without its daemon.
    process::block_termination_signals();
    let live = mount(prepared)?;
    if req.foreground {
        let published = state::bind(&live.state)
            .and_then(|b| b.write_state(&live.state, std::process::id()).map(|()| b))
            .map_err(|e| error!("cannot publish the mount's state: {e}"))
            .ok();
        return serve(live, published);
    }
    // The mount is live: what is left for the command is to fork the daemon
    // and publish the state, then return. It does not wait for the daemon
    // (fuse-overlayfs's parent waits for its child's setsid, slow under
    // load); the daemon's first steps (threads, setsid) come after.
    let binding = state::bind(&live.state)
        .map_err(|e| error!("cannot publish the mount's state: {e}"))
        .ok();
    let saved = process::SavedStdio::swap_in_null()
        .map_err(|e| MountError::Daemon(format!("cannot open /dev/null: {e}")))?;
    let forked = process::fork();
    match forked {
        Err(e) => {
            saved.restore();
            Err(MountError::Daemon(format!("fork: {e}")))
        }
        Ok(process::Forked::Parent { child }) => {
            saved.restore();
            if let Some(b) = &binding
                && let Err(e) = b.write_state(&live.state, child as u32)
            {
                error!("cannot publish the mount's state: {e}");
            }
            // The session, the socket and the mount now belong to the
            // daemon: leave without destructors (one would unmount).
            std::process::exit(0)
        }
        Ok(process::Forked::Child) => {
            drop(saved);
            process::new_session();
            let code = match serve(live, binding) {
                Ok(()) => 0,
                Err(e) => {
                    error!("{e}");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// A live mount whose requests wait for [`serve`].
struct Live {
    session: fuser::Session<LayerFs>,
    overlay: Arc<Overlay>,
    mountpoint: PathBuf,
    max_inodes: crate::overlay::NodeLimit,
    state: state::Description,
    trace: Option<(PathBuf, std::fs::File)>,
    on_disconnect: Arc<fuse::OnDisconnect>,
}

/// Mounts and answers the kernel's INIT. Starts no thread (the caller may
/// still fork).
fn mount(p: Prepared) -> Result<Live, MountError> {
    let overlay = Arc::new(p.overlay);
    let max_inodes = p.fuse.max_inodes;
    let fs = LayerFs::new(overlay.clone(), p.fuse);
    let on_disconnect = fs.on_disconnect();
    let session = fuse::mount(fs, &p.mountpoint, &p.spec).map_err(|cause| MountError::Mount {
        mountpoint: p.mountpoint.clone(),
        cause,
    })?;
    Ok(Live {
        session,
        overlay,
        mountpoint: p.mountpoint,
        max_inodes,
        state: p.state,
        trace: p.trace,
        on_disconnect,
    })
}

/// Starts the daemon's threads (tracer, pruner, control socket on
/// `binding`, signals) and serves until unmounted or signalled.
fn serve(live: Live, binding: Option<state::Binding>) -> Result<(), MountError> {
    let Live {
        mut session,
        overlay,
        mountpoint,
        max_inodes,
        state: desc,
        trace,
        on_disconnect,
    } = live;
    let tracing = trace.is_some();
    if let Some((path, file)) = trace {
        match Tracer::spawn(file, &path) {
            Ok(t) => drop(overlay.set_tracer(t)),
            Err(e) => error!("cannot start tracing to {}: {e}", path.display()),
        }
    }
    fuse::start_pruner(&session, &overlay, max_inodes);
    // Best effort: the mount works without it, only explain/stats do not.
    let kernel = fuse::KernelCache::new(session.notifier());
    let published = binding.and_then(|b| {
        b.serve(&desc.mountpoint, Arc::downgrade(&overlay), Some(kernel))
            .map_err(|e| error!("cannot serve the control socket: {e}"))
            .ok()
    });
    let files = published.as_ref().map(|g| g.0.clone());
    // Once unmounted, the daemon's open layer directories keep their
    // filesystems busy: a script that unmounts the upper filesystem right
    // after the mount (the unionmount test suite, container tools cleaning
    // up) gets EBUSY while the threads wind down one by one and the tables
    // are freed. Exit from the first thread that sees the end instead,
    // descriptors first. Not while tracing: the tracer flushes at the end.
    if !tracing {
        let files = files.clone();
        on_disconnect.set(move || {
            if let Some(f) = &files {
                f.remove();
            }
            process::exit_closing_fds(0);
        });
    }
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.clone();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = process::wait_termination();
            info!("signal {sig}: unmounting {}", mp.display());
            if let Err(e) = unmounter.unmount() {
                // Busy: detach it; the kernel ends the connection when the
                // last user lets go, or when this process exits.
                info!("unmount failed ({e}); detaching");
                if let Ok(c) = sys::cstr(mp.as_os_str()) {
                    let _ = process::umount2(&c, libc::MNT_DETACH);
                }
                if let Some(f) = &files {
                    f.remove();
                }
                std::process::exit(0);
            }
        });
    let r = session
        .run()
        .map_err(|cause| MountError::Mount { mountpoint, cause });
    drop(published);
    r
}
