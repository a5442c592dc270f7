//! Why a path looks the way it does: the pure part of `layerfs explain`.
//!
//! The caller observes, for every component of a path and every layer of
//! the stack, what that layer holds under that name ([`Seen`]), without any
//! union logic. [`walk`] then replays the lookup the mount would do, with the
//! very same [`rules::resolve`], and reports every decision on the way: which
//! layer serves the path, which whiteouts and opaque directories took effect,
//! and why each same-named entry further down is hidden ([`hidden`]).
//!
//! No I/O happens here (see `cli::explain` for the observation), so the
//! explanation is table-tested.
//!
//! Paths are byte strings split into components ([`split_path`]); symlinks
//! met in the middle of a path are not followed here: the walk stops with
//! [`Outcome::Symlink`] and the caller restarts it on [`follow_symlink`]'s
//! result, as the kernel's path walk would.

use super::rules::{self, Place, Probe, Resolved};
use super::types::LayerIdx;
use crate::sys::FileKind;

/// How a whiteout is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WhiteoutEnc {
    /// A character device 0/0 named like the hidden entry (kernel overlayfs).
    CharDev,
    /// An empty `.wh.NAME` file (OCI layers).
    WhFile,
}

impl WhiteoutEnc {
    /// A short, stable name (used in JSON output).
    pub fn name(&self) -> &'static str {
        match self {
            WhiteoutEnc::CharDev => "chardev",
            WhiteoutEnc::WhFile => "wh_file",
        }
    }

    /// How it reads in prose.
    pub fn describe(&self) -> &'static str {
        match self {
            WhiteoutEnc::CharDev => "character device 0/0",
            WhiteoutEnc::WhFile => ".wh. file",
        }
    }
}

/// How a directory is marked opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpaqueEnc {
    /// An extended attribute (its name) with the value `y`.
    Xattr(String),
    /// A `.wh..wh..opq` file inside it (OCI layers).
    MarkerFile,
    /// A `.wh.NAME` whiteout beside the directory `NAME` in the same layer.
    WhiteoutBeside,
}

impl OpaqueEnc {
    /// A short, stable name (used in JSON output).
    pub fn name(&self) -> String {
        match self {
            OpaqueEnc::Xattr(x) => format!("xattr:{x}"),
            OpaqueEnc::MarkerFile => "marker_file".into(),
            OpaqueEnc::WhiteoutBeside => "wh_beside".into(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            OpaqueEnc::Xattr(x) => format!("xattr {x}=y"),
            OpaqueEnc::MarkerFile => ".wh..wh..opq marker".into(),
            OpaqueEnc::WhiteoutBeside => ".wh.NAME beside the directory".into(),
        }
    }
}

/// What one layer holds under one path (its parents being directories in
/// that layer; otherwise [`Seen::Missing`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Missing,
    Whiteout(WhiteoutEnc),
    Object {
        kind: FileKind,
        /// For a directory: whether and how it is marked opaque.
        opaque: Option<OpaqueEnc>,
        /// For a directory renamed by redirect: where the layers below
        /// hold it (the observer has already looked there for them).
        redirect: Option<Place>,
    },
}

impl Seen {
    fn probe(&self) -> Probe {
        match self {
            Seen::Missing => Probe::Missing,
            Seen::Whiteout(_) => Probe::Whiteout,
            Seen::Object {
                kind: FileKind::Dir,
                ..
            } => Probe::Dir,
            Seen::Object { .. } => Probe::NonDir,
        }
    }

    /// The object's type, if this is an object.
    pub fn kind(&self) -> Option<FileKind> {
        match self {
            Seen::Object { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Observations: `seen[component][layer]`, layers top first. Every row has
/// one entry per layer of the stack. Below a redirected directory a layer is
/// observed at the redirect's place, not at the path's own names: the
/// observer follows redirects, the walk only applies their effect on which
/// layers take part (an absolute one continues in every layer below).
pub type Observed = [Vec<Seen>];

/// One lookup of the walk: component `component` looked up in its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub component: usize,
    /// The layers merged into the parent directory, top first.
    pub layers: Vec<LayerIdx>,
    /// The layers the lookup looked at before it decided, top first.
    pub examined: Vec<LayerIdx>,
    pub resolved: Option<Resolved>,
}

/// How the walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The whole path resolves. `dirs`: the layers merged into it, when it is
    /// a directory (empty otherwise).
    Found {
        top: LayerIdx,
        kind: FileKind,
        dirs: Vec<LayerIdx>,
    },
    /// No layer shows component `component`.
    Missing { component: usize },
    /// Component `component` is hidden by a whiteout in `layer`.
    WhitedOut {
        component: usize,
        layer: LayerIdx,
        enc: WhiteoutEnc,
    },
    /// Component `component` is a symlink (served by `layer`) with more of
    /// the path after it: follow it and walk again.
    Symlink { component: usize, layer: LayerIdx },
    /// Component `component` is neither a directory nor a symlink, and more
    /// of the path follows.
    NotADirectory {
        component: usize,
        layer: LayerIdx,
        kind: FileKind,
    },
}

/// The replayed lookup of a whole path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

impl Walk {
    /// The layer serving the path, if found.
    pub fn top(&self) -> Option<LayerIdx> {
        match &self.outcome {
            Outcome::Found { top, .. } => Some(*top),
            _ => None,
        }
    }

    /// The layers whose entry at the path is visible (the top, and for a
    /// directory every layer merged into it).
    pub fn served(&self) -> Vec<LayerIdx> {
        match &self.outcome {
            Outcome::Found { top, dirs, .. } if dirs.is_empty() => vec![*top],
            Outcome::Found { dirs, .. } => dirs.clone(),
            _ => Vec::new(),
        }
    }
}

/// Replays the lookup of a path of `seen.len()` components through a stack
/// of `layer_count` layers. The root merges every layer.
pub fn walk(layer_count: usize, seen: &Observed) -> Walk {
    let all: Vec<LayerIdx> = (0..layer_count as u16).map(LayerIdx).collect();
    let mut layers = all.clone();
    let mut steps = Vec::with_capacity(seen.len());
    let get = |c: usize, l: LayerIdx| seen[c].get(l.0 as usize).unwrap_or(&Seen::Missing);
    for c in 0..seen.len() {
        let mut examined = Vec::new();
        let resolved = rules::resolve(
            &layers,
            &all,
            b"",
            |l, _| {
                examined.push(l);
                Ok((get(c, l).probe(), None))
            },
            |l, _| {
                Ok(match get(c, l) {
                    Seen::Object {
                        opaque, redirect, ..
                    } => rules::DirFacts {
                        opaque: opaque.is_some(),
                        redirect: redirect.clone(),
                    },
                    _ => rules::DirFacts::default(),
                })
            },
        )
        .ok()
        .flatten();
        steps.push(Step {
            component: c,
            layers: layers.clone(),
            examined: examined.clone(),
            resolved: resolved.clone(),
        });
        let last = c + 1 == seen.len();
        let Some(r) = resolved else {
            let outcome = match examined.last().map(|&l| (l, get(c, l))) {
                Some((layer, Seen::Whiteout(enc))) => Outcome::WhitedOut {
                    component: c,
                    layer,
                    enc: enc.clone(),
                },
                _ => Outcome::Missing { component: c },
            };
            return Walk { steps, outcome };
        };
        let kind = get(c, r.top).kind().unwrap_or(FileKind::Regular);
        if last {
            return Walk {
                steps,
                outcome: Outcome::Found {
                    top: r.top,
                    kind,
                    dirs: r.dirs,
                },
            };
        }
        if !r.is_dir {
            let outcome = if kind == FileKind::Symlink {
                Outcome::Symlink {
                    component: c,
                    layer: r.top,
                }
            } else {
                Outcome::NotADirectory {
                    component: c,
                    layer: r.top,
                    kind,
                }
            };
            return Walk { steps, outcome };
        }
        layers = r.dirs;
    }
    // The root itself.
    Walk {
        steps,
        outcome: Outcome::Found {
            top: LayerIdx(0),
            kind: FileKind::Dir,
            dirs: layers,
        },
    }
}

/// A whiteout or opaque directory that took part in the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Met<E> {
    /// The component it applies to (the path up to and including it).
    pub component: usize,
    pub layer: LayerIdx,
    pub enc: E,
}

/// Every whiteout the lookup looked at: each one hid its name in every layer
/// below it.
pub fn whiteouts(w: &Walk, seen: &Observed) -> Vec<Met<WhiteoutEnc>> {
    let mut out = Vec::new();
    for s in &w.steps {
        for &l in &s.examined {
            if let Some(Seen::Whiteout(enc)) = seen[s.component].get(l.0 as usize) {
                out.push(Met {
                    component: s.component,
                    layer: l,
                    enc: enc.clone(),
                });
            }
        }
    }
    out
}

/// Every opaque directory merged on the way (including the path itself).
pub fn opaque_dirs(w: &Walk, seen: &Observed) -> Vec<Met<OpaqueEnc>> {
    let mut out = Vec::new();
    for s in &w.steps {
        let Some(r) = &s.resolved else { continue };
        for &l in &r.dirs {
            if let Some(Seen::Object {
                opaque: Some(enc), ..
            }) = seen[s.component].get(l.0 as usize)
            {
                out.push(Met {
                    component: s.component,
                    layer: l,
                    enc: enc.clone(),
                });
            }
        }
    }
    out
}

/// Why an entry of a lower layer does not show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HideReason {
    /// A whiteout in `layer` hides the path, or its ancestor `component`.
    Whiteout {
        layer: LayerIdx,
        component: usize,
        enc: WhiteoutEnc,
    },
    /// The directory at `component` in `layer` is opaque.
    Opaque {
        layer: LayerIdx,
        component: usize,
        enc: OpaqueEnc,
    },
    /// A non-directory in `layer` at `component` covers it (the serving
    /// entry itself, or a file that ends a directory's merge).
    NonDirectory {
        layer: LayerIdx,
        component: usize,
        kind: FileKind,
    },
    /// A directory in `layer` covers this non-directory.
    Directory { layer: LayerIdx, component: usize },
}

impl HideReason {
    pub fn layer(&self) -> LayerIdx {
        match self {
            HideReason::Whiteout { layer, .. }
            | HideReason::Opaque { layer, .. }
            | HideReason::NonDirectory { layer, .. }
            | HideReason::Directory { layer, .. } => *layer,
        }
    }
}

/// A same-named entry of a lower layer that does not show, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hidden {
    pub layer: LayerIdx,
    pub kind: FileKind,
    pub reason: HideReason,
}

/// Every layer holding an object at the full path that does not show through
/// the merge, with the first thing that hides it.
pub fn hidden(w: &Walk, seen: &Observed) -> Vec<Hidden> {
    let Some(last) = seen.len().checked_sub(1) else {
        return Vec::new();
    };
    let served = w.served();
    let mut out = Vec::new();
    for (i, s) in seen[last].iter().enumerate() {
        let layer = LayerIdx(i as u16);
        let Some(kind) = s.kind() else { continue };
        if served.contains(&layer) {
            continue;
        }
        // The step where this layer leaves the merge: the first one whose
        // result does not carry it on.
        let step = w.steps.iter().find(|st| {
            let carried = match &st.resolved {
                Some(r) if st.component == last => {
                    if r.is_dir {
                        r.dirs.contains(&layer)
                    } else {
                        r.top == layer
                    }
                }
                Some(r) => r.is_dir && r.dirs.contains(&layer),
                None => false,
            };
            !carried
        });
        let Some(st) = step else { continue };
        if let Some(reason) = reason_at(st, layer, seen) {
            out.push(Hidden {
                layer,
                kind,
                reason,
            });
        }
    }
    out
}

/// Why `layer` leaves the merge at step `st`.
fn reason_at(st: &Step, layer: LayerIdx, seen: &Observed) -> Option<HideReason> {
    let c = st.component;
    let row = &seen[c];
    for &m in st.layers.iter().take_while(|&&m| m != layer) {
        match row.get(m.0 as usize)? {
            Seen::Whiteout(enc) => {
                return Some(HideReason::Whiteout {
                    layer: m,
                    component: c,
                    enc: enc.clone(),
                });
            }
            Seen::Object {
                kind: FileKind::Dir,
                opaque: Some(enc),
                ..
            } => {
                return Some(HideReason::Opaque {
                    layer: m,
                    component: c,
                    enc: enc.clone(),
                });
            }
            Seen::Object {
                kind: FileKind::Dir,
                opaque: None,
                ..
            }
            | Seen::Missing => {}
            Seen::Object { kind, .. } => {
                return Some(HideReason::NonDirectory {
                    layer: m,
                    component: c,
                    kind: *kind,
                });
            }
        }
    }
    // Nothing above ended the merge: this layer's own entry is a
    // non-directory under a directory.
    st.resolved.as_ref().map(|r| HideReason::Directory {
        layer: r.top,
        component: c,
    })
}

/// True when some layer other than `top` holds an object at the full path:
/// for an upper `top`, the entry was copied up (or replaced).
pub fn exists_elsewhere(seen: &Observed, top: LayerIdx) -> bool {
    seen.last().is_some_and(|row| {
        row.iter()
            .enumerate()
            .any(|(i, s)| i != top.0 as usize && s.kind().is_some())
    })
}

/// Splits a path into components, lexically: empty and `.` components go,
/// `..` removes the previous one (never above the root).
pub fn split_path(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    push_components(&mut out, path);
    out
}

fn push_components(out: &mut Vec<Vec<u8>>, path: &[u8]) {
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
}

/// The path to walk after component `at` of `comps` turned out to be a
/// symlink to `target`: relative targets start from the symlink's directory.
pub fn follow_symlink(comps: &[Vec<u8>], at: usize, target: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = if target.starts_with(b"/") {
        Vec::new()
    } else {
        comps[..at.min(comps.len())].to_vec()
    };
    push_components(&mut out, target);
    out.extend(comps.iter().skip(at + 1).cloned());
    out
}

/// Joins components back into an absolute path.
pub fn join_path(comps: &[Vec<u8>]) -> Vec<u8> {
    if comps.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for c in comps {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Seen = Seen::Missing;

    fn d() -> Seen {
        Seen::Object {
            kind: FileKind::Dir,
            opaque: None,
            redirect: None,
        }
    }
    fn dop(enc: OpaqueEnc) -> Seen {
        Seen::Object {
            kind: FileKind::Dir,
            opaque: Some(enc),
            redirect: None,
        }
    }
    fn f() -> Seen {
        Seen::Object {
            kind: FileKind::Regular,
            opaque: None,
            redirect: None,
        }
    }
    fn ln() -> Seen {
        Seen::Object {
            kind: FileKind::Symlink,
            opaque: None,
            redirect: None,
        }
    }
    fn wh() -> Seen {
        Seen::Whiteout(WhiteoutEnc::CharDev)
    }
    fn whf() -> Seen {
        Seen::Whiteout(WhiteoutEnc::WhFile)
    }
    fn l(i: u16) -> LayerIdx {
        LayerIdx(i)
    }
    fn ls(v: &[u16]) -> Vec<LayerIdx> {
        v.iter().copied().map(l).collect()
    }

    /// The observer looked for each layer where redirects above send it;
    /// the walk lets an absolute redirect reach layers the parent's merge
    /// does not have.
    #[test]
    fn walk_follows_redirects() {
        let dr = |p: &[u8]| Seen::Object {
            kind: FileKind::Dir,
            opaque: None,
            redirect: Some(rules::parse_redirect(p).unwrap()),
        };
        // /p/e renamed from /q/d: layer 1 has no /p at all.
        let seen = vec![vec![d(), M, M], vec![dr(b"/q/d"), d(), M], vec![M, f(), M]];
        let w = walk(3, &seen);
        assert_eq!(
            w.outcome,
            Outcome::Found {
                top: l(1),
                kind: FileKind::Regular,
                dirs: vec![]
            }
        );
        assert_eq!(w.steps[1].resolved.as_ref().unwrap().dirs, ls(&[0, 1]));
        // A relative redirect stays within the parent's merge.
        let seen = vec![vec![d(), d(), M], vec![dr(b"d"), d(), d()], vec![M, M, f()]];
        let w = walk(3, &seen);
        assert_eq!(w.steps[1].resolved.as_ref().unwrap().dirs, ls(&[0, 1]));
        assert_eq!(w.outcome, Outcome::Missing { component: 2 });
    }

    #[test]
    fn walk_outcomes() {
        // (observations [component][layer], expected outcome)
        let cases: Vec<(Vec<Vec<Seen>>, Outcome)> = vec![
            // The root.
            (
                vec![],
                Outcome::Found {
                    top: l(0),
                    kind: FileKind::Dir,
                    dirs: ls(&[0, 1, 2]),
                },
            ),
            // /a: a file in the middle layer.
            (
                vec![vec![M, f(), f()]],
                Outcome::Found {
                    top: l(1),
                    kind: FileKind::Regular,
                    dirs: vec![],
                },
            ),
            // /a/b with /a opaque in layer 1: layer 2's /a/b is not merged.
            (
                vec![vec![d(), dop(OpaqueEnc::MarkerFile), d()], vec![M, M, f()]],
                Outcome::Missing { component: 1 },
            ),
            // /a whited out in layer 0 (chardev).
            (
                vec![vec![wh(), f(), f()]],
                Outcome::WhitedOut {
                    component: 0,
                    layer: l(0),
                    enc: WhiteoutEnc::CharDev,
                },
            ),
            // /a/b where /a is whited out by a .wh. file in layer 1.
            (
                vec![vec![M, whf(), d()], vec![M, M, f()]],
                Outcome::WhitedOut {
                    component: 0,
                    layer: l(1),
                    enc: WhiteoutEnc::WhFile,
                },
            ),
            // /bin/sh where /bin is a symlink in layer 0.
            (
                vec![vec![ln(), d(), d()], vec![M, f(), f()]],
                Outcome::Symlink {
                    component: 0,
                    layer: l(0),
                },
            ),
            // /a/b where /a is a file.
            (
                vec![vec![M, f(), d()], vec![M, M, f()]],
                Outcome::NotADirectory {
                    component: 0,
                    layer: l(1),
                    kind: FileKind::Regular,
                },
            ),
            // /a/b: merged directory, served from below.
            (
                vec![vec![d(), M, d()], vec![M, M, f()]],
                Outcome::Found {
                    top: l(2),
                    kind: FileKind::Regular,
                    dirs: vec![],
                },
            ),
        ];
        for (seen, want) in cases {
            let w = walk(3, &seen);
            assert_eq!(w.outcome, want, "{seen:?}");
        }
    }

    #[test]
    fn hidden_reasons() {
        type Case = (Vec<Vec<Seen>>, Vec<(u16, HideReason)>);
        let cases: Vec<Case> = vec![
            // A file copied up: the lower copy is covered by the upper one.
            (
                vec![vec![f(), f(), M]],
                vec![(
                    1,
                    HideReason::NonDirectory {
                        layer: l(0),
                        component: 0,
                        kind: FileKind::Regular,
                    },
                )],
            ),
            // A whiteout in layer 1 hides layer 2's file; layer 0's file
            // serves and covers the whiteout's layer (which holds nothing).
            (
                vec![vec![M, wh(), f()]],
                vec![(
                    2,
                    HideReason::Whiteout {
                        layer: l(1),
                        component: 0,
                        enc: WhiteoutEnc::CharDev,
                    },
                )],
            ),
            // /a/b: /a opaque in layer 0 hides /a/b of layers 1 and 2.
            (
                vec![
                    vec![
                        dop(OpaqueEnc::Xattr("user.overlay.opaque".into())),
                        d(),
                        d(),
                    ],
                    vec![f(), f(), f()],
                ],
                vec![
                    (
                        1,
                        HideReason::Opaque {
                            layer: l(0),
                            component: 0,
                            enc: OpaqueEnc::Xattr("user.overlay.opaque".into()),
                        },
                    ),
                    (
                        2,
                        HideReason::Opaque {
                            layer: l(0),
                            component: 0,
                            enc: OpaqueEnc::Xattr("user.overlay.opaque".into()),
                        },
                    ),
                ],
            ),
            // A directory in layer 0 over a file in layer 1 over a
            // directory in layer 2: the file ends the merge.
            (
                vec![vec![d(), f(), d()]],
                vec![
                    (
                        1,
                        HideReason::Directory {
                            layer: l(0),
                            component: 0,
                        },
                    ),
                    (
                        2,
                        HideReason::NonDirectory {
                            layer: l(1),
                            component: 0,
                            kind: FileKind::Regular,
                        },
                    ),
                ],
            ),
            // Whited out at the top: everything below is hidden by it.
            (
                vec![vec![whf(), f(), d()]],
                vec![
                    (
                        1,
                        HideReason::Whiteout {
                            layer: l(0),
                            component: 0,
                            enc: WhiteoutEnc::WhFile,
                        },
                    ),
                    (
                        2,
                        HideReason::Whiteout {
                            layer: l(0),
                            component: 0,
                            enc: WhiteoutEnc::WhFile,
                        },
                    ),
                ],
            ),
            // A merged directory hides nothing.
            (vec![vec![d(), d(), d()]], vec![]),
        ];
        for (seen, want) in cases {
            let w = walk(3, &seen);
            let got: Vec<(u16, HideReason)> = hidden(&w, &seen)
                .into_iter()
                .map(|h| (h.layer.0, h.reason))
                .collect();
            assert_eq!(got, want, "{seen:?}");
        }
    }

    #[test]
    fn whiteouts_and_opaque_met() {
        // /a/b: /a merged from 0 and 1, opaque in 1; /a/b whited out in 0.
        let seen = vec![
            vec![d(), dop(OpaqueEnc::WhiteoutBeside), d()],
            vec![whf(), f(), f()],
        ];
        let w = walk(3, &seen);
        assert_eq!(
            w.outcome,
            Outcome::WhitedOut {
                component: 1,
                layer: l(0),
                enc: WhiteoutEnc::WhFile
            }
        );
        assert_eq!(
            whiteouts(&w, &seen),
            vec![Met {
                component: 1,
                layer: l(0),
                enc: WhiteoutEnc::WhFile
            }]
        );
        assert_eq!(
            opaque_dirs(&w, &seen),
            vec![Met {
                component: 0,
                layer: l(1),
                enc: OpaqueEnc::WhiteoutBeside
            }]
        );
        // A whiteout below a directory ends the merge and is reported.
        let seen = vec![vec![d(), wh(), d()]];
        let w = walk(3, &seen);
        assert_eq!(w.served(), ls(&[0]));
        assert_eq!(whiteouts(&w, &seen).len(), 1);
        // A whiteout below a file is never looked at.
        let seen = vec![vec![f(), wh(), d()]];
        let w = walk(3, &seen);
        assert!(whiteouts(&w, &seen).is_empty());
    }

    #[test]
    fn copied_up() {
        assert!(exists_elsewhere(&[vec![f(), M, f()]], l(0)));
        assert!(!exists_elsewhere(&[vec![f(), M, wh()]], l(0)));
        assert!(!exists_elsewhere(&[], l(0)));
    }

    #[test]
    fn paths() {
        let s = |p: &str| split_path(p.as_bytes());
        let v = |p: &[&str]| p.iter().map(|c| c.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(s("/a//b/./c/"), v(&["a", "b", "c"]));
        assert_eq!(s("/a/../../b"), v(&["b"]));
        assert_eq!(s("/"), v(&[]));
        let cases: &[(&str, usize, &str, &[&str])] = &[
            ("/bin/sh", 0, "usr/bin", &["usr", "bin", "sh"]),
            ("/bin/sh", 0, "/usr/bin", &["usr", "bin", "sh"]),
            ("/a/b/c", 1, "../x", &["x", "c"]),
            ("/a/b/c", 1, ".", &["a", "c"]),
            ("/a/b", 1, "/", &[]),
        ];
        for (path, at, target, want) in cases {
            assert_eq!(
                follow_symlink(&s(path), *at, target.as_bytes()),
                v(want),
                "{path} {at} {target}"
            );
        }
        assert_eq!(join_path(&v(&["a", "b"])), b"/a/b");
        assert_eq!(join_path(&[]), b"/");
    }
}
