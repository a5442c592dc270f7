//! Process-level calls: going to the background, signals, unmounting.
//!
//! The daemon forks before it starts any thread (fork of a threaded process
//! copies only the caller), so these helpers are used from a single-threaded
//! context unless their doc says otherwise.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Errno, SysResult, check};

/// Which side of a `fork` we are on.
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// `fork()`. Call only while single-threaded.
pub fn fork() -> SysResult<Forked> {
    // SAFETY: the caller is single-threaded, so the child is a full copy.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// A pipe whose write end reports one status byte from the daemon to the
/// parent that waits for the mount to go live.
pub fn pipe() -> SysResult<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are fresh and owned here.
    unsafe {
        Ok((
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        ))
    }
}

/// Reads the daemon's report: `Ok(())` once mounted, or its error message.
pub fn wait_ready(mut r: File) -> Result<(), String> {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    match s.strip_prefix("ok") {
        Some(_) => Ok(()),
        None if s.is_empty() => Err("the daemon exited before the mount was live".into()),
        None => Err(s),
    }
}

/// Sends the report read by [`wait_ready`].
pub fn report_ready(mut w: File, result: Result<(), &str>) {
    let msg = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let _ = w.write_all(msg.as_bytes());
}

/// Detaches from the terminal: new session, stdio to /dev/null, cwd to `/`.
pub fn detach() -> SysResult<()> {
    // SAFETY: plain syscalls without pointers, except the literal path.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
        libc::chdir(c"/".as_ptr());
    }
    Ok(())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread; threads created
/// afterwards inherit the mask, so only [`wait_termination`] sees them.
pub fn block_termination_signals() {
    let set = termination_set();
    // SAFETY: an initialised set; the old mask is not asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// The set of SIGINT, SIGTERM and SIGHUP.
fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Waits for one of the signals blocked by [`block_termination_signals`].
pub fn wait_termination() -> i32 {
    let set = termination_set();
    let mut sig = 0;
    // SAFETY: an initialised set; `sig` is a valid out pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// `umount2(path, flags)`.
pub fn umount2(path: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(path.as_ptr(), flags) })?;
    Ok(())
}

/// `waitpid(pid, 0)`: the child's exit status or terminating signal.
pub fn waitpid(pid: libc::pid_t) -> SysResult<i32> {
    let mut status = 0;
    loop {
        // SAFETY: valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = Errno::last();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    }
}

/// Closes every fd of ours except stdio and `keep`: a daemon must not hold
/// its parent's pipes open.
pub fn keep_fd(f: &File) -> i32 {
    f.as_raw_fd()
}
