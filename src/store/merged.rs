//! A read-only merged view of a container's upper layer over its image
//! layers, for the parts of a commit that the upper directory alone cannot
//! describe.
//!
//! Owns: opening an [`Overlay`] over `[upper, image layers...]` (all as
//! read-only layers) and answering by path or inode: attributes, listings,
//! contents, symlink targets and the file's own xattrs. Does not own: any
//! union rule (the overlay's, so a commit sees exactly what the container
//! saw) or the tar format (`commit`).
//!
//! Used for two things an OCI layer cannot express:
//! - a directory renamed with `overlay.redirect`: the layer carries it as
//!   an opaque directory with its whole merged contents;
//! - a metadata-only copy (`overlay.metacopy`): the upper file has the
//!   metadata but no data; the data is read from the layer below.
//!
//! Invariants: nothing here writes; every lookup holds an overlay reference
//! that lives as long as the view (the view is dropped after one commit).

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::overlay::{DirItem, Ino, Overlay, Stack, StackError, UpperOptions};
use crate::sys::{self, Errno, Stat};

/// Why the merged view could not be opened.
#[derive(Debug)]
pub enum MergedError {
    Stack(StackError),
    Overlay(Errno),
}

impl fmt::Display for MergedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergedError::Stack(e) => write!(f, "cannot open the layers: {e}"),
            MergedError::Overlay(e) => write!(f, "cannot build the merged view: {e}"),
        }
    }
}

impl std::error::Error for MergedError {}

/// An extended attribute: name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// The merged view of `layers` (top first).
pub struct MergedView {
    ov: Overlay,
}

impl MergedView {
    pub fn open(layers: &[PathBuf]) -> Result<MergedView, MergedError> {
        let stack = Stack::open(layers, None).map_err(MergedError::Stack)?;
        let ov = Overlay::new(stack, UpperOptions::default()).map_err(MergedError::Overlay)?;
        Ok(MergedView { ov })
    }

    /// The object at `rel` (components separated by `/`, no leading one).
    pub fn lookup(&self, rel: &[u8]) -> Result<(Ino, Stat), Errno> {
        let mut found = None;
        for c in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let dir = found.map_or(Ino::ROOT, |(ino, _)| ino);
            let st = self.ov.lookup(dir, c)?;
            found = Some((Ino(st.ino), st));
        }
        match found {
            Some(f) => Ok(f),
            None => Ok((Ino::ROOT, self.ov.getattr(Ino::ROOT)?)),
        }
    }

    /// The name `name` in directory `dir`.
    pub fn child(&self, dir: Ino, name: &[u8]) -> Result<Stat, Errno> {
        self.ov.lookup(dir, name)
    }

    /// The merged listing of directory `dir`, sorted by name bytes.
    pub fn list(&self, dir: Ino) -> Result<Vec<DirItem>, Errno> {
        let mut items: Vec<DirItem> = self
            .ov
            .readdir_listing(dir, 0)?
            .iter()
            .filter(|i| &*i.name != b"." && &*i.name != b"..")
            .cloned()
            .collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(items)
    }

    /// A reader of the contents of file `ino` (for a metadata-only copy,
    /// its data below).
    pub fn reader(&self, ino: Ino) -> Result<File, Errno> {
        let (fh, fd, _) = self.ov.open(ino, libc::O_RDONLY)?;
        self.ov.release(fh);
        // The released handle held the only other reference: take the fd.
        let fd = match std::sync::Arc::try_unwrap(fd) {
            Ok(fd) => fd,
            Err(shared) => shared
                .try_clone()
                .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?,
        };
        Ok(File::from(fd))
    }

    pub fn readlink(&self, ino: Ino) -> Result<PathBuf, Errno> {
        Ok(PathBuf::from(OsStr::from_bytes(&self.ov.readlink(ino)?)))
    }

    /// The file's own xattrs (the overlay's are left out), by name.
    pub fn xattrs(&self, ino: Ino) -> Result<Vec<Xattr>, Errno> {
        let names = match self.ov.listxattr(ino) {
            Ok(n) => n,
            Err(e) if e.0 == libc::EOPNOTSUPP => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            match self.ov.getxattr(ino, n) {
                Ok(v) => out.push((n.to_vec(), v)),
                Err(e) if sys::xattr_absent(e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
