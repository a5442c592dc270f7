//! The layer stack: opening each layer directory once, numbering the
//! filesystems they live on, and checking that the mountpoint and the layers
//! do not contain each other.
//!
//! Invariants: layer 0 is the top; the upper layer, when there is one, is
//! layer 0. Every later access is relative to a layer's root fd, never to its
//! path, so renaming a layer directory while mounted does not redirect us.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::types::{InoScheme, LayerIdx};
use crate::sys::{self, Errno};

/// What a layer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The writable layer that receives every change.
    Upper,
    /// A read-only layer.
    Lower,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Upper => "upper directory",
            Role::Lower => "lower directory",
        })
    }
}

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub path: PathBuf,
    pub role: Role,
    pub root: Arc<OwnedFd>,
    /// Index of the filesystem it lives on (0..fs_count), for inode mapping.
    pub fs: usize,
    pub dev: u64,
}

/// Why a stack could not be assembled.
#[derive(Debug)]
pub enum StackError {
    NoLayers,
    Open {
        role: Role,
        path: PathBuf,
        cause: Errno,
    },
    WorkDir {
        path: PathBuf,
        cause: Errno,
    },
    TooManyLayers(usize),
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackError::NoLayers => write!(f, "no lower directory given (lowerdir= or --layer)"),
            StackError::Open { role, path, cause } => {
                write!(f, "cannot open {role} {}: {cause}", path.display())
            }
            StackError::WorkDir { path, cause } => {
                write!(f, "cannot use work directory {}: {cause}", path.display())
            }
            StackError::TooManyLayers(n) => write!(f, "too many layers ({n}, at most 65000)"),
        }
    }
}

impl std::error::Error for StackError {}

/// The layers of one mount, top first.
#[derive(Debug)]
pub struct Stack {
    pub layers: Vec<Layer>,
    pub work: Option<Arc<OwnedFd>>,
    pub inos: InoScheme,
}

impl Stack {
    /// Opens `lowers` (top first) and, for a writable mount, `upper` and its
    /// work directory.
    pub fn open(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Result<Stack, StackError> {
        if lowers.is_empty() {
            return Err(StackError::NoLayers);
        }
        if lowers.len() + 1 > 65000 {
            return Err(StackError::TooManyLayers(lowers.len()));
        }
        let mut layers = Vec::with_capacity(lowers.len() + 1);
        let mut devs: Vec<u64> = Vec::new();
        let mut work = None;
        let mut add = |path: &Path, role: Role| -> Result<(), StackError> {
            let err = |cause| StackError::Open {
                role,
                path: path.to_path_buf(),
                cause,
            };
            let fd = sys::open_dir_path(path).map_err(err)?;
            let st = sys::fstat(fd.as_fd()).map_err(err)?;
            // O_PATH opens need no permission; check that we can list it.
            sys::faccessat(fd.as_fd(), c".", libc::R_OK | libc::X_OK).map_err(err)?;
            let fs = match devs.iter().position(|&d| d == st.dev) {
                Some(i) => i,
                None => {
                    devs.push(st.dev);
                    devs.len() - 1
                }
            };
            layers.push(Layer {
                path: path.to_path_buf(),
                role,
                root: Arc::new(fd),
                fs,
                dev: st.dev,
            });
            Ok(())
        };
        if let Some((upper, _)) = upper {
            add(upper, Role::Upper)?;
        }
        for l in lowers {
            add(l, Role::Lower)?;
        }
        if let Some((_, workdir)) = upper {
            let fd = sys::open_dir_path(workdir).map_err(|cause| StackError::WorkDir {
                path: workdir.to_path_buf(),
                cause,
            })?;
            work = Some(Arc::new(fd));
        }
        let inos = InoScheme::for_fs_count(devs.len());
        Ok(Stack { layers, work, inos })
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn layer(&self, idx: LayerIdx) -> Option<&Layer> {
        self.layers.get(idx.0 as usize)
    }

    /// True when layer 0 is a writable upper layer.
    pub fn writable(&self) -> bool {
        self.layers.first().map(|l| l.role) == Some(Role::Upper)
    }

    /// Every layer index, top first.
    pub fn all(&self) -> Vec<LayerIdx> {
        (0..self.layers.len() as u16).map(LayerIdx).collect()
    }
}

/// Makes `p` absolute and lexically normal (no `.`/`..`), without touching the
/// filesystem beyond the current directory.
pub fn absolute(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    };
    let mut out = PathBuf::from("/");
    for c in base.join(p).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// True if `inner` is `outer` or lies inside it (both absolute and normal).
pub fn contains(outer: &Path, inner: &Path) -> bool {
    inner.starts_with(outer)
}

/// A mountpoint that would make the stack see itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Overlap {
    pub mountpoint: PathBuf,
    pub dir: PathBuf,
    pub what: &'static str,
    pub mountpoint_inside: bool,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mountpoint_inside {
            write!(
                f,
                "mountpoint {} is inside the {} {}: the mount would contain itself",
                self.mountpoint.display(),
                self.what,
                self.dir.display()
            )
        } else {
            write!(
                f,
                "the {} {} is inside mountpoint {}: the mount would hide its own layer",
                self.what,
                self.dir.display(),
                self.mountpoint.display()
            )
        }
    }
}

/// Checks that the mountpoint is neither equal to nor inside any directory of
/// the stack, and that no directory of the stack is inside the mountpoint.
/// Paths should be canonical (symlinks resolved) for the check to be exact.
pub fn check_overlap(mountpoint: &Path, dirs: &[(&'static str, &Path)]) -> Result<(), Overlap> {
    for (what, dir) in dirs {
        if contains(dir, mountpoint) {
            return Err(Overlap {
                mountpoint: mountpoint.to_path_buf(),
                dir: dir.to_path_buf(),
                what,
                mountpoint_inside: true,
            });
        }
        if contains(mountpoint, dir) {
            return Err(Overlap {
                mountpoint: mountpoint.to_path_buf(),
                dir: dir.to_path_buf(),
                what,
                mountpoint_inside: false,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_table() {
        let p = Path::new;
        let cases: &[(&str, &str, Option<bool>)] = &[
            ("/mnt", "/layers/a", None),
            ("/layers/a", "/layers/a", Some(true)),
            ("/layers/a/m", "/layers/a", Some(true)),
            ("/mnt", "/mnt/a", Some(false)),
            ("/layers/ab", "/layers/a", None),
            ("/layers/a", "/layers/ab", None),
        ];
        for (mnt, dir, want) in cases {
            let got = check_overlap(p(mnt), &[("lower directory", p(dir))])
                .err()
                .map(|o| o.mountpoint_inside);
            assert_eq!(got, *want, "{mnt} vs {dir}");
        }
    }

    #[test]
    fn absolute_normalises() {
        assert_eq!(absolute(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert!(absolute(Path::new("x")).is_absolute());
    }
}
