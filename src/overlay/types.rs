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

/// Bytes of a name kept inside a [`CompactName`] (longer ones get a heap
/// allocation of their own).
const NAME_INLINE: usize = 22;

/// A name as the node table keeps it, in 24 bytes: most names fit inline, so
/// a node costs no allocation for its name. Compares and reads as `[u8]`.
#[derive(Clone, PartialEq, Eq)]
pub enum CompactName {
    Inline { len: u8, bytes: [u8; NAME_INLINE] },
    Heap(Box<[u8]>),
}

impl CompactName {
    pub fn to_boxed(&self) -> Box<[u8]> {
        (**self).into()
    }
}

impl std::ops::Deref for CompactName {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            CompactName::Inline { len, bytes } => &bytes[..*len as usize],
            CompactName::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for CompactName {
    fn from(n: &[u8]) -> CompactName {
        if n.len() <= NAME_INLINE {
            let mut bytes = [0; NAME_INLINE];
            bytes[..n.len()].copy_from_slice(n);
            CompactName::Inline {
                len: n.len() as u8,
                bytes,
            }
        } else {
            CompactName::Heap(n.into())
        }
    }
}

impl From<Box<[u8]>> for CompactName {
    fn from(n: Box<[u8]>) -> CompactName {
        match n.len() <= NAME_INLINE {
            true => CompactName::from(&*n),
            false => CompactName::Heap(n),
        }
    }
}

impl fmt::Debug for CompactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// Layers kept inside a [`CompactLayers`].
const LAYERS_INLINE: usize = 3;

/// The layers of a node, top first, in 16 bytes: up to three inline (every
/// file, and directories merged from up to three layers), more on the heap.
/// Reads as `[LayerIdx]`.
#[derive(Clone, PartialEq, Eq)]
pub enum CompactLayers {
    Inline {
        len: u8,
        layers: [LayerIdx; LAYERS_INLINE],
    },
    // Boxed twice: a thin pointer keeps the enum at 16 bytes.
    #[allow(clippy::box_collection, clippy::redundant_allocation)]
    Heap(Box<Box<[LayerIdx]>>),
}

impl CompactLayers {
    pub fn to_boxed(&self) -> Box<[LayerIdx]> {
        (**self).into()
    }
}

impl std::ops::Deref for CompactLayers {
    type Target = [LayerIdx];
    fn deref(&self) -> &[LayerIdx] {
        match self {
            CompactLayers::Inline { len, layers } => &layers[..*len as usize],
            CompactLayers::Heap(b) => b,
        }
    }
}

impl From<&[LayerIdx]> for CompactLayers {
    fn from(l: &[LayerIdx]) -> CompactLayers {
        if l.len() <= LAYERS_INLINE {
            let mut layers = [LayerIdx(0); LAYERS_INLINE];
            layers[..l.len()].copy_from_slice(l);
            CompactLayers::Inline {
                len: l.len() as u8,
                layers,
            }
        } else {
            CompactLayers::Heap(Box::new(l.into()))
        }
    }
}

impl fmt::Debug for CompactLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_name_and_layers() {
        assert_eq!(std::mem::size_of::<CompactName>(), 24);
        assert_eq!(std::mem::size_of::<CompactLayers>(), 16);
        for n in [&b""[..], b"a", &[b'x'; 22], &[b'y'; 23], &[b'z'; 255]] {
            let c = CompactName::from(n);
            assert_eq!(&*c, n);
            assert_eq!(matches!(c, CompactName::Inline { .. }), n.len() <= 22);
            assert_eq!(&*CompactName::from(Box::<[u8]>::from(n)), n);
            assert_eq!(&*c.to_boxed(), n);
        }
        let l = |v: &[u16]| v.iter().map(|&i| LayerIdx(i)).collect::<Vec<_>>();
        for v in [l(&[]), l(&[3]), l(&[0, 2, 5]), l(&[0, 1, 2, 3, 9])] {
            let c = CompactLayers::from(&v[..]);
            assert_eq!(&*c, &v[..]);
            assert_eq!(c.first(), v.first());
            assert_eq!(matches!(c, CompactLayers::Inline { .. }), v.len() <= 3);
            assert_eq!(&*c.to_boxed(), &v[..]);
        }
    }

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
