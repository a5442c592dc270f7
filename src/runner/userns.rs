//! Entering a user namespace in which the calling user is root.
//!
//! Owns the id mapping: container root is the calling user; with an entry in
//! /etc/subuid and /etc/subgid and the setuid helpers newuidmap/newgidmap,
//! ids 1..=N map to that subordinate range as well. Without them, only root
//! is mapped (and setgroups is denied, as the kernel requires).
//!
//! Invariant: [`enter`] is called while the process is single-threaded (the
//! kernel refuses `CLONE_NEWUSER` otherwise), before any other namespace.

use std::fmt;
use std::process::{Command, Stdio};

use crate::sys::ns;
use crate::sys::process::{self, Forked};

/// Why the user namespace could not be set up.
#[derive(Debug)]
pub enum UsernsError {
    Unshare(crate::sys::Errno),
    Helper(String),
    WriteMap {
        path: &'static str,
        cause: std::io::Error,
    },
}

impl fmt::Display for UsernsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsernsError::Unshare(e) => write!(
                f,
                "cannot create a user namespace: {e} (are unprivileged user namespaces \
                 enabled? see /proc/sys/user/max_user_namespaces and \
                 /proc/sys/kernel/apparmor_restrict_unprivileged_userns)"
            ),
            UsernsError::Helper(e) => write!(f, "cannot start the id-mapping helper: {e}"),
            UsernsError::WriteMap { path, cause } => {
                write!(f, "cannot write {path} for the user namespace: {cause}")
            }
        }
    }
}

impl std::error::Error for UsernsError {}

/// A subordinate id range from /etc/subuid or /etc/subgid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// The first range of `user` (by name or numeric id) in the contents of
/// /etc/subuid or /etc/subgid.
pub fn parse_subids(contents: &str, name: &str, id: u32) -> Option<SubRange> {
    contents.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != name && who.parse::<u32>().ok() != Some(id) {
            return None;
        }
        let r = SubRange {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

/// How ids are mapped in the namespace we are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Ids 0..ids are mapped (1: root only).
    pub ids: u32,
    /// Whether setgroups(2) is allowed.
    pub setgroups: bool,
}

/// The mapping when no user namespace is created (running as root).
pub const HOST: Mapping = Mapping {
    ids: u32::MAX,
    setgroups: true,
};

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    })
}

fn helper_available(name: &str) -> Option<String> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists())
}

/// Unshares the user namespace and maps ids. As root, does nothing and
/// returns [`HOST`] (see the README: container root is host root).
pub fn enter() -> Result<Mapping, UsernsError> {
    let (uid, gid) = ns::getuid_gid();
    if uid == 0 {
        return Ok(HOST);
    }
    let name = user_name(uid).unwrap_or_default();
    let sub = |path: &str, id| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|c| parse_subids(&c, &name, id))
    };
    let ranges = match (
        sub("/etc/subuid", uid),
        sub("/etc/subgid", gid),
        helper_available("newuidmap"),
        helper_available("newgidmap"),
    ) {
        (Some(u), Some(g), Some(nu), Some(ng)) => Some((u, g, nu, ng)),
        _ => None,
    };
    let Some((su, sg, newuidmap, newgidmap)) = ranges else {
        ns::unshare(libc::CLONE_NEWUSER).map_err(UsernsError::Unshare)?;
        write_own_maps(uid, gid, true, true)?;
        return Ok(Mapping {
            ids: 1,
            setgroups: false,
        });
    };
    // The helpers must run outside the namespace: fork one that waits until
    // we have unshared, then maps us.
    let pid = ns::getpid();
    let (r, w) = process::pipe().map_err(|e| UsernsError::Helper(format!("pipe: {e}")))?;
    let helper = match process::fork().map_err(|e| UsernsError::Helper(format!("fork: {e}")))? {
        Forked::Child => {
            drop(w);
            let mut b = [0u8; 1];
            let go = ns::read(std::os::fd::AsRawFd::as_raw_fd(&r), &mut b) == Ok(1);
            if !go {
                ns::exit_now(2);
            }
            let run = |prog: &str, id: u32, r: SubRange| {
                Command::new(prog)
                    .args([
                        pid.to_string(),
                        "0".into(),
                        id.to_string(),
                        "1".into(),
                        "1".into(),
                        r.start.to_string(),
                        r.count.to_string(),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let code = if !run(&newuidmap, uid, su) {
                1
            } else if !run(&newgidmap, gid, sg) {
                3
            } else {
                0
            };
            ns::exit_now(code);
        }
        Forked::Parent { child } => child,
    };
    drop(r);
    let unshared = ns::unshare(libc::CLONE_NEWUSER);
    if unshared.is_ok() {
        let _ = ns::write_all(std::os::fd::AsRawFd::as_raw_fd(&w), b"g");
    }
    drop(w);
    let status = process::waitpid(helper).unwrap_or(-1);
    unshared.map_err(UsernsError::Unshare)?;
    match ns::WaitStatus::from_raw(status) {
        Some(ns::WaitStatus::Exited(0)) => Ok(Mapping {
            ids: su.count.min(sg.count).saturating_add(1),
            setgroups: true,
        }),
        Some(ns::WaitStatus::Exited(3)) => {
            // uid_map written, gid_map not: map root's group ourselves.
            write_own_maps(uid, gid, false, true)?;
            Ok(Mapping {
                ids: 1,
                setgroups: false,
            })
        }
        _ => {
            write_own_maps(uid, gid, true, true)?;
            Ok(Mapping {
                ids: 1,
                setgroups: false,
            })
        }
    }
}

fn write_own_maps(uid: u32, gid: u32, users: bool, groups: bool) -> Result<(), UsernsError> {
    let w = |path: &'static str, s: String| {
        std::fs::write(path, s).map_err(|cause| UsernsError::WriteMap { path, cause })
    };
    if users {
        w("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    }
    if groups {
        w("/proc/self/setgroups", "deny\n".into())?;
        w("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_parsing() {
        let c = "# comment\nalice:100000:65536\n1001:200000:1000\nbob:300000:0\nbad\n";
        let r = |start, count| Some(SubRange { start, count });
        assert_eq!(parse_subids(c, "alice", 1000), r(100000, 65536));
        assert_eq!(parse_subids(c, "tester", 1001), r(200000, 1000));
        assert_eq!(parse_subids(c, "bob", 1002), None);
        assert_eq!(parse_subids(c, "carol", 1003), None);
        assert_eq!(parse_subids("", "alice", 1000), None);
    }
}
