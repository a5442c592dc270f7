//! Small value types of the union: inode numbers, layer indexes, and the
//! scheme that turns a layer's own inode numbers into merged ones.

use std::fmt;

/// An inode number of the merged filesystem (FUSE's node id, which fuser also
/// reports as `st_ino`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The merged root directory (FUSE_ROOT_ID).
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A position in the layer stack: 0 is the top (the upper layer when the mount
/// is writable), higher numbers are further down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerIdx(pub u16);

impl fmt::Display for LayerIdx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a layer's own inode numbers become merged inode numbers.
///
/// Invariants: two different files never map to the same number; the same
/// file always maps to the same number; nothing maps to 0 or to [`Ino::ROOT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InoScheme {
    /// All layers share one filesystem: report its inode numbers unchanged, as
    /// kernel overlayfs does (tools such as git compare them across runs).
    SameFs,
    /// Layers span several filesystems: the filesystem's index goes into the
    /// top bits (like kernel overlayfs's xino).
    Xino { shift: u32 },
}

/// Bit that moves the rare real inode number 1 out of the root's way.
const ESCAPE_BIT: u64 = 1 << 63;

impl InoScheme {
    /// Picks the scheme for layers whose filesystems are numbered
    /// `0..fs_count`.
    pub fn for_fs_count(fs_count: usize) -> InoScheme {
        if fs_count <= 1 {
            InoScheme::SameFs
        } else {
            // Room for fs_count + 1 tags (0 is never used), below the escape bit.
            let bits = usize::BITS - fs_count.leading_zeros();
            InoScheme::Xino { shift: 63 - bits }
        }
    }

    /// Maps inode `ino` of the filesystem with index `fs`.
    pub fn map(&self, fs: usize, ino: u64) -> Ino {
        match self {
            InoScheme::SameFs => {
                if ino <= 1 {
                    Ino(ESCAPE_BIT | ino)
                } else {
                    Ino(ino)
                }
            }
            InoScheme::Xino { shift } => {
                let tag = (fs as u64 + 1) << shift;
                let mask = (1u64 << shift) - 1;
                // Inode numbers wider than the room left are folded; such
                // numbers are rare enough (only some XFS/btrfs setups) that a
                // collision needs two of them to fold together.
                let low = if ino > mask {
                    (ino ^ (ino >> shift)) & mask
                } else {
                    ino
                };
                Ino(tag | low)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samefs_is_identity() {
        let s = InoScheme::for_fs_count(1);
        assert_eq!(s, InoScheme::SameFs);
        assert_eq!(s.map(0, 1234), Ino(1234));
        assert_ne!(s.map(0, 1), Ino::ROOT);
        assert_ne!(s.map(0, 0).0, 0);
    }

    #[test]
    fn xino_separates_filesystems() {
        let s = InoScheme::for_fs_count(3);
        let a = s.map(0, 1);
        let b = s.map(1, 1);
        let c = s.map(2, 1);
        assert!(a != b && b != c && a != c);
        for i in [a, b, c] {
            assert_ne!(i, Ino::ROOT);
            assert_eq!(i.0 & ESCAPE_BIT, 0);
        }
        assert_eq!(s.map(1, 77), s.map(1, 77));
    }
}
