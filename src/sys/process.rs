//! Process-level calls: going to the background, signals, unmounting.
//!
//! The mount command forks its daemon before it starts any thread (fork of
//! a threaded process copies only the caller), so these helpers are used
//! from a single-threaded context unless their doc says otherwise.

use std::ffi::CStr;
use std::fs::File;
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

/// A close-on-exec pipe: (read end, write end).
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

/// The caller's stdin, stdout and stderr, kept aside while fds 0-2 point to
/// /dev/null. A mount command swaps /dev/null in just before it forks the
/// daemon and puts the originals back in the parent: the daemon never holds
/// the caller's terminal or pipes, so a caller that reads the command's
/// output to EOF is done when the command exits, not when the daemon next
/// gets a CPU. Dropping it (the daemon's side) closes the kept copies.
#[derive(Debug)]
pub struct SavedStdio([Option<OwnedFd>; 3]);

impl SavedStdio {
    /// Points fds 0-2 to /dev/null, keeping close-on-exec copies of the
    /// originals (`None` for one that was not open).
    pub fn swap_in_null() -> SysResult<SavedStdio> {
        // SAFETY: the literal is a valid C string.
        let null =
            check(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
        // SAFETY: `null` is fresh and owned here.
        let null = unsafe { OwnedFd::from_raw_fd(null) };
        let mut saved: [Option<OwnedFd>; 3] = [None, None, None];
        for (fd, slot) in saved.iter_mut().enumerate() {
            let fd = fd as i32;
            // SAFETY: F_DUPFD_CLOEXEC takes no pointer; EBADF (not open)
            // leaves the slot empty.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
            if copy >= 0 {
                // SAFETY: `copy` is fresh and owned here.
                *slot = Some(unsafe { OwnedFd::from_raw_fd(copy) });
            }
            // SAFETY: both fds are valid; dup2 replaces `fd` atomically.
            check(unsafe { libc::dup2(null.as_raw_fd(), fd) })?;
        }
        Ok(SavedStdio(saved))
    }

    /// Puts the originals back on fds 0-2 (closing one that was not open).
    pub fn restore(self) {
        for (fd, slot) in self.0.iter().enumerate() {
            let fd = fd as i32;
            // SAFETY: `fd` is one of ours; a kept copy is valid.
            unsafe {
                match slot {
                    Some(copy) => libc::dup2(copy.as_raw_fd(), fd),
                    None => libc::close(fd),
                };
            }
        }
    }
}

/// Leaves the caller's session and working directory: `setsid`, `chdir /`.
/// (The stdio part of detaching is [`SavedStdio`].) Slow under load with
/// autogroup scheduling (the process moves to a new task group), so the
/// daemon calls it after its parent has returned.
pub fn new_session() {
    // SAFETY: plain syscalls without pointers, except the literal path.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
    }
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

/// Ends the process at once with `code`: closes every descriptor above
/// stdio first (so that what they hold, such as the layer directories of a
/// mount, is let go before the address space is torn down), then `_exit`,
/// which runs no destructors, atexit handlers or buffered flushes. Safe to
/// call from any thread, also from several at once.
pub fn exit_closing_fds(code: i32) -> ! {
    // SAFETY: close_range takes no pointers; a failure leaves the
    // descriptors to _exit, which closes them too.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::_exit(code)
    }
}
