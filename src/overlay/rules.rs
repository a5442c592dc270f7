//! The union rules as pure functions: name classes, lookup resolution across
//! layers, and merging of directory listings.
//!
//! No I/O happens here: callers pass closures or already-read entries, so the
//! rules are tested table-driven without mounting anything.
//!
//! Rules (kernel overlayfs and the OCI image spec agree on these):
//! - layers are searched top-down; the first layer holding a name serves it;
//! - a directory merges with same-named directories below it until one of
//!   them is opaque, or a whiteout or non-directory is met (which, with
//!   everything below it, stays hidden);
//! - a whiteout (char device 0/0, or a `.wh.NAME` file) hides NAME in the
//!   layers below its own, never in its own layer;
//! - names starting with `.wh.` are never shown.

use std::collections::HashSet;

use super::types::LayerIdx;
use crate::sys::{Errno, FileKind};

/// Prefix of OCI whiteout files.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque-directory marker file.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The longest name a directory entry may have.
pub const NAME_MAX: usize = 255;

/// Extended attributes that mark a directory opaque, in every encoding layerfs
/// reads. The value must be `y`.
pub const OPAQUE_XATTRS: [&std::ffi::CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    c"user.fuseoverlayfs.opaque",
];

/// What a directory entry's name means to the union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameClass<'a> {
    /// An ordinary name, shown if nothing above hides it.
    Plain,
    /// `.wh.NAME`: hides `NAME` in lower layers.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: this directory is opaque.
    OpaqueMarker,
    /// Any other `.wh.` name (`.wh.` alone, `.wh..wh.*`): reserved, hidden.
    Reserved,
}

/// Classifies a directory entry name.
pub fn classify(name: &[u8]) -> NameClass<'_> {
    if name == OPAQUE_MARKER {
        return NameClass::OpaqueMarker;
    }
    match name.strip_prefix(WH_PREFIX) {
        None => NameClass::Plain,
        Some(rest) if rest.is_empty() || rest.starts_with(WH_PREFIX) => NameClass::Reserved,
        Some(rest) if rest == b"." || rest == b".." || rest.contains(&b'/') => NameClass::Reserved,
        Some(rest) => NameClass::Whiteout(rest),
    }
}

/// True if users may not create or look up this name: it would be read back
/// as a whiteout or marker.
pub fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// Validates a name from a request: a single, non-empty component of at most
/// [`NAME_MAX`] bytes.
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// What one layer holds under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Missing,
    Whiteout,
    Dir,
    NonDir,
}

/// The outcome of a successful lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The layer that serves the name.
    pub top: LayerIdx,
    pub is_dir: bool,
    /// For directories: every layer merged into it, top first (starts with
    /// `top`). Empty for non-directories.
    pub dirs: Vec<LayerIdx>,
}

/// Resolves a name across `layers` (top first), which are the layers of the
/// parent directory's merge.
///
/// `probe` reports what a layer holds; `opaque` is asked only for a directory
/// that has more layers below it. Returns `None` for a negative lookup.
pub fn resolve(
    layers: &[LayerIdx],
    mut probe: impl FnMut(LayerIdx) -> Result<Probe, Errno>,
    mut opaque: impl FnMut(LayerIdx) -> Result<bool, Errno>,
) -> Result<Option<Resolved>, Errno> {
    let mut found: Option<Resolved> = None;
    for (i, &layer) in layers.iter().enumerate() {
        let p = probe(layer)?;
        match (p, &mut found) {
            (Probe::Missing, _) => continue,
            (Probe::Whiteout, None) => return Ok(None),
            (Probe::NonDir, None) => {
                return Ok(Some(Resolved {
                    top: layer,
                    is_dir: false,
                    dirs: Vec::new(),
                }));
            }
            // A whiteout or non-directory below a directory ends its merge.
            (Probe::Whiteout | Probe::NonDir, Some(_)) => break,
            (Probe::Dir, slot) => {
                match slot {
                    None => {
                        *slot = Some(Resolved {
                            top: layer,
                            is_dir: true,
                            dirs: vec![layer],
                        })
                    }
                    Some(r) => r.dirs.push(layer),
                }
                if i + 1 < layers.len() && opaque(layer)? {
                    break;
                }
            }
        }
    }
    Ok(found)
}

/// One entry of a layer's directory, as read from disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// `None` only for a char device whose rdev is not known yet: callers
    /// resolve `DT_UNKNOWN` and `DT_CHR` with a stat before merging.
    pub kind: EntryKind,
}

/// The type of a layer entry, with kernel whiteouts told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File(FileKind),
    /// A character device 0/0.
    Whiteout,
}

/// One entry of a merged listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    pub name: Vec<u8>,
    /// The layer serving it.
    pub layer: LayerIdx,
    /// Its inode number within that layer.
    pub ino: u64,
    pub kind: FileKind,
}

/// Merges the listings of a directory's layers (top first, as `Resolved::dirs`).
/// Each name appears once, served by the topmost layer that shows it.
pub fn merge_listing(layers: Vec<(LayerIdx, Vec<LayerEntry>)>) -> Vec<MergedEntry> {
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut hidden: HashSet<Vec<u8>> = HashSet::new();
    let mut out = Vec::new();
    for (layer, entries) in layers {
        let mut whiteouts: Vec<Vec<u8>> = Vec::new();
        for e in entries {
            match classify(&e.name) {
                NameClass::Whiteout(target) => {
                    whiteouts.push(target.to_vec());
                    continue;
                }
                NameClass::OpaqueMarker | NameClass::Reserved => continue,
                NameClass::Plain => {}
            }
            if hidden.contains(&e.name) || seen.contains(&e.name) {
                continue;
            }
            match e.kind {
                EntryKind::Whiteout => {
                    whiteouts.push(e.name);
                }
                EntryKind::File(kind) => {
                    seen.insert(e.name.clone());
                    out.push(MergedEntry {
                        name: e.name,
                        layer,
                        ino: e.ino,
                        kind,
                    });
                }
            }
        }
        hidden.extend(whiteouts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_names() {
        let cases: &[(&[u8], NameClass)] = &[
            (b"foo", NameClass::Plain),
            (b".wh.foo", NameClass::Whiteout(b"foo")),
            (b".wh..wh..opq", NameClass::OpaqueMarker),
            (b".wh.", NameClass::Reserved),
            (b".wh..wh.foo", NameClass::Reserved),
            (b".wh..", NameClass::Reserved),
            (b".wh..hidden", NameClass::Whiteout(b".hidden")),
            (b".whfoo", NameClass::Plain),
            (b"a.wh.b", NameClass::Plain),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), *want, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn check_names() {
        assert_eq!(check_name(&[b'a'; 255]), Ok(()));
        assert_eq!(check_name(&[b'a'; 256]), Err(Errno::ENAMETOOLONG));
        assert_eq!(check_name(b""), Err(Errno::EINVAL));
        assert_eq!(check_name(b"a/b"), Err(Errno::EINVAL));
    }

    fn l(i: u16) -> LayerIdx {
        LayerIdx(i)
    }

    type ResolveCase = (Vec<Probe>, Vec<u16>, Option<(u16, bool, Vec<u16>)>);

    #[test]
    fn resolve_table() {
        use Probe::*;
        // (per-layer probes, opaque layers, expected)
        let cases: Vec<ResolveCase> = vec![
            (vec![Missing, Missing], vec![], None),
            (vec![NonDir, NonDir], vec![], Some((0, false, vec![]))),
            (vec![Missing, NonDir], vec![], Some((1, false, vec![]))),
            (vec![Whiteout, NonDir], vec![], None),
            (vec![Missing, Whiteout, NonDir], vec![], None),
            (vec![Dir, Dir, Dir], vec![], Some((0, true, vec![0, 1, 2]))),
            (vec![Dir, Dir, Dir], vec![1], Some((0, true, vec![0, 1]))),
            (vec![Dir, Dir, Dir], vec![0], Some((0, true, vec![0]))),
            // A directory hides a file below it, and the file ends the merge.
            (vec![Dir, NonDir, Dir], vec![], Some((0, true, vec![0]))),
            // A file hides a directory below it.
            (vec![NonDir, Dir], vec![], Some((0, false, vec![]))),
            (vec![Dir, Whiteout, Dir], vec![], Some((0, true, vec![0]))),
            (
                vec![Missing, Dir, Missing, Dir],
                vec![],
                Some((1, true, vec![1, 3])),
            ),
        ];
        for (probes, opaque, want) in cases {
            let layers: Vec<LayerIdx> = (0..probes.len() as u16).map(l).collect();
            let mut asked_opaque = Vec::new();
            let got = resolve(
                &layers,
                |x| Ok(probes[x.0 as usize]),
                |x| {
                    asked_opaque.push(x.0);
                    Ok(opaque.contains(&x.0))
                },
            )
            .unwrap();
            let want = want.map(|(top, is_dir, dirs)| Resolved {
                top: l(top),
                is_dir,
                dirs: dirs.into_iter().map(l).collect(),
            });
            assert_eq!(got, want, "probes {probes:?} opaque {opaque:?}");
            // The bottom layer is never asked whether it is opaque.
            assert!(!asked_opaque.contains(&(probes.len() as u16 - 1)));
        }
    }

    fn e(name: &str, ino: u64, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            name: name.as_bytes().to_vec(),
            ino,
            kind,
        }
    }

    #[test]
    fn merge_table() {
        let f = EntryKind::File(FileKind::Regular);
        let d = EntryKind::File(FileKind::Dir);
        let wh = EntryKind::Whiteout;
        let merged = merge_listing(vec![
            (
                l(0),
                vec![
                    e("a", 1, f),
                    e(".wh.b", 2, f),
                    e("c", 3, wh),
                    e(".wh..wh..opq", 4, f),
                    e("d", 5, d),
                ],
            ),
            (
                l(1),
                vec![
                    e("a", 11, d),
                    e("b", 12, f),
                    e("c", 13, f),
                    e("d", 15, d),
                    e("e", 16, f),
                    e("g", 17, wh),
                ],
            ),
            (l(2), vec![e("e", 21, d), e("g", 22, f), e("h", 23, f)]),
        ]);
        let got: Vec<(String, u16, u64)> = merged
            .iter()
            .map(|m| {
                (
                    String::from_utf8_lossy(&m.name).into_owned(),
                    m.layer.0,
                    m.ino,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 0, 1),
                ("d".into(), 0, 5),
                ("e".into(), 1, 16),
                ("h".into(), 2, 23),
            ]
        );
    }

    #[test]
    fn whiteout_does_not_hide_its_own_layer() {
        let f = EntryKind::File(FileKind::Regular);
        let merged = merge_listing(vec![(l(0), vec![e(".wh.x", 1, f), e("x", 2, f)])]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].name, b"x");
    }
}
