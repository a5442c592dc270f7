//! `layerfs diff UPPERDIR` / `layerfs diff --container NAME`: the changes an
//! upper layer makes to its lower layers, as `docker diff` prints them
//! (`A path`, `C path`, `D path`, sorted by path).
//!
//! Semantics: the comparison is between the merged view of the lower layers
//! and the merged view with the upper layer on top, using the mount's rules:
//! - an upper entry whose path the lower view does not show: `A`;
//! - an upper entry whose path the lower view shows: `C` (a directory only
//!   if something under it changed or its mode, owner or mtime differ);
//! - a whiteout hiding something the lower view shows: `D`; a whiteout that
//!   hides nothing is no change;
//! - an opaque directory (or a directory under one) that replaces a lower
//!   directory: every name the lower view shows in it and the upper layer
//!   does not have: `D`;
//! - a directory renamed by redirect replaces what the lower view shows at
//!   its new path (like an opaque one), and everything it brings from its
//!   old place is `A` (read through the merged view); its old name is a
//!   whiteout, so `D`;
//! - every directory above a change that exists below is `C`, as docker does.
//!
//! The work directory (when it is inside the upper one) and, for containers,
//! the files the runner bind-mounts (/etc/resolv.conf, /etc/hosts,
//! /etc/hostname) are left out, with everything under them.
//!
//! The lower layers of `diff UPPERDIR` come from `--image`, `--layer`, or a
//! live mount whose upper directory it is.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::Args;

use super::explain::{ExplainError, observe, opaque_of, redirect_of};
use super::layers::{self, Target, TargetError};
use super::state;
use crate::overlay::Role;
use crate::overlay::explain::{Outcome, join_path, walk};
use crate::overlay::rules::{self, EntryKind, LayerEntry, NameClass};
use crate::overlay::{Ino, LayerIdx};
use crate::store::Store;
use crate::store::merged::{MergedError, MergedView};
use crate::sys::{self, Errno, FileKind, Stat};

/// Files the runner bind-mounts into containers.
pub const RUNNER_INJECTED: [&str; 3] = ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"];

/// A change, in docker's letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Added,
    Changed,
    Deleted,
}

impl Change {
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// What the lower view shows at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Below {
    pub is_dir: bool,
    /// For a directory over a directory: mode, owner and mtime are equal.
    pub same_meta: bool,
}

/// One fact found while walking the upper layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    /// A whiteout; `below`: the lower view shows the path.
    Whiteout { below: bool },
    /// An object of the upper layer.
    Object { is_dir: bool, below: Option<Below> },
    /// A name the lower view shows inside a directory that does not merge
    /// with it (opaque), absent from the upper layer.
    Replaced,
}

/// Computes the change list (pure). Paths are absolute (`/a/b`); `exclude`
/// removes paths and everything under them.
pub fn changes(facts: &[(Vec<u8>, Fact)], exclude: &[Vec<u8>]) -> Vec<(Change, Vec<u8>)> {
    let excluded = |p: &[u8]| {
        exclude
            .iter()
            .any(|e| p == &e[..] || (p.starts_with(e) && p.get(e.len()) == Some(&b'/')))
    };
    let by_path: BTreeMap<&[u8], &Fact> = facts.iter().map(|(p, f)| (&p[..], f)).collect();
    let mut out: BTreeMap<Vec<u8>, Change> = BTreeMap::new();
    for (p, f) in facts {
        if excluded(p) {
            continue;
        }
        let c = match f {
            Fact::Whiteout { below: true } | Fact::Replaced => Some(Change::Deleted),
            Fact::Whiteout { below: false } => None,
            Fact::Object { below: None, .. } => Some(Change::Added),
            Fact::Object {
                is_dir: true,
                below:
                    Some(Below {
                        is_dir: true,
                        same_meta,
                    }),
            } => (!same_meta).then_some(Change::Changed),
            Fact::Object { .. } => Some(Change::Changed),
        };
        let Some(c) = c else { continue };
        out.insert(p.clone(), c);
        // Every directory above that exists below has changed.
        let mut cur: &[u8] = p;
        while let Some(i) = cur.iter().rposition(|&b| b == b'/').filter(|&i| i > 0) {
            cur = &cur[..i];
            if let Some(Fact::Object {
                below: Some(Below { is_dir: true, .. }),
                ..
            }) = by_path.get(cur)
            {
                out.entry(cur.to_vec()).or_insert(Change::Changed);
            }
        }
    }
    out.into_iter().map(|(p, c)| (c, p)).collect()
}

/// Why a diff could not be computed.
#[derive(Debug)]
pub enum DiffError {
    Target(TargetError),
    Explain(ExplainError),
    Usage(String),
    Upper {
        dir: PathBuf,
        path: String,
        cause: Errno,
    },
    /// Opening the merged view of the layers (for a renamed directory).
    MergedView(MergedError),
    /// Reading a path through that view.
    Merged {
        path: String,
        cause: Errno,
    },
}

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffError::Target(e) => e.fmt(f),
            DiffError::Explain(e) => e.fmt(f),
            DiffError::Usage(s) => f.write_str(s),
            DiffError::MergedView(e) => e.fmt(f),
            DiffError::Merged { path, cause } => write!(
                f,
                "cannot read {path} in the merged view of the layers: {cause}"
            ),
            DiffError::Upper { dir, path, cause } => write!(
                f,
                "cannot read {path} in upper directory {}: {cause}",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for DiffError {}

/// The lower view at a path: what it shows there and, for a directory, the
/// layers merged into it.
fn lower_at(lowers: &Target, comps: &[Vec<u8>]) -> Result<Option<(Stat, Vec<u16>)>, DiffError> {
    let obs = observe(lowers, comps).map_err(DiffError::Explain)?;
    let w = walk(lowers.layers.len(), &obs.seen);
    let Outcome::Found { top, dirs, .. } = w.outcome else {
        return Ok(None);
    };
    let Some(last) = comps.len().checked_sub(1) else {
        return Ok(None);
    };
    Ok(obs.meta[last][top.0 as usize]
        .stat
        .map(|st| (st, dirs.iter().map(|l| l.0).collect())))
}

/// The names the lower view shows in a directory merged from `dirs`.
fn lower_names(
    lowers: &Target,
    dirs: &[u16],
    comps: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, DiffError> {
    let rel = String::from_utf8_lossy(&join_path(comps)).into_owned();
    let mut per_layer = Vec::new();
    for &d in dirs {
        let Some(l) = lowers.layers.get(d as usize) else {
            continue;
        };
        let err = |cause| {
            DiffError::Explain(ExplainError::Layer {
                layer: l.label(),
                dir: l.dir.clone(),
                path: rel.clone(),
                cause,
            })
        };
        let mut p = l.dir.clone();
        for c in comps {
            p.push(OsStr::from_bytes(c));
        }
        let fd = sys::open_dir_path(&p).map_err(err)?;
        let rd =
            sys::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(err)?;
        let mut entries = Vec::new();
        for e in sys::read_dir(rd.as_fd()).map_err(err)? {
            let cname = sys::cstr(OsStr::from_bytes(&e.name)).map_err(err)?;
            let kind = match sys::fstatat(rd.as_fd(), &cname) {
                Ok(st) if st.is_whiteout() => EntryKind::Whiteout,
                Ok(st) => EntryKind::File(st.kind()),
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(err(e)),
            };
            entries.push(LayerEntry {
                name: e.name,
                ino: e.ino,
                kind,
            });
        }
        per_layer.push((crate::overlay::LayerIdx(d), entries));
    }
    Ok(rules::merge_listing(per_layer)
        .into_iter()
        .map(|m| m.name)
        .collect())
}

fn same_meta(a: &Stat, b: &Stat) -> bool {
    a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.mtime == b.mtime
}

/// Walks the upper layer of `t` and collects the facts `changes` needs.
pub fn collect(t: &Target) -> Result<Vec<(Vec<u8>, Fact)>, DiffError> {
    let upper = t
        .upper()
        .ok_or_else(|| DiffError::Usage("the stack has no upper layer".into()))?;
    let lowers = Target {
        source: t.source.clone(),
        layers: t
            .layers
            .iter()
            .filter(|l| l.role == Role::Lower)
            .cloned()
            .enumerate()
            .map(|(i, mut l)| {
                l.index = i as u16;
                l
            })
            .collect(),
        workdir: None,
    };
    let work_id = t
        .workdir
        .as_ref()
        .and_then(|w| std::fs::symlink_metadata(w).ok())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
    let mut facts = Vec::new();
    let mut merged: Option<MergedView> = None;
    // (components of the directory, whether it merges with the lower view)
    let mut stack: Vec<(Vec<Vec<u8>>, bool)> = vec![(Vec::new(), true)];
    while let Some((dir, merging)) = stack.pop() {
        let rel = String::from_utf8_lossy(&join_path(&dir)).into_owned();
        let err = |cause| DiffError::Upper {
            dir: upper.dir.clone(),
            path: rel.clone(),
            cause,
        };
        let mut p = upper.dir.clone();
        for c in &dir {
            p.push(OsStr::from_bytes(c));
        }
        let fd = sys::open_dir_path(&p).map_err(err)?;
        let rd =
            sys::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(err)?;
        let mut names: Vec<Vec<u8>> = sys::read_dir(rd.as_fd())
            .map_err(err)?
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        for name in names {
            let mut comps = dir.clone();
            let whiteout_of = match rules::classify(&name) {
                NameClass::OpaqueMarker | NameClass::Reserved => continue,
                NameClass::Whiteout(target) => Some(target.to_vec()),
                NameClass::Plain => None,
            };
            if let Some(target) = whiteout_of {
                if merging {
                    comps.push(target);
                    let below = lower_at(&lowers, &comps)?.is_some();
                    facts.push((join_path(&comps), Fact::Whiteout { below }));
                }
                continue;
            }
            let cname = sys::cstr(OsStr::from_bytes(&name)).map_err(err)?;
            let st = match sys::fstatat(rd.as_fd(), &cname) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(err(e)),
            };
            comps.push(name.clone());
            if st.is_whiteout() {
                if merging {
                    let below = lower_at(&lowers, &comps)?.is_some();
                    facts.push((join_path(&comps), Fact::Whiteout { below }));
                }
                continue;
            }
            let is_dir = st.kind() == FileKind::Dir;
            if is_dir && work_id == Some((st.dev, st.ino)) {
                continue;
            }
            let low = lower_at(&lowers, &comps)?;
            let below = low.as_ref().map(|(lst, _)| Below {
                is_dir: lst.kind() == FileKind::Dir,
                same_meta: same_meta(&st, lst),
            });
            facts.push((join_path(&comps), Fact::Object { is_dir, below }));
            if is_dir {
                let opaque = opaque_of(&fd, &name).map_err(err)?.is_some();
                // A renamed directory's contents come from its old place:
                // what the lower view shows at its new path is replaced,
                // and what it brings along is added.
                let renamed = redirect_of(&fd, &name).map_err(err)?.is_some();
                if renamed {
                    let view = match &merged {
                        Some(v) => v,
                        None => merged.insert(merged_view(upper, &lowers)?),
                    };
                    brought_along(view, &comps, &mut facts)?;
                }
                let child_merging = merging && !opaque && !renamed;
                if let Some((lst, dirs)) = &low
                    && lst.kind() == FileKind::Dir
                    && !child_merging
                {
                    // The lower view's names in it are replaced wholesale.
                    stack.push((comps.clone(), false));
                    let upper_names = upper_names(&p, &name).map_err(err)?;
                    for n in lower_names(&lowers, dirs, &comps)? {
                        if !upper_names.contains(&n) {
                            let mut c = comps.clone();
                            c.push(n);
                            facts.push((join_path(&c), Fact::Replaced));
                        }
                    }
                    continue;
                }
                stack.push((comps, child_merging));
            }
        }
    }
    Ok(facts)
}

fn merged_view(upper: &layers::LayerDesc, lowers: &Target) -> Result<MergedView, DiffError> {
    let mut dirs = vec![upper.dir.clone()];
    dirs.extend(lowers.layers.iter().map(|l| l.dir.clone()));
    MergedView::open(&dirs).map_err(DiffError::MergedView)
}

/// Adds, as new, what a renamed directory at `comps` shows that the upper
/// layer does not hold itself (it comes from the directory's old place).
fn brought_along(
    view: &MergedView,
    comps: &[Vec<u8>],
    facts: &mut Vec<(Vec<u8>, Fact)>,
) -> Result<(), DiffError> {
    let err = |c: &[Vec<u8>], cause: Errno| DiffError::Merged {
        path: String::from_utf8_lossy(&join_path(c)).into_owned(),
        cause,
    };
    let (ino, _) = view.lookup(&join_path(comps)).map_err(|e| err(comps, e))?;
    let mut todo = vec![(comps.to_vec(), ino)];
    while let Some((dir, ino)) = todo.pop() {
        for item in view.list(ino).map_err(|e| err(&dir, e))? {
            let mut c = dir.clone();
            c.push(item.name.to_vec());
            let is_dir = item.kind == FileKind::Dir;
            if item.layer != LayerIdx(0) {
                facts.push((
                    join_path(&c),
                    Fact::Object {
                        is_dir,
                        below: None,
                    },
                ));
            }
            if is_dir {
                let st = view.child(ino, &item.name).map_err(|e| err(&c, e))?;
                todo.push((c, Ino(st.ino)));
            }
        }
    }
    Ok(())
}

/// The plain (non-whiteout, non-marker) names of upper directory `parent/name`.
fn upper_names(parent: &Path, name: &[u8]) -> Result<BTreeSet<Vec<u8>>, Errno> {
    let fd = sys::open_dir_path(&parent.join(OsStr::from_bytes(name)))?;
    let rd = sys::openat(fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut out = BTreeSet::new();
    for e in sys::read_dir(rd.as_fd())? {
        if rules::classify(&e.name) != NameClass::Plain {
            continue;
        }
        let cname = sys::cstr(OsStr::from_bytes(&e.name))?;
        match sys::fstatat(rd.as_fd(), &cname) {
            Ok(st) if st.is_whiteout() => {}
            Ok(_) => {
                out.insert(e.name);
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// A container: its upper layer against its image.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["upperdir", "image", "layers"])]
    pub container: Option<String>,
    /// The lower layers are this image's.
    #[arg(long, value_name = "IMAGE", conflicts_with = "layers")]
    pub image: Option<String>,
    /// A lower layer directory; repeat it, the first one is the top.
    #[arg(long = "layer", value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    /// The work directory, left out if it is inside UPPERDIR.
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Leave out this path of the merged view and everything under it.
    #[arg(long, value_name = "PATH")]
    pub exclude: Vec<String>,
    /// The upper directory.
    #[arg(value_name = "UPPERDIR", required_unless_present = "container")]
    pub upperdir: Option<PathBuf>,
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| crate::overlay::layers::absolute(p))
}

fn target(args: &DiffArgs, store: &Store) -> Result<(Target, Vec<Vec<u8>>), DiffError> {
    let mut exclude: Vec<Vec<u8>> = args
        .exclude
        .iter()
        .map(|e| join_path(&crate::overlay::explain::split_path(e.as_bytes())))
        .collect();
    if let Some(c) = &args.container {
        let t = layers::from_container(store, c).map_err(DiffError::Target)?;
        exclude.extend(RUNNER_INJECTED.iter().map(|p| p.as_bytes().to_vec()));
        return Ok((t, exclude));
    }
    let Some(upper) = &args.upperdir else {
        return Err(DiffError::Usage("give UPPERDIR or --container NAME".into()));
    };
    let upper = canonical(upper);
    let mut t = if let Some(i) = &args.image {
        layers::from_image(store, i).map_err(DiffError::Target)?
    } else if !args.layers.is_empty() {
        let lowers: Vec<PathBuf> = args.layers.iter().map(|l| canonical(l)).collect();
        Target {
            source: layers::Source::Mount {
                mountpoint: PathBuf::new(),
                pid: 0,
                image: None,
            },
            layers: layers::describe(None, &lowers),
            workdir: None,
        }
    } else {
        let st = state::list()
            .into_iter()
            .find(|s| s.upperdir.as_deref() == Some(upper.as_path()))
            .ok_or_else(|| {
                DiffError::Usage(format!(
                    "no lower layers for {}: give --image IMAGE or --layer DIR, or mount it",
                    upper.display()
                ))
            })?;
        layers::from_mount(&st)
    };
    let lowers: Vec<PathBuf> = t
        .layers
        .iter()
        .filter(|l| l.role == Role::Lower)
        .map(|l| l.dir.clone())
        .collect();
    t.layers = layers::describe(Some(&upper), &lowers);
    if let Some(w) = &args.work {
        t.workdir = Some(canonical(w));
    }
    Ok((t, exclude))
}

pub fn run(args: DiffArgs, store: &Store) -> i32 {
    let r = target(&args, store).and_then(|(t, ex)| Ok((collect(&t)?, ex)));
    match r {
        Ok((facts, ex)) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for (c, p) in changes(&facts, &ex) {
                let _ = writeln!(out, "{} {}", c.letter(), String::from_utf8_lossy(&p));
            }
            0
        }
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(is_dir: bool, below: Option<(bool, bool)>) -> Fact {
        Fact::Object {
            is_dir,
            below: below.map(|(is_dir, same_meta)| Below { is_dir, same_meta }),
        }
    }

    /// A renamed lower directory: its old name is deleted, it and what it
    /// brings along are added; a name deleted in it is simply not there.
    #[test]
    fn renamed_directory_is_deleted_and_added() {
        let d = tempfile::tempdir().unwrap();
        let (l, u) = (d.path().join("l"), d.path().join("u"));
        std::fs::create_dir_all(l.join("d/sub")).unwrap();
        std::fs::write(l.join("d/x"), "x").unwrap();
        std::fs::write(l.join("d/sub/y"), "y").unwrap();
        std::fs::create_dir_all(u.join("e")).unwrap();
        std::fs::write(u.join(".wh.d"), "").unwrap();
        std::fs::write(u.join("e/new"), "").unwrap();
        std::fs::write(u.join("e/.wh.x"), "").unwrap();
        let c = sys::cstr(u.join("e").as_os_str()).unwrap();
        sys::lsetxattr(&c, c"user.overlay.redirect", b"d", 0).unwrap();
        let t = Target {
            source: layers::Source::Mount {
                mountpoint: PathBuf::new(),
                pid: 0,
                image: None,
            },
            layers: layers::describe(Some(&u), std::slice::from_ref(&l)),
            workdir: None,
        };
        let got: Vec<String> = changes(&collect(&t).unwrap(), &[])
            .into_iter()
            .map(|(c, p)| format!("{} {}", c.letter(), String::from_utf8_lossy(&p)))
            .collect();
        assert_eq!(got, ["D /d", "A /e", "A /e/new", "A /e/sub", "A /e/sub/y"]);
    }

    #[test]
    fn changes_table() {
        type Case = (
            Vec<(&'static str, Fact)>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            // A new file in a copied-up directory: the directory changed.
            (
                vec![
                    ("/etc", obj(true, Some((true, true)))),
                    ("/etc/new", obj(false, None)),
                ],
                vec![],
                vec!["C /etc", "A /etc/new"],
            ),
            // A modified file deep down: every directory above is C.
            (
                vec![
                    ("/usr", obj(true, Some((true, true)))),
                    ("/usr/lib", obj(true, Some((true, true)))),
                    ("/usr/lib/x.so", obj(false, Some((false, false)))),
                ],
                vec![],
                vec!["C /usr", "C /usr/lib", "C /usr/lib/x.so"],
            ),
            // A whiteout over something below is D; over nothing, no change.
            (
                vec![
                    ("/tmp", obj(true, Some((true, true)))),
                    ("/tmp/gone", Fact::Whiteout { below: true }),
                    ("/stale", Fact::Whiteout { below: false }),
                ],
                vec![],
                vec!["C /tmp", "D /tmp/gone"],
            ),
            // A new directory and its contents are all A.
            (
                vec![("/app", obj(true, None)), ("/app/main", obj(false, None))],
                vec![],
                vec!["A /app", "A /app/main"],
            ),
            // A copied-up directory with nothing changed under it and the
            // same metadata is no change; with other metadata it is C.
            (
                vec![
                    ("/a", obj(true, Some((true, true)))),
                    ("/b", obj(true, Some((true, false)))),
                ],
                vec![],
                vec!["C /b"],
            ),
            // An opaque directory replacing a lower one.
            (
                vec![
                    ("/o", obj(true, Some((true, false)))),
                    ("/o/old", Fact::Replaced),
                    ("/o/new", obj(false, None)),
                ],
                vec![],
                vec!["C /o", "A /o/new", "D /o/old"],
            ),
            // A directory replacing a file is C.
            (
                vec![("/x", obj(true, Some((false, false))))],
                vec![],
                vec!["C /x"],
            ),
            // Runner-injected files and their effect on /etc are left out.
            (
                vec![
                    ("/etc", obj(true, Some((true, true)))),
                    ("/etc/hosts", obj(false, Some((false, false)))),
                    ("/etc/resolv.conf", obj(false, None)),
                    ("/etcetera", obj(false, None)),
                ],
                vec!["/etc/hosts", "/etc/resolv.conf"],
                vec!["A /etcetera"],
            ),
        ];
        for (facts, exclude, want) in cases {
            let facts: Vec<(Vec<u8>, Fact)> = facts
                .into_iter()
                .map(|(p, f)| (p.as_bytes().to_vec(), f))
                .collect();
            let ex: Vec<Vec<u8>> = exclude.iter().map(|e| e.as_bytes().to_vec()).collect();
            let got: Vec<String> = changes(&facts, &ex)
                .into_iter()
                .map(|(c, p)| format!("{} {}", c.letter(), String::from_utf8_lossy(&p)))
                .collect();
            assert_eq!(got, want, "{facts:?}");
        }
    }
}
