//! System calls of the rootless runner: namespaces, mounts, `pivot_root`,
//! identities, signals, terminals and `execve`, and the process that holds
//! a mount namespace for the runner ([`NsHolder`]).
//!
//! Owns only thin wrappers: each takes C strings or borrowed fds, returns
//! plain values or an [`Errno`], and knows nothing about containers (the
//! order of the start-up sequence lives in `crate::runner`).
//!
//! Invariants: every fd created here is `O_CLOEXEC`; nothing here allocates
//! between `fork` and `execve` except what the caller prepared ([`CArray`]).

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{Errno, SysResult, check};

/// `unshare(flags)` (`CLONE_NEW*`). `CLONE_NEWUSER` and `CLONE_NEWNS` need a
/// single-threaded caller.
pub fn unshare(flags: i32) -> SysResult<()> {
    // SAFETY: plain syscall without pointers.
    check(unsafe { libc::unshare(flags) })?;
    Ok(())
}

/// `mount(source, target, fstype, flags, data)`.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is NULL or a valid C string for the call.
    check(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) })?;
    Ok(())
}

/// Makes the mount at `path` and every mount below it read-only
/// (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`, Linux 5.12).
pub fn make_readonly_recursive(path: &CStr) -> SysResult<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid C string and a pointer to an initialised mount_attr of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The `MS_*` flags a bind remount of `path` must keep (a user namespace may
/// not clear the locked nosuid/nodev/noexec flags of a mount it inherited).
pub fn locked_mount_flags(path: &CStr) -> SysResult<libc::c_ulong> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid C string and out pointer.
    check(unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statvfs succeeded.
    let f = unsafe { st.assume_init() }.f_flag;
    let mut out = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms_flag;
        }
    }
    Ok(out)
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: valid C strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `chroot(path)`.
pub fn chroot(path: &CStr) -> SysResult<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::chroot(path.as_ptr()) })?;
    Ok(())
}

/// `chdir(path)`.
pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

/// `sethostname(name)`.
pub fn sethostname(name: &[u8]) -> SysResult<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// `prctl(PR_SET_PDEATHSIG, sig)`: `sig` arrives when the thread that forked
/// the caller ends.
pub fn set_parent_death_signal(sig: i32) -> SysResult<()> {
    // SAFETY: plain prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// A child process that only keeps the caller's namespaces alive, until
/// [`NsHolder::release`] or the caller's death (its pipe's write end is the
/// caller's only tie to it).
///
/// Why: the last process of a mount namespace unmounts what is in it as
/// part of its exit, after its descriptors were let go but before their
/// release has run. When that process also serves a FUSE mount of the
/// namespace over io_uring and a request was in flight, the unmount waits
/// for the request, whose end needs the ring's release queued behind it:
/// the process never finishes exiting (seen on 6.18 with `kill -9` of a
/// container runner). With the holder last, the server's exit completes
/// first and the holder's unmount finds nothing in flight.
#[derive(Debug)]
pub struct NsHolder {
    pid: libc::pid_t,
    release: Option<OwnedFd>,
}

impl NsHolder {
    /// Forks the holder. Call before any thread starts and before the
    /// descriptors it must not keep open are made (it closes all it
    /// inherits anyway).
    pub fn spawn() -> SysResult<NsHolder> {
        let (read_end, write_end) = super::process::pipe()?;
        match fork()? {
            Fork::Child => {
                let fd = read_end.as_raw_fd();
                // SAFETY: plain system calls on our own descriptors; the
                // child never returns from here.
                unsafe {
                    if fd != 0 {
                        libc::dup2(fd, 0);
                    }
                    libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32);
                    libc::prctl(libc::PR_SET_NAME, c"layerfs-ns".as_ptr(), 0, 0, 0);
                    // Out of the caller's process group: `kill -9 -PGID`
                    // reaches the caller only, and the holder stays last.
                    libc::setsid();
                    let mut b = 0u8;
                    while libc::read(0, (&raw mut b).cast(), 1) < 0
                        && Errno::last().0 == libc::EINTR
                    {}
                    libc::_exit(0)
                }
            }
            Fork::Parent(pid) => {
                drop(read_end);
                Ok(NsHolder {
                    pid,
                    release: Some(OwnedFd::from(write_end)),
                })
            }
        }
    }

    /// Lets the holder exit and reaps it.
    pub fn release(mut self) {
        drop(self.release.take());
        let _ = super::process::waitpid(self.pid);
    }
}

/// Which side of [`fork`] we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// `fork()` (glibc's, which keeps `malloc` usable in the child even when
/// other threads exist). In a threaded process the child must not touch
/// locks other threads may hold (stdio, logging): it should do system
/// calls on prepared data, then `execve` or `_exit`.
pub fn fork() -> SysResult<Fork> {
    // SAFETY: see the contract above; the caller keeps to it.
    match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// `_exit(code)`: ends the process without running destructors or atexit
/// handlers (what a forked child must do).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// `kill(pid, sig)`.
pub fn kill(pid: libc::pid_t, sig: i32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

impl WaitStatus {
    /// Decodes a `waitpid` status; `None` for stopped/continued children.
    pub fn from_raw(status: i32) -> Option<WaitStatus> {
        if libc::WIFEXITED(status) {
            Some(WaitStatus::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(WaitStatus::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
}

/// `waitpid(pid, WNOHANG)` (`pid` -1: any child). `Ok(None)` when no child
/// has ended; `ECHILD` when there are none.
pub fn wait_nohang(pid: libc::pid_t) -> SysResult<Option<(libc::pid_t, WaitStatus)>> {
    loop {
        let mut status = 0;
        // SAFETY: valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        if let Some(s) = WaitStatus::from_raw(status) {
            return Ok(Some((r, s)));
        }
    }
}

/// `waitpid(pid, 0)` until the child has ended.
pub fn wait_blocking(pid: libc::pid_t) -> SysResult<WaitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if let Some(s) = WaitStatus::from_raw(status) {
            return Ok(s);
        }
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks every signal in the calling thread (threads created afterwards
/// inherit the mask).
pub fn block_all_signals() {
    // SAFETY: the set is initialised by sigfillset before use.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Unblocks every signal and puts every disposition back to the default
/// (ignored signals stay ignored across `execve` otherwise; Rust ignores
/// SIGPIPE).
pub fn reset_signals() {
    // SAFETY: plain calls with initialised arguments; invalid numbers (32,
    // 33 used by glibc, KILL, STOP) just fail.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Waits for any signal (they must be blocked); returns its number.
pub fn wait_any_signal() -> i32 {
    // SAFETY: the set is initialised; a NULL siginfo is allowed.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut set);
        loop {
            let s = libc::sigwaitinfo(&set, std::ptr::null_mut());
            if s > 0 {
                return s;
            }
        }
    }
}

/// A `signalfd` for a set of blocked signals, read from a poll loop.
pub struct SignalFd(OwnedFd);

impl SignalFd {
    pub fn new(signals: &[i32]) -> SysResult<SignalFd> {
        let set = sigset(signals);
        // SAFETY: valid set pointer; the result is checked.
        let fd =
            check(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        // SAFETY: fresh fd.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The next pending signal, if any.
    pub fn read(&self) -> Option<i32> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is one signalfd_siginfo.
        let n = unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n as usize != size {
            return None;
        }
        // SAFETY: the kernel filled the whole struct.
        Some(unsafe { info.assume_init() }.ssi_signo as i32)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}

/// One `pollfd`.
#[derive(Debug, Clone, Copy)]
pub struct PollFd {
    pub fd: RawFd,
    pub events: i16,
    pub revents: i16,
}

/// `poll(fds, timeout_ms)`; EINTR is reported as 0 ready fds.
pub fn poll(fds: &mut [PollFd], timeout_ms: i32) -> SysResult<usize> {
    let mut raw: Vec<libc::pollfd> = fds
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd,
            events: p.events,
            revents: 0,
        })
        .collect();
    // SAFETY: the pointer and length describe `raw`.
    let r = unsafe { libc::poll(raw.as_mut_ptr(), raw.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = Errno::last();
        return if e.0 == libc::EINTR { Ok(0) } else { Err(e) };
    }
    for (p, r) in fds.iter_mut().zip(&raw) {
        p.revents = r.revents;
    }
    Ok(r as usize)
}

/// A NULL-terminated array of C strings for `execve`, built before `fork`.
pub struct CArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl CArray {
    pub fn new(items: Vec<CString>) -> CArray {
        let mut ptrs: Vec<*const libc::c_char> = items.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        CArray {
            _strings: items,
            ptrs,
        }
    }
}

/// `execve(path, argv, envp)`; returns only on failure.
pub fn execve(path: &CStr, argv: &CArray, envp: &CArray) -> Errno {
    // SAFETY: both arrays are NULL-terminated and their strings outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.ptrs.as_ptr(), envp.ptrs.as_ptr()) };
    Errno::last()
}

/// `close(fd)` of a raw descriptor. Only for a forked child that never
/// returns to code owning `fd` (no destructor will close it again).
pub fn close_fd(fd: RawFd) {
    // SAFETY: the caller owns `fd` by the contract above.
    unsafe { libc::close(fd) };
}

/// `setsid()`.
pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() })?;
    Ok(())
}

/// Makes the terminal `fd` the caller's controlling terminal (`TIOCSCTTY`).
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    Ok(())
}

/// `dup2(fd, target)` (the copy is not close-on-exec).
pub fn dup2(fd: RawFd, target: RawFd) -> SysResult<()> {
    if fd == target {
        // dup2 would keep FD_CLOEXEC; clear it instead.
        // SAFETY: plain fcntl on an fd number.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        return Ok(());
    }
    // SAFETY: plain syscall on fd numbers.
    check(unsafe { libc::dup2(fd, target) })?;
    Ok(())
}

/// Marks every fd from `first` up close-on-exec (`close_range`).
pub fn cloexec_from(first: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) })?;
    Ok(())
}

/// `setgroups(groups)`.
pub fn setgroups(groups: &[u32]) -> SysResult<()> {
    // SAFETY: pointer and length describe `groups`.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    Ok(())
}

/// `setresgid(gid, gid, gid)`.
pub fn setgid(gid: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    Ok(())
}

/// `setresuid(uid, uid, uid)`.
pub fn setuid(uid: u32) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    Ok(())
}

/// The real user and group ids.
pub fn getuid_gid() -> (u32, u32) {
    // SAFETY: cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// The effective user and group ids (what owns the files this process
/// creates).
pub fn getuid_gid_effective() -> (u32, u32) {
    // SAFETY: cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// `isatty(fd)`.
pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: plain call on an fd number.
    unsafe { libc::isatty(fd) == 1 }
}

/// A pseudo-terminal pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a new pseudo-terminal from the multiplexer at `ptmx` (the
/// devpts instance it belongs to holds the pair).
pub fn openpty(ptmx: &CStr) -> SysResult<Pty> {
    // SAFETY: plain calls; every result is checked; the name buffer is sized.
    unsafe {
        let m = check(libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        let master = OwnedFd::from_raw_fd(m);
        check(libc::unlockpt(m))?;
        // TIOCGPTPEER opens the peer through the master itself: right even
        // when the path of the devpts instance is not /dev/pts.
        let s = check(libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        Ok(Pty {
            master,
            slave: OwnedFd::from_raw_fd(s),
        })
    }
}

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets.
pub fn socketpair() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds are fresh.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `fd` over the socket `sock` (`SCM_RIGHTS`, one byte of data).
pub fn send_fd(sock: RawFd, fd: RawFd) -> SysResult<()> {
    // SAFETY: the control buffer is sized with CMSG_SPACE for one fd and
    // filled through the CMSG macros; iov points at a live byte.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Receives one fd sent with [`send_fd`]; `Ok(None)` when the peer closed
/// the socket without sending.
pub fn recv_fd(sock: RawFd) -> SysResult<Option<OwnedFd>> {
    // SAFETY: as in send_fd; the fd is taken only from a SCM_RIGHTS message.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && Errno::last().0 == libc::EINTR {
                continue;
            }
            break n;
        };
        if n < 0 {
            return Err(Errno::last());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n == 0 || cmsg.is_null() {
            return Ok(None);
        }
        if (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// Saved terminal attributes.
#[derive(Clone, Copy)]
pub struct Termios(libc::termios);

/// `tcgetattr(fd)`.
pub fn tcgetattr(fd: RawFd) -> SysResult<Termios> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: valid out pointer.
    check(unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) })?;
    // SAFETY: tcgetattr succeeded.
    Ok(Termios(unsafe { t.assume_init() }))
}

/// `tcsetattr(fd, TCSADRAIN, t)`.
pub fn tcsetattr(fd: RawFd, t: &Termios) -> SysResult<()> {
    // SAFETY: valid pointer to initialised termios.
    check(unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &t.0) })?;
    Ok(())
}

impl Termios {
    /// These attributes in raw mode (`cfmakeraw`).
    pub fn raw(&self) -> Termios {
        let mut t = self.0;
        // SAFETY: valid pointer to an initialised termios.
        unsafe { libc::cfmakeraw(&mut t) };
        Termios(t)
    }
}

/// Copies the window size of terminal `from` to terminal `to`.
pub fn copy_winsize(from: RawFd, to: RawFd) -> SysResult<()> {
    let mut ws = MaybeUninit::<libc::winsize>::uninit();
    // SAFETY: TIOCGWINSZ fills a winsize; TIOCSWINSZ reads one.
    unsafe {
        check(libc::ioctl(from, libc::TIOCGWINSZ, ws.as_mut_ptr()))?;
        check(libc::ioctl(to, libc::TIOCSWINSZ, ws.as_ptr()))?;
    }
    Ok(())
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> SysResult<()> {
    // SAFETY: plain fcntl calls on an fd number.
    unsafe {
        let fl = check(libc::fcntl(fd, libc::F_GETFL))?;
        let fl = if on {
            fl | libc::O_NONBLOCK
        } else {
            fl & !libc::O_NONBLOCK
        };
        check(libc::fcntl(fd, libc::F_SETFL, fl))?;
    }
    Ok(())
}

/// `read(fd, buf)` once; EINTR and EAGAIN are `Err`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: pointer and length describe `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(Errno::last())
    } else {
        Ok(n as usize)
    }
}

/// Writes all of `data` to `fd` (retrying EINTR and short writes; waits
/// with poll on EAGAIN).
pub fn write_all(fd: RawFd, mut data: &[u8]) -> SysResult<()> {
    while !data.is_empty() {
        // SAFETY: pointer and length describe `data`.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = Errno::last();
            match e.0 {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    let mut p = [PollFd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    }];
                    poll(&mut p, -1)?;
                    continue;
                }
                _ => return Err(e),
            }
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Opens `path` inside the tree at `root` as if `root` were `/`
/// (`openat2` with `RESOLVE_IN_ROOT`: `..` and absolute symlinks stay inside).
pub fn open_in_root(root: BorrowedFd<'_>, path: &CStr, flags: i32) -> SysResult<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, C string and open_how of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Sets the process umask; returns the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// The calling process's id.
pub fn getpid() -> libc::pid_t {
    // SAFETY: cannot fail.
    unsafe { libc::getpid() }
}

/// `getrandom` into `buf` (blocking until the pool is ready).
pub fn getrandom(buf: &mut [u8]) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: pointer and length stay inside `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holder lives, under its own name, until released, and is reaped then.
    #[test]
    fn namespace_holder_lives_until_released() {
        let h = NsHolder::spawn().unwrap();
        let pid = h.pid;
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        for _ in 0..200 {
            if comm().trim() == "layerfs-ns" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(comm().trim(), "layerfs-ns");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(!state.contains(") Z"), "holder ended early: {state}");
        h.release();
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn wait_status_decoding() {
        assert_eq!(WaitStatus::from_raw(3 << 8), Some(WaitStatus::Exited(3)));
        assert_eq!(WaitStatus::from_raw(9), Some(WaitStatus::Signaled(9)));
        // Stopped by SIGSTOP.
        assert_eq!(WaitStatus::from_raw((19 << 8) | 0x7f), None);
    }
}
