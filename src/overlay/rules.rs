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

/// Where a directory is looked for in a layer, relative to where its
/// parent is. A directory renamed through the mount carries a redirect
/// (kernel overlayfs's `redirect_dir`) that moves its place in the layers
/// below the one holding the redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// This name inside the parent directory's own place in that layer.
    Name(Box<[u8]>),
    /// This path from the layer's root: starts with `/`, then non-empty
    /// components other than `.` and `..` (see [`parse_redirect`]).
    Abs(Box<[u8]>),
}

impl Place {
    /// The redirect value that stands for this place, as written to disk.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Place::Name(n) | Place::Abs(n) => n,
        }
    }
}

/// Extended attributes holding a directory's redirect, in every namespace
/// layerfs reads (trusted as root, user in a user namespace).
pub const REDIRECT_XATTRS: [&std::ffi::CStr; 2] =
    [c"trusted.overlay.redirect", c"user.overlay.redirect"];

/// Extended attributes that mark a metadata-only copy (kernel overlayfs's
/// `metacopy`): its data is read from the next layer below holding the name.
pub const METACOPY_XATTRS: [&std::ffi::CStr; 2] =
    [c"trusted.overlay.metacopy", c"user.overlay.metacopy"];

/// The longest redirect layerfs writes (kernel overlayfs's default
/// `redirect_max`); a longer one makes the rename EXDEV, as on the kernel.
pub const REDIRECT_MAX: usize = 256;

/// Parses a redirect value: `/a/b` (absolute from the layer root) or `name`
/// (relative to the parent). Anything else (empty components, `.`, `..`, a
/// NUL, a relative value with a `/`) is EIO, as on the kernel: following it
/// could leave the layer.
pub fn parse_redirect(v: &[u8]) -> Result<Place, Errno> {
    let valid = |c: &[u8]| {
        !c.is_empty() && c != b"." && c != b".." && c.len() <= NAME_MAX && !c.contains(&0)
    };
    match v.strip_prefix(b"/") {
        Some(rest) if rest.split(|&b| b == b'/').all(valid) => Ok(Place::Abs(v.into())),
        None if !v.contains(&b'/') && valid(v) => Ok(Place::Name(v.into())),
        _ => Err(Errno::EIO),
    }
}

/// The components of an absolute place's path.
pub fn abs_components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.strip_prefix(b"/")
        .unwrap_or(path)
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
}

/// Where the layers below continue after a directory found at `cur` turned
/// out to carry redirect `r`.
pub fn follow(cur: &Place, r: Place) -> Place {
    match (cur, r) {
        (_, Place::Abs(p)) => Place::Abs(p),
        (Place::Name(_), Place::Name(n)) => Place::Name(n),
        (Place::Abs(p), Place::Name(n)) => {
            let cut = p.iter().rposition(|&b| b == b'/').unwrap_or(0);
            let mut v = p[..cut].to_vec();
            v.push(b'/');
            v.extend_from_slice(&n);
            Place::Abs(v.into())
        }
    }
}

/// Where the layers below continue when, walking absolute path `path`, the
/// directory ending at byte `end` carries redirect `r`: the redirect replaces
/// that prefix, the rest of the path stays.
pub fn follow_within(path: &[u8], end: usize, r: Place) -> Place {
    let end = end.min(path.len());
    let head = follow(&Place::Abs(path[..end].into()), r);
    let mut v = head.as_bytes().to_vec();
    v.extend_from_slice(&path[end..]);
    Place::Abs(v.into())
}

/// The absolute redirect for a directory about to move to another parent:
/// its own name (or relative redirect), then each ancestor's, up to the root
/// or the first ancestor with an absolute redirect. `chain` runs from the
/// directory up to a child of the root; each item is a name and the upper
/// layer's redirect of that directory, if any. EXDEV when longer than
/// [`REDIRECT_MAX`].
pub fn abs_redirect(chain: &[(&[u8], Option<&Place>)]) -> Result<Vec<u8>, Errno> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut absolute = false;
    for (name, redirect) in chain {
        match redirect {
            Some(Place::Abs(p)) => {
                parts.push(p);
                absolute = true;
                break;
            }
            Some(Place::Name(n)) => parts.push(n),
            None => parts.push(name),
        }
    }
    let mut v = Vec::new();
    for (i, p) in parts.iter().rev().enumerate() {
        if !(i == 0 && absolute) {
            v.push(b'/');
        }
        v.extend_from_slice(p);
    }
    if v.len() > REDIRECT_MAX {
        return Err(Errno::EXDEV);
    }
    Ok(v)
}

/// A change of place: layers below `after` find the directory at `place`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub after: LayerIdx,
    pub place: Place,
}

/// The place of a directory in `layer`, given its redirects (in layer order):
/// the last one above that layer, or `None` for its own name in its parent.
pub fn place_in(redirects: &[Redirect], layer: LayerIdx) -> Option<&Place> {
    redirects
        .iter()
        .rev()
        .find(|r| r.after < layer)
        .map(|r| &r.place)
}

/// What decides how much of the layers below a directory shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirFacts {
    pub opaque: bool,
    /// Its redirect, parsed.
    pub redirect: Option<Place>,
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
    /// For directories: where it is found in the layers below a redirect.
    pub redirects: Vec<Redirect>,
}

/// Resolves `name` across `parent_layers` (top first), the layers of the
/// parent directory's merge. An absolute redirect continues in the layers of
/// the root below the current one (`all_layers`), as on the kernel.
///
/// `probe` reports what a layer holds at a place; for an absolute place it
/// may also return the place later layers use (a redirect met on the way).
/// `facts` is asked only for a directory that has layers below it. Returns
/// `None` for a negative lookup.
pub fn resolve(
    parent_layers: &[LayerIdx],
    all_layers: &[LayerIdx],
    name: &[u8],
    mut probe: impl FnMut(LayerIdx, &Place) -> Result<(Probe, Option<Place>), Errno>,
    mut facts: impl FnMut(LayerIdx, &Place) -> Result<DirFacts, Errno>,
) -> Result<Option<Resolved>, Errno> {
    let mut found: Option<Resolved> = None;
    let mut place = Place::Name(name.into());
    let mut redirects: Vec<Redirect> = Vec::new();
    let (mut list, mut in_root) = (parent_layers, false);
    let mut i = 0;
    while i < list.len() {
        let layer = list[i];
        let (p, mut next) = probe(layer, &place)?;
        match (p, &mut found) {
            (Probe::Missing, _) => {}
            (Probe::Whiteout, None) => return Ok(None),
            (Probe::NonDir, None) => {
                return Ok(Some(Resolved {
                    top: layer,
                    is_dir: false,
                    dirs: Vec::new(),
                    redirects: Vec::new(),
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
                            redirects: Vec::new(),
                        })
                    }
                    Some(r) => r.dirs.push(layer),
                }
                if all_layers.last().is_some_and(|b| *b > layer) {
                    let f = facts(layer, &place)?;
                    if f.opaque {
                        break;
                    }
                    if let Some(r) = f.redirect {
                        next = Some(follow(next.as_ref().unwrap_or(&place), r));
                    }
                }
            }
        }
        if let Some(np) = next {
            redirects.push(Redirect {
                after: layer,
                place: np.clone(),
            });
            place = np;
        }
        if !in_root && matches!(place, Place::Abs(_)) {
            in_root = true;
            list = all_layers;
            i = all_layers.iter().position(|l| *l == layer).unwrap_or(i);
        }
        i += 1;
    }
    if let Some(r) = &mut found {
        r.redirects = redirects;
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
                &layers,
                b"n",
                |x, _| Ok((probes[x.0 as usize], None)),
                |x, _| {
                    asked_opaque.push(x.0);
                    Ok(DirFacts {
                        opaque: opaque.contains(&x.0),
                        redirect: None,
                    })
                },
            )
            .unwrap();
            let want = want.map(|(top, is_dir, dirs)| Resolved {
                top: l(top),
                is_dir,
                dirs: dirs.into_iter().map(l).collect(),
                redirects: Vec::new(),
            });
            assert_eq!(got, want, "probes {probes:?} opaque {opaque:?}");
            // The bottom layer is never asked whether it is opaque.
            assert!(!asked_opaque.contains(&(probes.len() as u16 - 1)));
        }
    }

    fn name(s: &str) -> Place {
        Place::Name(s.as_bytes().into())
    }
    fn abs(s: &str) -> Place {
        Place::Abs(s.as_bytes().into())
    }

    #[test]
    fn parse_redirects() {
        let cases: &[(&[u8], Result<Place, Errno>)] = &[
            (b"a", Ok(name("a"))),
            (b"/a", Ok(abs("/a"))),
            (b"/a/b/c", Ok(abs("/a/b/c"))),
            (b"", Err(Errno::EIO)),
            (b"/", Err(Errno::EIO)),
            (b"a/b", Err(Errno::EIO)),
            (b"/a//b", Err(Errno::EIO)),
            (b"/a/", Err(Errno::EIO)),
            (b"..", Err(Errno::EIO)),
            (b"/a/../b", Err(Errno::EIO)),
            (b"/./b", Err(Errno::EIO)),
            (b"a\0b", Err(Errno::EIO)),
        ];
        for (v, want) in cases {
            assert_eq!(parse_redirect(v), *want, "{}", String::from_utf8_lossy(v));
        }
        let long = [b'x'; 256];
        assert_eq!(parse_redirect(&long), Err(Errno::EIO));
    }

    #[test]
    fn follow_redirects() {
        let cases = [
            (name("b"), name("a"), name("a")),
            (name("b"), abs("/x/a"), abs("/x/a")),
            (abs("/x/b"), name("a"), abs("/x/a")),
            (abs("/b"), name("a"), abs("/a")),
            (abs("/x/b"), abs("/y"), abs("/y")),
        ];
        for (cur, r, want) in cases {
            assert_eq!(follow(&cur, r.clone()), want, "{cur:?} + {r:?}");
        }
        // /p/q/r with /p/q redirected: the rest of the path stays.
        assert_eq!(follow_within(b"/p/q/r", 4, name("z")), abs("/p/z/r"));
        assert_eq!(follow_within(b"/p/q/r", 2, abs("/m/n")), abs("/m/n/q/r"));
        let comps: Vec<&[u8]> = abs_components(b"/p/q/r").collect();
        assert_eq!(comps, vec![&b"p"[..], b"q", b"r"]);
    }

    #[test]
    fn abs_redirect_paths() {
        let r = name("old");
        let a = abs("/deep/x");
        type Chain<'a> = Vec<(&'a [u8], Option<&'a Place>)>;
        let cases: Vec<(Chain, Result<&str, Errno>)> = vec![
            (vec![(b"d", None)], Ok("/d")),
            (vec![(b"d", None), (b"p", None)], Ok("/p/d")),
            (vec![(b"d", Some(&r)), (b"p", None)], Ok("/p/old")),
            (vec![(b"d", None), (b"p", Some(&r))], Ok("/old/d")),
            (
                vec![(b"d", None), (b"p", Some(&a)), (b"q", None)],
                Ok("/deep/x/d"),
            ),
            (vec![(b"d", Some(&a))], Ok("/deep/x")),
        ];
        for (chain, want) in cases {
            let got = abs_redirect(&chain);
            assert_eq!(got, want.map(|s| s.as_bytes().to_vec()), "{chain:?}");
        }
        let n = [b'n'; 200];
        assert_eq!(abs_redirect(&[(&n, None), (&n, None)]), Err(Errno::EXDEV));
    }

    #[test]
    fn places_by_layer() {
        let rs = vec![
            Redirect {
                after: l(0),
                place: name("a"),
            },
            Redirect {
                after: l(2),
                place: abs("/z"),
            },
        ];
        assert_eq!(place_in(&rs, l(0)), None);
        assert_eq!(place_in(&rs, l(1)), Some(&name("a")));
        assert_eq!(place_in(&rs, l(2)), Some(&name("a")));
        assert_eq!(place_in(&rs, l(3)), Some(&abs("/z")));
        assert_eq!(place_in(&[], l(3)), None);
    }

    /// A tiny layered tree: per layer, the directories (absolute paths) with
    /// their redirects, and whiteouts.
    struct Tree {
        dirs: Vec<Vec<(&'static str, Option<Place>)>>,
    }

    impl Tree {
        fn probe(&self, parent: &str, layer: LayerIdx, place: &Place) -> (Probe, Option<Place>) {
            let path = match place {
                Place::Name(n) => format!("{parent}/{}", String::from_utf8_lossy(n)),
                Place::Abs(p) => String::from_utf8_lossy(p).into_owned(),
            };
            let hit = self.dirs[layer.0 as usize].iter().any(|(p, _)| *p == path);
            (if hit { Probe::Dir } else { Probe::Missing }, None)
        }
        fn facts(&self, parent: &str, layer: LayerIdx, place: &Place) -> DirFacts {
            let path = match place {
                Place::Name(n) => format!("{parent}/{}", String::from_utf8_lossy(n)),
                Place::Abs(p) => String::from_utf8_lossy(p).into_owned(),
            };
            let redirect = self.dirs[layer.0 as usize]
                .iter()
                .find(|(p, _)| *p == path)
                .and_then(|(_, r)| r.clone());
            DirFacts {
                opaque: false,
                redirect,
            }
        }
    }

    #[test]
    fn resolve_follows_redirects() {
        // Layer 0 (upper): /p/b redirected to "a" (same parent) and /q/c to
        // /p/a; layer 1: /p/a; layer 2: /p/a with an absolute redirect /z;
        // layer 3: /z.
        let t = Tree {
            dirs: vec![
                vec![
                    ("/p", None),
                    ("/p/b", Some(name("a"))),
                    ("/q", None),
                    ("/q/c", Some(abs("/p/a"))),
                ],
                vec![("/p", None), ("/p/a", None)],
                vec![("/p", None), ("/p/a", Some(abs("/z")))],
                vec![("/z", None)],
            ],
        };
        let all: Vec<LayerIdx> = (0..4).map(l).collect();
        let run = |parent: &str, parent_layers: &[LayerIdx], n: &str| {
            resolve(
                parent_layers,
                &all,
                n.as_bytes(),
                |x, p| Ok(t.probe(parent, x, p)),
                |x, p| Ok(t.facts(parent, x, p)),
            )
            .unwrap()
            .unwrap()
        };
        let b = run("/p", &all[..3], "b");
        assert_eq!(b.dirs, vec![l(0), l(1), l(2), l(3)]);
        assert_eq!(
            b.redirects,
            vec![
                Redirect {
                    after: l(0),
                    place: name("a")
                },
                Redirect {
                    after: l(2),
                    place: abs("/z")
                }
            ]
        );
        // /q exists only in the upper layer: the absolute redirect switches
        // to the root's layers.
        let c = run("/q", &all[..1], "c");
        assert_eq!(c.dirs, vec![l(0), l(1), l(2), l(3)]);
        assert_eq!(c.redirects[0].place, abs("/p/a"));
        assert_eq!(c.redirects[1].place, abs("/z"));
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
