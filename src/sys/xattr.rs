//! Extended attributes of a name relative to a directory fd.
//!
//! Layer objects are reached as (directory `O_PATH` fd, name). The classic
//! way to reach their attributes without following a symlink is the l*xattr
//! call on `/proc/self/fd/N/NAME`, which costs a walk through procfs on every
//! call. Linux 6.13 added the `*xattrat` calls, which take the pair directly;
//! these wrappers use them and fall back to the /proc path (remembered
//! process-wide) where the kernel does not have them.
//!
//! Invariants: symlinks are never followed; an empty name means the object
//! the fd itself refers to (always through /proc, where `*xattrat` would
//! refuse an `O_PATH` fd).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Errno, SysResult, check, proc_fd_path, xattr_buf};

// The *xattrat calls have one number on every architecture (Linux 6.13);
// the libc crate does not name them yet.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` of the uapi headers.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// True for an error from reading an xattr that means "not there" as the
/// mount reads it: missing (ENODATA), unsupported (EOPNOTSUPP, which is
/// ENOTSUP on Linux), or not readable (trusted.* without privileges:
/// EPERM/EACCES).
pub fn xattr_absent(e: Errno) -> bool {
    e == Errno::ENODATA || e == Errno::EOPNOTSUPP || e == Errno::EPERM || e == Errno::EACCES
}

/// Set once a `*xattrat` call answered ENOSYS.
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// The /proc path that the l*xattr calls use for (`dirfd`, `name`). For an
/// empty name it ends in `/.` when `dirfd` is a directory: the bare
/// `/proc/self/fd/N` is a magic link that l*xattr would not follow.
fn proc_path(dirfd: BorrowedFd<'_>, name: &CStr) -> std::ffi::CString {
    let name =
        if name.is_empty() && super::fstat(dirfd).is_ok_and(|s| s.kind() == super::FileKind::Dir) {
            c"."
        } else {
            name
        };
    proc_fd_path(dirfd, Some(name))
}

/// Runs `at` unless the kernel is known to lack the `*xattrat` calls (or the
/// name is empty); otherwise, or on ENOSYS, `proc` on the /proc path.
///
/// A seccomp filter that does not know the calls may answer EPERM instead
/// of ENOSYS (older container profiles do): EPERM is retried through /proc,
/// and if that works the `*xattrat` calls are not used again.
fn with_at<T>(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    at: impl FnOnce() -> SysResult<T>,
    proc: impl FnOnce(&CStr) -> SysResult<T>,
) -> SysResult<T> {
    if !name.is_empty() && !NO_XATTRAT.load(Ordering::Relaxed) {
        match at() {
            Err(Errno::ENOSYS) => NO_XATTRAT.store(true, Ordering::Relaxed),
            Err(Errno::EPERM) => {
                let r = proc(&proc_path(dirfd, name));
                if r.is_ok() {
                    NO_XATTRAT.store(true, Ordering::Relaxed);
                }
                return r;
            }
            r => return r,
        }
    }
    proc(&proc_path(dirfd, name))
}

/// The value of attribute `attr` of `name` in `dirfd`.
pub fn getxattr_at(dirfd: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> SysResult<Vec<u8>> {
    let raw = dirfd.as_raw_fd();
    with_at(
        dirfd,
        name,
        || {
            xattr_buf(|p, n| {
                let mut args = XattrArgs {
                    value: p as u64,
                    size: n as u32,
                    flags: 0,
                };
                // SAFETY: valid fd and C strings; `args` describes a buffer
                // that `xattr_buf` owns (or a null probe of size 0).
                unsafe {
                    libc::syscall(
                        SYS_GETXATTRAT,
                        raw,
                        name.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                        attr.as_ptr(),
                        &mut args as *mut XattrArgs,
                        std::mem::size_of::<XattrArgs>(),
                    ) as libc::ssize_t
                }
            })
        },
        |path| super::lgetxattr(path, attr),
    )
}

/// The attribute names of `name` in `dirfd`, NUL-separated.
pub fn listxattr_at(dirfd: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let raw = dirfd.as_raw_fd();
    with_at(
        dirfd,
        name,
        || {
            // SAFETY: valid fd and C string; the buffer pointer/length come
            // from read_grow.
            xattr_buf(|p, n| unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    raw,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    p,
                    n,
                ) as libc::ssize_t
            })
        },
        super::llistxattr,
    )
}

/// Sets attribute `attr` of `name` in `dirfd` (`flags`: XATTR_CREATE/REPLACE).
pub fn setxattr_at(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    value: &[u8],
    flags: i32,
) -> SysResult<()> {
    let raw = dirfd.as_raw_fd();
    with_at(
        dirfd,
        name,
        || {
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len() as u32,
                flags: flags as u32,
            };
            // SAFETY: valid fd and C strings; `args` describes `value`.
            check(unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    raw,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    attr.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                ) as libc::c_int
            })
            .map(drop)
        },
        |path| super::lsetxattr(path, attr, value, flags),
    )
}

/// Removes attribute `attr` of `name` in `dirfd`.
pub fn removexattr_at(dirfd: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> SysResult<()> {
    let raw = dirfd.as_raw_fd();
    with_at(
        dirfd,
        name,
        || {
            // SAFETY: valid fd and C strings.
            check(unsafe {
                libc::syscall(
                    SYS_REMOVEXATTRAT,
                    raw,
                    name.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    attr.as_ptr(),
                ) as libc::c_int
            })
            .map(drop)
        },
        |path| super::lremovexattr(path, attr),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    fn dir() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let fd = super::super::open_dir_path(t.path()).unwrap();
        (t, fd)
    }

    #[test]
    fn xattr_absent_errnos() {
        // ENOTSUP and EOPNOTSUPP are one number on Linux.
        assert!(xattr_absent(Errno(libc::ENOTSUP)));
        for e in [Errno::ENODATA, Errno::EPERM, Errno::EACCES] {
            assert!(xattr_absent(e));
        }
        for e in [Errno::ENOENT, Errno::EIO, Errno::ERANGE] {
            assert!(!xattr_absent(e));
        }
    }

    #[test]
    fn at_calls_match_the_proc_path_calls() {
        let (t, d) = dir();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        let fd = d.as_fd();
        let big = vec![7u8; 1000];
        for (attr, value) in [(c"user.a", &b"1"[..]), (c"user.big", &big[..])] {
            setxattr_at(fd, c"f", attr, value, 0).unwrap();
            assert_eq!(getxattr_at(fd, c"f", attr).unwrap(), value);
            let path = proc_fd_path(fd, Some(c"f"));
            assert_eq!(super::super::lgetxattr(&path, attr).unwrap(), value);
        }
        let list = listxattr_at(fd, c"f").unwrap();
        let mut names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
        names.sort();
        assert_eq!(names, [&b"user.a"[..], b"user.big"]);
        removexattr_at(fd, c"f", c"user.a").unwrap();
        assert_eq!(getxattr_at(fd, c"f", c"user.a"), Err(Errno::ENODATA));
        assert_eq!(getxattr_at(fd, c"missing", c"user.a"), Err(Errno::ENOENT));
        // Not followed: user.* attributes are not allowed on symlinks.
        assert_eq!(setxattr_at(fd, c"l", c"user.a", b"1", 0), Err(Errno::EPERM));
        // An empty name is the directory itself.
        setxattr_at(fd, c"", c"user.d", b"d", 0).unwrap();
        assert_eq!(getxattr_at(fd, c".", c"user.d").unwrap(), b"d");
        assert_eq!(getxattr_at(fd, c"", c"user.d").unwrap(), b"d");
    }
}
