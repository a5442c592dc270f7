//! The container side: what pid 1 of the new pid namespace does, from the
//! fork in the supervisor to the command's exit.
//!
//! Sequence (see /work/shared/notes/rootless-run.md): own mount namespace,
//! root bound onto itself, /proc (before pivot_root: a user namespace may
//! not mount a fresh procfs once the old root is gone), a minimal /dev,
//! read-only /sys, /etc/{hosts,hostname,resolv.conf} bound from the
//! container directory, hostname, pivot_root (chroot as a fallback), then
//! fork the command and reap every child until it ends.
//!
//! Owns nothing persistent. Invariants: everything the child needs is
//! prepared by the supervisor in an [`InitPlan`] before the fork (the
//! supervisor has threads, so the child only makes system calls and small
//! allocations); every failure is reported as one line on the error pipe
//! with its exit status ([`EXIT_RUNNER`] for setup, 126/127 for exec) and
//! ends the process with `_exit`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::spec::{EXIT_RUNNER, Ids, exec_error_code, exit_code};
use crate::sys::{Errno, ns};

/// Signals pid 1 passes on to the command.
pub const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// How the command is started.
pub struct ExecPlan {
    pub argv: ns::CArray,
    pub envp: ns::CArray,
    /// The command name, for messages.
    pub name: String,
    /// Paths to try in order (the PATH search is done before the fork).
    pub candidates: Vec<CString>,
    pub workdir: CString,
    pub ids: Ids,
    /// Whether setgroups(2) is allowed in this user namespace.
    pub setgroups: bool,
    /// Give the command /dev/null as stdin (no `-i`).
    pub stdin_null: bool,
}

/// A file bound over a path of the container.
pub struct Bind {
    pub source: CString,
    pub target: CString,
}

/// Everything pid 1 does, prepared before the fork.
pub struct InitPlan {
    /// The root filesystem as seen from the supervisor.
    pub root: CString,
    pub hostname: Vec<u8>,
    /// Mount targets are skipped when missing (a `--rootfs` may lack them).
    pub binds: Vec<Bind>,
    pub exec: ExecPlan,
    /// Read end: the supervisor writes one byte once it is ready.
    pub sync_fd: RawFd,
    /// Write end: one line "CODE message" on failure.
    pub error_fd: RawFd,
    /// With a terminal: the socket on which the master side goes to the
    /// supervisor.
    pub tty_socket: Option<RawFd>,
}

/// Builds `root/rel` as a C string.
pub fn under(root: &Path, rel: &str) -> Option<CString> {
    let mut b = root.as_os_str().as_bytes().to_vec();
    if !rel.is_empty() {
        b.push(b'/');
        b.extend_from_slice(rel.trim_start_matches('/').as_bytes());
    }
    CString::new(b).ok()
}

fn fail(plan: &InitPlan, code: i32, msg: &str) -> ! {
    let line = format!("{code} {msg}\n");
    let _ = ns::write_all(plan.error_fd, line.as_bytes());
    ns::exit_now(code)
}

fn path_text(c: &CStr) -> String {
    String::from_utf8_lossy(c.to_bytes()).into_owned()
}

/// Runs pid 1; never returns.
pub fn run(plan: &InitPlan) -> ! {
    // Die with the supervisor; then wait until it is ready (EOF: it died
    // before the death signal was armed).
    let _ = ns::set_parent_death_signal(libc::SIGKILL);
    let mut b = [0u8; 1];
    if ns::read(plan.sync_fd, &mut b) != Ok(1) {
        ns::exit_now(EXIT_RUNNER);
    }
    if let Err((what, e)) = setup_root(plan) {
        fail(plan, EXIT_RUNNER, &format!("{what}: {e}"));
    }
    // Leave the terminal's foreground group: signals come through us.
    let _ = ns::setsid();
    let slave = plan.tty_socket.map(|sock| open_terminal(plan, sock));
    let cmd = match ns::fork() {
        Ok(ns::Fork::Child) => exec_command(plan, slave),
        Ok(ns::Fork::Parent(pid)) => pid,
        Err(e) => fail(plan, EXIT_RUNNER, &format!("cannot fork the command: {e}")),
    };
    if let Some(t) = slave {
        ns::close_fd(t);
    }
    loop {
        let sig = ns::wait_any_signal();
        if sig == libc::SIGCHLD {
            while let Ok(Some((pid, status))) = ns::wait_nohang(-1) {
                if pid == cmd {
                    ns::exit_now(exit_code(status));
                }
            }
        } else if FORWARDED.contains(&sig) {
            let _ = ns::kill(cmd, sig);
        }
    }
}

/// Opens a terminal in the container's devpts, sends the master to the
/// supervisor, returns the slave.
fn open_terminal(plan: &InitPlan, sock: RawFd) -> RawFd {
    let pty = match ns::openpty(c"/dev/pts/ptmx").or_else(|_| ns::openpty(c"/dev/ptmx")) {
        Ok(p) => p,
        Err(e) => fail(plan, EXIT_RUNNER, &format!("cannot open a terminal: {e}")),
    };
    if let Err(e) = ns::send_fd(sock, pty.master.as_raw_fd()) {
        fail(
            plan,
            EXIT_RUNNER,
            &format!("cannot pass the terminal on: {e}"),
        );
    }
    ns::close_fd(sock);
    // Kept open (never dropped): the command needs it.
    let slave = pty.slave.as_raw_fd();
    std::mem::forget(pty.slave);
    slave
}

type Step = (String, Errno);

fn step<T>(what: impl FnOnce() -> String, r: Result<T, Errno>) -> Result<T, Step> {
    r.map_err(|e| (what(), e))
}

fn exists(c: &CStr) -> bool {
    Path::new(std::ffi::OsStr::from_bytes(c.to_bytes()))
        .symlink_metadata()
        .is_ok()
}

fn setup_root(plan: &InitPlan) -> Result<(), Step> {
    let root = &plan.root;
    let rootp = Path::new(std::ffi::OsStr::from_bytes(root.to_bytes()));
    let sub = |rel: &str| under(rootp, rel).ok_or_else(|| (rel.to_string(), Errno::EINVAL));
    step(
        || "cannot create a mount namespace".into(),
        ns::unshare(libc::CLONE_NEWNS),
    )?;
    step(
        || "cannot make / private".into(),
        ns::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None),
    )?;
    step(
        || format!("cannot bind {} onto itself", path_text(root)),
        ns::mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None),
    )?;
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let proc_ = sub("proc")?;
    if exists(&proc_) {
        step(
            || "cannot mount /proc".into(),
            ns::mount(
                Some(c"proc"),
                &proc_,
                Some(c"proc"),
                nosuid_nodev_noexec,
                None,
            ),
        )?;
    }
    let dev = sub("dev")?;
    if exists(&dev) {
        setup_dev(&dev)?;
    }
    let sys = sub("sys")?;
    if exists(&sys) {
        step(
            || "cannot bind /sys".into(),
            ns::mount(
                Some(c"/sys"),
                &sys,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
        )?;
        if ns::make_readonly_recursive(&sys).is_err() {
            let keep = ns::locked_mount_flags(&sys).unwrap_or(nosuid_nodev_noexec);
            step(
                || "cannot make /sys read-only".into(),
                ns::mount(
                    None,
                    &sys,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep,
                    None,
                ),
            )?;
        }
    }
    for b in &plan.binds {
        if exists(&b.target) {
            step(
                || format!("cannot bind {}", path_text(&b.target)),
                ns::mount(Some(&b.source), &b.target, None, libc::MS_BIND, None),
            )?;
        }
    }
    step(
        || "cannot set the hostname".into(),
        ns::sethostname(&plan.hostname),
    )?;
    step(
        || format!("cannot enter {}", path_text(root)),
        ns::chdir(root),
    )?;
    if ns::pivot_root(c".", c".").is_ok() {
        step(
            || "cannot detach the old root".into(),
            crate::sys::process::umount2(c".", libc::MNT_DETACH),
        )?;
    } else {
        step(|| "cannot chroot".into(), ns::chroot(c"."))?;
    }
    step(|| "cannot enter /".into(), ns::chdir(c"/"))?;
    Ok(())
}

fn setup_dev(dev: &CStr) -> Result<(), Step> {
    let devp = Path::new(std::ffi::OsStr::from_bytes(dev.to_bytes()));
    let c = |rel: &str| under(devp, rel).ok_or_else(|| (rel.to_string(), Errno::EINVAL));
    step(
        || "cannot mount a tmpfs on /dev".into(),
        ns::mount(
            Some(c"tmpfs"),
            dev,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some(c"mode=755,size=65536k"),
        ),
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = devp.join(name);
        step(
            || format!("cannot create /dev/{name}"),
            std::fs::File::create(&target)
                .map(drop)
                .map_err(Errno::from),
        )?;
        let host =
            CString::new(format!("/dev/{name}")).map_err(|_| (name.into(), Errno::EINVAL))?;
        step(
            || format!("cannot bind /dev/{name}"),
            ns::mount(Some(&host), &c(name)?, None, libc::MS_BIND, None),
        )?;
    }
    for d in ["pts", "shm"] {
        step(
            || format!("cannot create /dev/{d}"),
            std::fs::create_dir(devp.join(d)).map_err(Errno::from),
        )?;
    }
    step(
        || "cannot mount /dev/pts".into(),
        ns::mount(
            Some(c"devpts"),
            &c("pts")?,
            Some(c"devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    step(
        || "cannot mount /dev/shm".into(),
        ns::mount(
            Some(c"shm"),
            &c("shm")?,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(c"mode=1777,size=65536k"),
        ),
    )?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step(
            || format!("cannot create /dev/{name}"),
            std::os::unix::fs::symlink(target, devp.join(name)).map_err(Errno::from),
        )?;
    }
    Ok(())
}

/// The command's process: terminal, identity, directory, exec.
fn exec_command(plan: &InitPlan, tty: Option<RawFd>) -> ! {
    let x = &plan.exec;
    ns::reset_signals();
    if let Some(t) = tty {
        let _ = ns::setsid();
        // SAFETY of the borrow: `t` stays open until exec.
        let fd = unsafe { crate::sys::borrow_raw(t) };
        if let Err(e) = ns::set_controlling_tty(fd.as_fd()) {
            fail(
                plan,
                EXIT_RUNNER,
                &format!("cannot attach the terminal: {e}"),
            );
        }
        for target in 0..3 {
            if let Err(e) = ns::dup2(t, target) {
                fail(
                    plan,
                    EXIT_RUNNER,
                    &format!("cannot attach the terminal: {e}"),
                );
            }
        }
    } else if x.stdin_null {
        match std::fs::File::open("/dev/null") {
            Ok(f) => {
                let _ = ns::dup2(f.as_raw_fd(), 0);
            }
            Err(e) => fail(plan, EXIT_RUNNER, &format!("cannot open /dev/null: {e}")),
        }
    }
    if let Err(e) = ns::chdir(&x.workdir) {
        fail(
            plan,
            EXIT_RUNNER,
            &format!(
                "cannot use the working directory {}: {e}",
                path_text(&x.workdir)
            ),
        );
    }
    if x.setgroups
        && let Err(e) = ns::setgroups(&x.ids.groups)
    {
        fail(
            plan,
            EXIT_RUNNER,
            &format!("cannot set the supplementary groups: {e}"),
        );
    }
    let unmapped = |what: &str, id: u32, e: Errno| -> String {
        if e.0 == libc::EINVAL {
            format!(
                "cannot switch to {what} {id}: it is not mapped in the user namespace \
                 (only ids with a range in /etc/subuid and /etc/subgid are)"
            )
        } else {
            format!("cannot switch to {what} {id}: {e}")
        }
    };
    if let Err(e) = ns::setgid(x.ids.gid) {
        fail(plan, EXIT_RUNNER, &unmapped("group", x.ids.gid, e));
    }
    if let Err(e) = ns::setuid(x.ids.uid) {
        fail(plan, EXIT_RUNNER, &unmapped("user", x.ids.uid, e));
    }
    ns::umask(0o022);
    let _ = ns::cloexec_from(3);
    // Like execvp: remember EACCES, keep looking past ENOENT/ENOTDIR.
    let mut err = Errno::ENOENT;
    let mut seen_eacces = false;
    for c in &x.candidates {
        let e = ns::execve(c, &x.argv, &x.envp);
        match e.0 {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => seen_eacces = true,
            _ => {
                err = e;
                break;
            }
        }
    }
    if seen_eacces && matches!(err.0, libc::ENOENT | libc::ENOTDIR) {
        err = Errno::EACCES;
    }
    let code = exec_error_code(err.0);
    let msg = if x.name.contains('/') || code != 127 {
        format!("cannot execute {}: {err}", x.name)
    } else {
        format!("{}: executable file not found in $PATH", x.name)
    };
    fail(plan, code, &msg)
}
