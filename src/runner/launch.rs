//! The supervisor: the runner process after it entered its user namespace.
//!
//! Sequence: private mount namespace; the FUSE mount of the container's
//! stack served in-process on threads (so it lives exactly as long as this
//! process); the user resolved from the container's /etc/passwd; the plan
//! for pid 1 prepared; `unshare(CLONE_NEWPID|CLONE_NEWUTS|CLONE_NEWIPC)`
//! and fork (the child is pid 1, see [`super::init`]); then a poll loop that
//! forwards signals, relays the terminal with `-t`, and waits for pid 1.
//!
//! Invariants: all signals are blocked before the FUSE threads start (only
//! the loop's signalfd sees them); pid 1 has PR_SET_PDEATHSIG=SIGKILL, so a
//! SIGKILL of this process takes the container with it, and the mount
//! namespaces (and the FUSE connection, whose only fds are ours) go with
//! their last process, which is a holder child ([`ns::NsHolder`]) that
//! outlives this one. Nothing here writes into the upper layer.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::MountOption;
use log::debug;

use super::init::{self, Bind, ExecPlan, InitPlan};
use super::spec::{self, EXIT_RUNNER, SpecError, UserSpec};
use super::userns::Mapping;
use crate::fuse::{self, FuseOptions, LayerFs, MountSpec};
use crate::overlay::{Overlay, Stack, StackError, UpperOptions};
use crate::sys::{self, Errno, ns, process};

/// Why the container could not be started.
#[derive(Debug)]
pub enum LaunchError {
    Namespace {
        what: &'static str,
        cause: Errno,
    },
    Stack(StackError),
    Upper {
        path: PathBuf,
        cause: Errno,
    },
    Mount {
        path: PathBuf,
        cause: std::io::Error,
    },
    Spec(SpecError),
    BadPath(PathBuf),
    /// A user or group id outside the namespace's mapping.
    Unmapped {
        what: &'static str,
        id: u32,
    },
    Setup {
        what: &'static str,
        cause: Errno,
    },
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Namespace { what, cause } => {
                write!(f, "cannot create the {what} namespace: {cause}")
            }
            LaunchError::Stack(e) => e.fmt(f),
            LaunchError::Upper { path, cause } => write!(
                f,
                "cannot prepare the upper layer {}: {cause}",
                path.display()
            ),
            LaunchError::Mount { path, cause } => {
                write!(f, "cannot mount the image on {}: {cause}", path.display())
            }
            LaunchError::Spec(e) => e.fmt(f),
            LaunchError::BadPath(p) => write!(f, "unusable path {}", p.display()),
            LaunchError::Unmapped { what, id } => write!(
                f,
                "cannot run as {what} {id}: it is not mapped in the user namespace \
                 (ids other than root need a range for you in /etc/subuid and /etc/subgid)"
            ),
            LaunchError::Setup { what, cause } => write!(f, "cannot {what}: {cause}"),
        }
    }
}

impl std::error::Error for LaunchError {}

/// The root filesystem of the container.
pub enum Rootfs {
    /// Image layers (top first, the container's init layer included) plus
    /// the container's upper and work directories, mounted on `mountpoint`.
    Stack {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        mountpoint: PathBuf,
        fsname: String,
    },
    /// A directory used as it is (writes go straight into it).
    Dir(PathBuf),
}

/// Everything needed to start one container.
pub struct Launch {
    pub rootfs: Rootfs,
    pub hostname: String,
    /// (host file, absolute path in the container) bound over existing files.
    pub binds: Vec<(PathBuf, String)>,
    pub argv: Vec<String>,
    /// Without HOME when the image sets none: it comes from /etc/passwd.
    pub env: Vec<String>,
    pub workdir: String,
    pub user: Option<UserSpec>,
    pub tty: bool,
    pub interactive: bool,
    pub mapping: Mapping,
}

/// How the container ended.
#[derive(Debug)]
pub struct Ended {
    /// The runner's exit status.
    pub code: i32,
    /// The container side's failure message (setup or exec), if any.
    pub message: Option<String>,
}

impl Ended {
    /// Whether the runner itself failed (not the command).
    pub fn runner_failed(&self) -> bool {
        self.code == EXIT_RUNNER && self.message.is_some()
    }
}

fn ns_err(what: &'static str) -> impl FnOnce(Errno) -> LaunchError {
    move |cause| LaunchError::Namespace { what, cause }
}

fn setup_err(what: &'static str) -> impl FnOnce(Errno) -> LaunchError {
    move |cause| LaunchError::Setup { what, cause }
}

fn cpath(p: &Path) -> Result<CString, LaunchError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| LaunchError::BadPath(p.to_path_buf()))
}

/// Reads a small file of the container (`/etc/passwd`), resolving symlinks
/// inside the root; empty when missing.
fn read_in_root(root: &Path, path: &str) -> String {
    let Ok(rootfd) = sys::open_dir_path(root) else {
        return String::new();
    };
    let Ok(c) = CString::new(path) else {
        return String::new();
    };
    match ns::open_in_root(rootfd.as_fd(), &c, libc::O_RDONLY) {
        Ok(fd) => {
            let mut s = String::new();
            let _ = File::from(fd).take(4 << 20).read_to_string(&mut s);
            s
        }
        Err(_) => String::new(),
    }
}

/// Mounts the stack on its mountpoint and serves it on threads.
fn mount_stack(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    mountpoint: &Path,
    fsname: &str,
) -> Result<fuser::BackgroundSession, LaunchError> {
    let stack = Stack::open(lowers, Some((upper, work))).map_err(LaunchError::Stack)?;
    let overlay =
        Overlay::new(stack, UpperOptions::default()).map_err(|cause| LaunchError::Upper {
            path: upper.to_path_buf(),
            cause,
        })?;
    let opts = FuseOptions {
        // Passthrough needs real privileges; the overlay would fall back anyway.
        passthrough: sys::geteuid() == 0 && sys::in_initial_userns(),
        // Two readers start faster than four and serve one command well.
        threads: 2,
        // Requests on /dev/fuse, not io_uring: this process is in the
        // mount namespace of its mount, and a ring's in-flight request can
        // keep the mount's teardown waiting forever when the ring's owner
        // is the one tearing it down (seen: `kill -9` of a runner left it
        // unkillable in fuse_wait_aborted, and `sync` then hangs on its
        // superblock). The abort of a /dev/fuse connection ends every
        // request in the kernel. The namespace holder covers the rest.
        uring_threads: 0,
        ..FuseOptions::default()
    };
    let spec = MountSpec {
        mount_options: vec![
            MountOption::FSName(fsname.to_string()),
            MountOption::Subtype("layerfs".into()),
            MountOption::RW,
            MountOption::NoDev,
            MountOption::Suid,
            MountOption::Exec,
            MountOption::DefaultPermissions,
        ],
        // Every user of the container, not only its root.
        allow_other: true,
        allow_root: false,
    };
    // Each caller's umask is applied to the modes it asks for.
    sys::set_umask(0);
    let fs = LayerFs::new(Arc::new(overlay), opts);
    let session = fuse::mount(fs, mountpoint, &spec).map_err(|cause| LaunchError::Mount {
        path: mountpoint.to_path_buf(),
        cause,
    })?;
    session.spawn().map_err(|cause| LaunchError::Mount {
        path: mountpoint.to_path_buf(),
        cause,
    })
}

/// Builds the plan of pid 1 (everything allocated before the fork).
fn plan(
    l: &Launch,
    root: &Path,
    tty_socket: Option<RawFd>,
    sync_fd: RawFd,
    error_fd: RawFd,
) -> Result<InitPlan, LaunchError> {
    let passwd = read_in_root(root, "/etc/passwd");
    let group = read_in_root(root, "/etc/group");
    let ids = spec::resolve_user(l.user.as_ref(), &passwd, &group).map_err(LaunchError::Spec)?;
    for (what, id) in [("user", ids.uid), ("group", ids.gid)] {
        if id >= l.mapping.ids {
            return Err(LaunchError::Unmapped { what, id });
        }
    }
    let mut env = l.env.clone();
    if spec::env_value(&env, "HOME").is_none() {
        env.push(format!("HOME={}", ids.home));
    }
    let path = spec::env_value(&env, "PATH")
        .unwrap_or(spec::DEFAULT_PATH)
        .to_string();
    let cs = |v: &[String]| -> Result<Vec<CString>, LaunchError> {
        v.iter()
            .map(|s| CString::new(s.as_bytes()).map_err(|_| LaunchError::BadPath(s.into())))
            .collect()
    };
    let name = l.argv.first().cloned().unwrap_or_default();
    let exec = ExecPlan {
        argv: ns::CArray::new(cs(&l.argv)?),
        envp: ns::CArray::new(cs(&env)?),
        candidates: cs(&spec::exec_candidates(&name, &path))?,
        name,
        workdir: cpath(Path::new(&l.workdir))?,
        ids,
        setgroups: l.mapping.setgroups,
        stdin_null: !l.interactive,
    };
    let mut binds = Vec::new();
    for (src, target) in &l.binds {
        binds.push(Bind {
            source: cpath(src)?,
            target: init::under(root, target).ok_or_else(|| LaunchError::BadPath(src.clone()))?,
        });
    }
    Ok(InitPlan {
        root: cpath(root)?,
        hostname: l.hostname.as_bytes().to_vec(),
        binds,
        exec,
        sync_fd,
        error_fd,
        tty_socket,
    })
}

/// Starts the container and waits for it. `started` runs once pid 1 exists.
pub fn launch(l: Launch, started: impl FnOnce()) -> Result<Ended, LaunchError> {
    ns::unshare(libc::CLONE_NEWNS).map_err(ns_err("mount"))?;
    ns::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(setup_err("make / private"))?;
    sys::raise_nofile_limit();
    // Before any thread: only our signalfd sees signals from now on.
    ns::block_all_signals();
    // Last out of the mount namespace when this process is killed, so
    // that the FUSE mount's teardown cannot wait on this process's own
    // exit (see NsHolder).
    let holder = ns::NsHolder::spawn().map_err(setup_err("fork the namespace holder"))?;
    debug!("mount namespace ready");
    let (root, session) = match &l.rootfs {
        Rootfs::Stack {
            lowers,
            upper,
            work,
            mountpoint,
            fsname,
        } => (
            mountpoint.clone(),
            Some(mount_stack(lowers, upper, work, mountpoint, fsname)?),
        ),
        Rootfs::Dir(d) => (d.clone(), None),
    };
    debug!("root filesystem ready at {}", root.display());
    let tty_sockets = if l.tty {
        Some(ns::socketpair().map_err(setup_err("create a socket pair"))?)
    } else {
        None
    };
    let (sync_r, sync_w) = process::pipe().map_err(setup_err("create a pipe"))?;
    let (err_r, err_w) = process::pipe().map_err(setup_err("create a pipe"))?;
    let plan = plan(
        &l,
        &root,
        tty_sockets.as_ref().map(|(_, child)| child.as_raw_fd()),
        sync_r.as_raw_fd(),
        err_w.as_raw_fd(),
    )?;
    let sigfd = ns::SignalFd::new(&[
        libc::SIGCHLD,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGWINCH,
    ])
    .map_err(setup_err("create a signalfd"))?;
    ns::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
        .map_err(ns_err("pid, UTS or IPC"))?;
    let child = match ns::fork().map_err(setup_err("fork"))? {
        ns::Fork::Child => init::run(&plan),
        ns::Fork::Parent(pid) => pid,
    };
    drop(plan);
    drop(sync_r);
    drop(err_w);
    let _ = ns::write_all(sync_w.as_raw_fd(), b"g");
    drop(sync_w);
    // The terminal's master side, from pid 1 (None when it failed first).
    let master = match tty_sockets {
        Some((ours, theirs)) => {
            drop(theirs);
            ns::recv_fd(ours.as_raw_fd()).ok().flatten()
        }
        None => None,
    };
    started();
    debug!("pid 1 is {child}");
    let status = supervise(child, &sigfd, master.as_ref(), l.interactive);
    debug!("pid 1 ended: {status:?}");
    let mut msg = String::new();
    let _ = File::from(OwnedFd::from(err_r)).read_to_string(&mut msg);
    if let Some(s) = session {
        // Pid 1's mount namespace is gone with its last process; this is
        // the only mount left.
        let _ = s.umount_and_join();
        debug!("unmounted");
    }
    holder.release();
    let code = spec::exit_code(status);
    let message = msg
        .lines()
        .next()
        .and_then(|l| l.split_once(' '))
        .filter(|(c, _)| c.parse::<i32>().ok() == Some(code))
        .map(|(_, m)| m.to_string());
    Ok(Ended { code, message })
}

/// Saved terminal state, restored on drop.
struct RawTerminal {
    fd: RawFd,
    saved: ns::Termios,
}

impl RawTerminal {
    fn enter(fd: RawFd) -> Option<RawTerminal> {
        let saved = ns::tcgetattr(fd).ok()?;
        ns::tcsetattr(fd, &saved.raw()).ok()?;
        Some(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = ns::tcsetattr(self.fd, &self.saved);
    }
}

/// Forwards signals and relays the terminal until pid 1 ends.
fn supervise(
    child: libc::pid_t,
    sigfd: &ns::SignalFd,
    master: Option<&OwnedFd>,
    interactive: bool,
) -> ns::WaitStatus {
    let stdin_tty = ns::isatty(0);
    let mut relay_in = master.is_some() && interactive;
    let mut relay_out = master.is_some();
    let _raw = match master {
        Some(m) => {
            let _ = ns::copy_winsize(if stdin_tty { 0 } else { 1 }, m.as_raw_fd());
            let _ = ns::set_nonblocking(m.as_raw_fd(), true);
            if relay_in && stdin_tty {
                RawTerminal::enter(0)
            } else {
                None
            }
        }
        None => None,
    };
    let mut buf = vec![0u8; 16 * 1024];
    let status = loop {
        let mut fds = vec![ns::PollFd {
            fd: sigfd.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let (Some(m), true) = (master, relay_out) {
            fds.push(ns::PollFd {
                fd: m.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if relay_in {
            fds.push(ns::PollFd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if ns::poll(&mut fds, -1).is_err() {
            // Nothing sensible to do but wait for pid 1 directly.
            break ns::wait_blocking(child).unwrap_or(ns::WaitStatus::Exited(EXIT_RUNNER));
        }
        let mut ended = None;
        while let Some(sig) = sigfd.read() {
            match sig {
                libc::SIGCHLD => {
                    if let Ok(Some((_, s))) = ns::wait_nohang(child) {
                        ended = Some(s);
                    }
                }
                libc::SIGWINCH => {
                    if let Some(m) = master {
                        let _ = ns::copy_winsize(if stdin_tty { 0 } else { 1 }, m.as_raw_fd());
                    }
                }
                s => {
                    let _ = ns::kill(child, s);
                }
            }
        }
        for p in &fds[1..] {
            if p.revents == 0 {
                continue;
            }
            if master.is_some_and(|m| m.as_raw_fd() == p.fd) {
                match ns::read(p.fd, &mut buf) {
                    Ok(0) => relay_out = false,
                    Ok(n) => {
                        if ns::write_all(1, &buf[..n]).is_err() {
                            relay_out = false;
                        }
                    }
                    Err(e) if e.0 == libc::EAGAIN || e.0 == libc::EINTR => {}
                    Err(_) => relay_out = false,
                }
            } else if p.fd == 0 {
                match ns::read(0, &mut buf) {
                    Ok(0) => relay_in = false,
                    Ok(n) => {
                        if let Some(m) = master
                            && ns::write_all(m.as_raw_fd(), &buf[..n]).is_err()
                        {
                            relay_in = false;
                        }
                    }
                    Err(e) if e.0 == libc::EAGAIN || e.0 == libc::EINTR => {}
                    Err(_) => relay_in = false,
                }
            }
        }
        if let Some(s) = ended {
            break s;
        }
    };
    // Whatever the command wrote last.
    if let (Some(m), true) = (master, relay_out) {
        while let Ok(n) = ns::read(m.as_raw_fd(), &mut buf) {
            if n == 0 || ns::write_all(1, &buf[..n]).is_err() {
                break;
            }
        }
    }
    status
}
