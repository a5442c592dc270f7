//! `layerfs explain [--image IMAGE | --container NAME | MOUNTPOINT] PATH`:
//! why PATH looks the way it does in a stack.
//!
//! This is the thin I/O layer over [`crate::overlay::explain`]: it observes
//! what every layer directory holds along the path (fd-relative, one
//! component at a time, never following symlinks inside a layer), lets the
//! pure walk replay the mount's lookup, follows symlinks met in the middle of
//! the path, and renders the result as text or JSON. It reads the layer
//! directories directly: no FUSE round trip, and it works on images and
//! containers that are not mounted.
//!
//! "Copied up" means: the path is served by the upper layer and some lower
//! layer holds an entry at the same path (a copy-up, or a replacement; an
//! origin xattr, when present, is shown). Copy-up keeps the source's mtime,
//! so the time of the copy-up is best told by the upper copy's ctime.

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::layers::{self, LayerDesc, Target, TargetError};
use super::state;
use crate::overlay::explain::{
    self, HideReason, Met, OpaqueEnc, Outcome, Seen, WhiteoutEnc, join_path,
};
use crate::overlay::rules::{
    self, METACOPY_XATTRS, OPAQUE_MARKER, OPAQUE_XATTRS, Place, REDIRECT_XATTRS, WH_PREFIX,
};
use crate::overlay::trace::kind_name;
use crate::overlay::{LayerIdx, Role};
use crate::store::Store;
use crate::store::format::format_rfc3339;
use crate::sys::{self, Errno, FileKind, Stat, Timespec};

/// Symlinks followed before giving up (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// Extended attributes that record where a copied-up file came from.
const ORIGIN_PREFIXES: [&str; 3] = [
    "trusted.overlay.origin",
    "user.fuseoverlayfs.origin",
    "user.layerfs.",
];

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Explain PATH in an image of the store.
    #[arg(long, value_name = "IMAGE", conflicts_with = "container")]
    pub image: Option<String>,
    /// Explain PATH in a container's stack (its upper layer on its image).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// `MOUNTPOINT PATH`; `PATH` alone with --image/--container; or one
    /// path inside a mounted layerfs (e.g. /mnt/merged/etc/passwd).
    #[arg(value_name = "MOUNTPOINT PATH", num_args = 1..=2, required = true)]
    pub args: Vec<PathBuf>,
}

/// Why an explanation failed.
#[derive(Debug)]
pub enum ExplainError {
    Target(TargetError),
    Usage(String),
    /// A layer directory could not be read along the path.
    Layer {
        layer: String,
        dir: PathBuf,
        path: String,
        cause: Errno,
    },
    TooManySymlinks(String),
}

impl fmt::Display for ExplainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExplainError::Target(e) => e.fmt(f),
            ExplainError::Usage(s) => f.write_str(s),
            ExplainError::Layer {
                layer,
                dir,
                path,
                cause,
            } => write!(
                f,
                "cannot read {path} in {layer} {}: {cause}",
                dir.display()
            ),
            ExplainError::TooManySymlinks(p) => write!(f, "{p}: too many levels of symlinks"),
        }
    }
}

impl std::error::Error for ExplainError {}

/// What one layer holds at one path, beyond the union-relevant [`Seen`].
#[derive(Clone, Debug, Default)]
pub(super) struct Meta {
    pub(super) stat: Option<Stat>,
    pub(super) link: Option<Vec<u8>>,
    pub(super) origin: Vec<(String, String)>,
    /// A metadata-only copy: its data is in a layer below.
    pub(super) metacopy: bool,
}

/// Observations of every layer along `comps`: `[component][layer]`.
pub(super) struct Observation {
    pub(super) seen: Vec<Vec<Seen>>,
    pub(super) meta: Vec<Vec<Meta>>,
}

fn cstr(b: &[u8]) -> Result<std::ffi::CString, Errno> {
    sys::cstr(OsStr::from_bytes(b))
}

/// How directory `name` in `parent` is opaque, checked in the mount's order.
pub(super) fn opaque_of(parent: &OwnedFd, name: &[u8]) -> Result<Option<OpaqueEnc>, Errno> {
    let mut wh = WH_PREFIX.to_vec();
    wh.extend_from_slice(name);
    match sys::fstatat(parent.as_fd(), &cstr(&wh)?) {
        Ok(_) => return Ok(Some(OpaqueEnc::WhiteoutBeside)),
        Err(Errno::ENOENT | Errno::ENAMETOOLONG) => {}
        Err(e) => return Err(e),
    }
    let cname = cstr(name)?;
    let path = sys::proc_fd_path(parent.as_fd(), Some(&cname));
    for x in OPAQUE_XATTRS {
        match sys::lgetxattr(&path, x) {
            Ok(v) if v == b"y" => {
                return Ok(Some(OpaqueEnc::Xattr(x.to_string_lossy().into_owned())));
            }
            Ok(_) => {}
            Err(e) if sys::xattr_absent(e) => {}
            Err(e) => return Err(e),
        }
    }
    let dir = sys::openat(
        parent.as_fd(),
        &cname,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    match sys::fstatat(dir.as_fd(), &cstr(OPAQUE_MARKER)?) {
        Ok(_) => Ok(Some(OpaqueEnc::MarkerFile)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Origin-like xattrs of `name` in `parent` (name, printable value).
fn origin_xattrs(path: &CStr) -> Vec<(String, String)> {
    let Ok(names) = sys::llistxattr(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(n).into_owned();
        if !ORIGIN_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let Ok(cn) = cstr(n) else { continue };
        let v = sys::lgetxattr(path, &cn).unwrap_or_default();
        let shown = match std::str::from_utf8(&v) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
            _ => v.iter().map(|b| format!("{b:02x}")).collect(),
        };
        out.push((name, shown));
    }
    out
}

/// Where directory `name` in `parent` continues below, if it was renamed by
/// redirect (an unreadable or malformed value is no redirect, as on the
/// mount).
pub(super) fn redirect_of(parent: &OwnedFd, name: &[u8]) -> Result<Option<Place>, Errno> {
    let path = sys::proc_fd_path(parent.as_fd(), Some(&cstr(name)?));
    for x in REDIRECT_XATTRS {
        match sys::lgetxattr(&path, x) {
            Ok(v) => return Ok(rules::parse_redirect(&v).ok()),
            Err(e) if sys::xattr_absent(e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The directory at `comps` below `root`, if every component is a directory
/// there.
fn open_dir_at(root: &OwnedFd, comps: &[Vec<u8>]) -> Result<Option<OwnedFd>, Errno> {
    let mut cur = sys::openat(root.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for c in comps {
        let name = cstr(c)?;
        match sys::fstatat(cur.as_fd(), &name) {
            Ok(st) if st.kind() == FileKind::Dir => {}
            Ok(_) | Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        }
        cur = sys::openat(
            cur.as_fd(),
            &name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
    }
    Ok(Some(cur))
}

/// Observes one layer: component `c` of the path at `paths[c]` (the path's
/// own names, or where redirects in the layers above send this layer).
fn observe_layer(root: &Path, paths: &[Vec<Vec<u8>>]) -> Result<Vec<(Seen, Meta)>, (usize, Errno)> {
    let mut out = Vec::with_capacity(paths.len());
    let root = sys::open_dir_path(root).map_err(|e| (0, e))?;
    // The directory the previous component opened, and its path.
    let mut dir: Option<(&[Vec<u8>], OwnedFd)> = None;
    for (i, path) in paths.iter().enumerate() {
        let err = |e| (i, e);
        let Some((name, parent_path)) = path.split_last() else {
            out.push((Seen::Missing, Meta::default()));
            continue;
        };
        let parent = match dir.take() {
            Some((p, fd)) if p == parent_path => Some(fd),
            _ if i == 0 || parent_path.is_empty() || paths[i - 1].as_slice() != parent_path => {
                open_dir_at(&root, parent_path).map_err(err)?
            }
            // The previous component is this one's parent and was no
            // directory here.
            _ => None,
        };
        let Some(parent) = parent else {
            out.push((Seen::Missing, Meta::default()));
            continue;
        };
        let cname = cstr(name).map_err(err)?;
        let last = i + 1 == paths.len();
        match sys::fstatat(parent.as_fd(), &cname) {
            Ok(st) if st.is_whiteout() => out.push((
                Seen::Whiteout(WhiteoutEnc::CharDev),
                Meta {
                    stat: Some(st),
                    ..Meta::default()
                },
            )),
            Ok(st) => {
                let kind = st.kind();
                let mut meta = Meta {
                    stat: Some(st),
                    ..Meta::default()
                };
                let (mut opaque, mut redirect) = (None, None);
                if kind == FileKind::Dir {
                    opaque = opaque_of(&parent, name).map_err(err)?;
                    redirect = redirect_of(&parent, name).map_err(err)?;
                    if !last {
                        let fd = sys::openat(
                            parent.as_fd(),
                            &cname,
                            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                            0,
                        )
                        .map_err(err)?;
                        dir = Some((path.as_slice(), fd));
                    }
                } else if kind == FileKind::Symlink {
                    meta.link = Some(sys::readlinkat(parent.as_fd(), &cname).map_err(err)?);
                }
                if last {
                    let p = sys::proc_fd_path(parent.as_fd(), Some(&cname));
                    meta.origin = origin_xattrs(&p);
                    meta.metacopy = kind == FileKind::Regular
                        && sys::llistxattr(&p).is_ok_and(|names| {
                            names
                                .split(|&b| b == 0)
                                .any(|n| METACOPY_XATTRS.iter().any(|x| x.to_bytes() == n))
                        });
                }
                out.push((
                    Seen::Object {
                        kind,
                        opaque,
                        redirect,
                    },
                    meta,
                ));
            }
            Err(Errno::ENOENT) => {
                let mut wh = WH_PREFIX.to_vec();
                wh.extend_from_slice(name);
                let seen = match sys::fstatat(parent.as_fd(), &cstr(&wh).map_err(err)?) {
                    Ok(_) => Seen::Whiteout(WhiteoutEnc::WhFile),
                    Err(Errno::ENOENT | Errno::ENAMETOOLONG) => Seen::Missing,
                    Err(e) => return Err(err(e)),
                };
                out.push((seen, Meta::default()));
            }
            Err(Errno::ENOTDIR) => out.push((Seen::Missing, Meta::default())),
            Err(e) => return Err(err(e)),
        }
    }
    Ok(out)
}

/// Where component `c` of `comps` is for the layers below one that renamed
/// it: `place` (absolute, or a name in the parent's place), then the
/// path's own names.
fn redirected(paths: &mut [Vec<Vec<u8>>], comps: &[Vec<u8>], c: usize, place: &Place) {
    let base: Vec<Vec<u8>> = match place {
        Place::Abs(p) => explain::split_path(p),
        Place::Name(n) => {
            let mut b = paths[c][..paths[c].len().saturating_sub(1)].to_vec();
            b.push(n.to_vec());
            b
        }
    };
    for (c2, p) in paths.iter_mut().enumerate().skip(c) {
        let mut np = base.clone();
        np.extend_from_slice(&comps[c + 1..=c2]);
        *p = np;
    }
}

pub(super) fn observe(t: &Target, comps: &[Vec<u8>]) -> Result<Observation, ExplainError> {
    let n = comps.len();
    let mut seen = vec![Vec::with_capacity(t.layers.len()); n];
    let mut meta = vec![Vec::with_capacity(t.layers.len()); n];
    // Where each component is looked at in the current layer.
    let mut paths: Vec<Vec<Vec<u8>>> = (0..n).map(|c| comps[..=c].to_vec()).collect();
    for l in &t.layers {
        let col = observe_layer(&l.dir, &paths).map_err(|(i, cause)| ExplainError::Layer {
            layer: l.label(),
            dir: l.dir.clone(),
            path: show(&join_path(&paths[i.min(n.saturating_sub(1))])),
            cause,
        })?;
        // Shallower redirects first: a relative one deeper down is relative
        // to where its parent went.
        for (c, (s, _)) in col.iter().enumerate() {
            if let Seen::Object {
                redirect: Some(place),
                ..
            } = s
            {
                redirected(&mut paths, comps, c, place);
            }
        }
        for (i, (s, m)) in col.into_iter().enumerate() {
            seen[i].push(s);
            meta[i].push(m);
        }
    }
    Ok(Observation { seen, meta })
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn time(t: Timespec) -> String {
    format_rfc3339(t.sec, t.nsec as u32)
}

// ----------------------------------------------------------------------
// The report
// ----------------------------------------------------------------------

#[derive(Serialize, Debug)]
pub struct SymlinkHop {
    pub path: String,
    pub target: String,
    pub layer: u16,
}

#[derive(Serialize, Debug)]
pub struct MetOut {
    pub path: String,
    pub layer: u16,
    pub encoding: String,
}

#[derive(Serialize, Debug)]
pub struct ReasonOut {
    /// `whiteout`, `opaque`, `non_directory_above`, `directory_above`.
    pub why: &'static str,
    pub layer: u16,
    /// The path the reason applies to (the path itself or an ancestor).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

#[derive(Serialize, Debug)]
pub struct HiddenOut {
    pub layer: u16,
    pub kind: &'static str,
    pub reason: ReasonOut,
}

#[derive(Serialize, Debug)]
pub struct CopyUpOut {
    /// Lower layers holding an entry at the same path.
    pub also_in: Vec<u16>,
    pub upper_mtime: Option<String>,
    /// When the upper copy last changed status: the copy-up, or later.
    pub upper_ctime: Option<String>,
    pub origin_xattrs: Vec<(String, String)>,
}

/// A directory on the way that was renamed: the layers below hold it
/// elsewhere.
#[derive(Serialize, Debug)]
pub struct RenamedOut {
    /// The path of the merged view (the path itself or an ancestor).
    pub path: String,
    pub layer: u16,
    /// Its redirect: a name in the parent directory or an absolute path.
    pub redirect: String,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub source: layers::Source,
    pub path: String,
    /// The path after following symlinks met on the way.
    pub resolved: String,
    pub symlinks: Vec<SymlinkHop>,
    /// `found`, `whited_out`, `missing`, `not_a_directory`.
    pub status: &'static str,
    /// For a path that is not found: the component where the lookup ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<LayerDesc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// For a directory: every layer merged into it, top first.
    pub merged_from: Vec<u16>,
    pub hides: Vec<HiddenOut>,
    pub whiteouts: Vec<MetOut>,
    pub opaque_dirs: Vec<MetOut>,
    /// Renamed directories merged on the way, with their redirects.
    pub renamed: Vec<RenamedOut>,
    /// For a metadata-only copy: the layer whose file holds the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_from: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_up: Option<CopyUpOut>,
    pub layers: Vec<LayerDesc>,
}

/// Explains `path` (a path of the merged view) in `t`.
pub fn explain(t: &Target, path: &[u8]) -> Result<Report, ExplainError> {
    let mut comps = explain::split_path(path);
    let mut hops = Vec::new();
    loop {
        let obs = observe(t, &comps)?;
        let w = explain::walk(t.layers.len(), &obs.seen);
        if let Outcome::Symlink { component, layer } = w.outcome {
            if hops.len() >= MAX_SYMLINKS {
                return Err(ExplainError::TooManySymlinks(show(path)));
            }
            let target = obs.meta[component][layer.0 as usize]
                .link
                .clone()
                .unwrap_or_default();
            hops.push(SymlinkHop {
                path: show(&join_path(&comps[..=component])),
                target: show(&target),
                layer: layer.0,
            });
            comps = explain::follow_symlink(&comps, component, &target);
            continue;
        }
        return Ok(report(t, path, &comps, hops, &obs, &w));
    }
}

fn report(
    t: &Target,
    path: &[u8],
    comps: &[Vec<u8>],
    symlinks: Vec<SymlinkHop>,
    obs: &Observation,
    w: &explain::Walk,
) -> Report {
    let at = |c: usize| show(&join_path(&comps[..=c]));
    let desc = |l: LayerIdx| t.layers.get(l.0 as usize).cloned();
    let mut r = Report {
        source: t.source.clone(),
        path: show(&join_path(&explain::split_path(path))),
        resolved: show(&join_path(comps)),
        symlinks,
        status: "found",
        ends_at: None,
        served_by: None,
        kind: None,
        size: None,
        mtime: None,
        link_target: None,
        merged_from: Vec::new(),
        hides: Vec::new(),
        whiteouts: Vec::new(),
        opaque_dirs: Vec::new(),
        renamed: Vec::new(),
        data_from: None,
        copied_up: None,
        layers: t.layers.clone(),
    };
    match &w.outcome {
        Outcome::Found { top, kind, dirs } => {
            r.served_by = desc(*top);
            r.kind = Some(kind_name(*kind));
            r.merged_from = dirs.iter().map(|l| l.0).collect();
            if let Some(m) = comps
                .len()
                .checked_sub(1)
                .and_then(|c| obs.meta[c].get(top.0 as usize))
            {
                if let Some(st) = m.stat {
                    if *kind != FileKind::Dir {
                        r.size = Some(st.size);
                    }
                    r.mtime = Some(time(st.mtime));
                }
                r.link_target = m.link.as_deref().map(show);
                if m.metacopy {
                    let last = comps.len() - 1;
                    r.data_from = obs.seen[last]
                        .iter()
                        .enumerate()
                        .skip(top.0 as usize + 1)
                        .find(|(_, s)| s.kind() == Some(FileKind::Regular))
                        .map(|(i, _)| i as u16);
                }
                let upper = t.layers.get(top.0 as usize).map(|l| l.role) == Some(Role::Upper);
                if upper && explain::exists_elsewhere(&obs.seen, *top) {
                    let last = comps.len() - 1;
                    r.copied_up = Some(CopyUpOut {
                        also_in: obs.seen[last]
                            .iter()
                            .enumerate()
                            .filter(|(i, s)| *i != top.0 as usize && s.kind().is_some())
                            .map(|(i, _)| i as u16)
                            .collect(),
                        upper_mtime: m.stat.map(|s| time(s.mtime)),
                        upper_ctime: m.stat.map(|s| time(s.ctime)),
                        origin_xattrs: m.origin.clone(),
                    });
                }
            }
        }
        Outcome::Missing { component } => {
            r.status = "missing";
            r.ends_at = Some(at(*component));
        }
        Outcome::WhitedOut { component, .. } => {
            r.status = "whited_out";
            r.ends_at = Some(at(*component));
        }
        Outcome::NotADirectory { component, .. } | Outcome::Symlink { component, .. } => {
            r.status = "not_a_directory";
            r.ends_at = Some(at(*component));
        }
    }
    let met_out = |c: usize, l: LayerIdx, encoding: String| MetOut {
        path: at(c),
        layer: l.0,
        encoding,
    };
    r.whiteouts = explain::whiteouts(w, &obs.seen)
        .into_iter()
        .map(
            |Met {
                 component,
                 layer,
                 enc,
             }| met_out(component, layer, enc.name().into()),
        )
        .collect();
    r.opaque_dirs = explain::opaque_dirs(w, &obs.seen)
        .into_iter()
        .map(
            |Met {
                 component,
                 layer,
                 enc,
             }| met_out(component, layer, enc.name()),
        )
        .collect();
    for st in &w.steps {
        let Some(res) = &st.resolved else { continue };
        for &l in &res.dirs {
            if let Some(Seen::Object {
                redirect: Some(p), ..
            }) = obs.seen[st.component].get(l.0 as usize)
            {
                r.renamed.push(RenamedOut {
                    path: at(st.component),
                    layer: l.0,
                    redirect: show(p.as_bytes()),
                });
            }
        }
    }
    r.hides = explain::hidden(w, &obs.seen)
        .into_iter()
        .map(|h| HiddenOut {
            layer: h.layer.0,
            kind: kind_name(h.kind),
            reason: match h.reason {
                HideReason::Whiteout {
                    layer,
                    component,
                    enc,
                } => ReasonOut {
                    why: "whiteout",
                    layer: layer.0,
                    path: at(component),
                    encoding: Some(enc.name().into()),
                    kind: None,
                },
                HideReason::Opaque {
                    layer,
                    component,
                    enc,
                } => ReasonOut {
                    why: "opaque",
                    layer: layer.0,
                    path: at(component),
                    encoding: Some(enc.name()),
                    kind: None,
                },
                HideReason::NonDirectory {
                    layer,
                    component,
                    kind,
                } => ReasonOut {
                    why: "non_directory_above",
                    layer: layer.0,
                    path: at(component),
                    encoding: None,
                    kind: Some(kind_name(kind)),
                },
                HideReason::Directory { layer, component } => ReasonOut {
                    why: "directory_above",
                    layer: layer.0,
                    path: at(component),
                    encoding: None,
                    kind: Some("dir"),
                },
            },
        })
        .collect();
    r
}

/// Prose for an encoding name of the report.
fn encoding_prose(e: &str) -> String {
    match e {
        "chardev" => WhiteoutEnc::CharDev.describe().into(),
        "wh_file" => WhiteoutEnc::WhFile.describe().into(),
        "marker_file" => OpaqueEnc::MarkerFile.describe(),
        "wh_beside" => OpaqueEnc::WhiteoutBeside.describe(),
        x => match x.strip_prefix("xattr:") {
            Some(n) => OpaqueEnc::Xattr(n.into()).describe(),
            None => x.into(),
        },
    }
}

/// The report as text for people.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let label = |i: u16| {
        r.layers
            .get(i as usize)
            .map_or_else(|| format!("layer {i}"), LayerDesc::label)
    };
    let mut o = String::new();
    let _ = writeln!(o, "{}  in {}", r.path, r.source);
    for h in &r.symlinks {
        let _ = writeln!(
            o,
            "  via symlink   {} -> {} (from {})",
            h.path,
            h.target,
            label(h.layer)
        );
    }
    if r.resolved != r.path {
        let _ = writeln!(o, "  resolved      {}", r.resolved);
    }
    match (&r.served_by, r.status) {
        (Some(l), _) => {
            let _ = writeln!(o, "  served by     {}  {}", l.label(), l.dir.display());
            let mut what = r.kind.unwrap_or("?").to_string();
            if let Some(s) = r.size {
                let _ = write!(what, ", {s} bytes");
            }
            if let Some(t) = &r.link_target {
                let _ = write!(what, " -> {t}");
            }
            if let Some(m) = &r.mtime {
                let _ = write!(what, ", modified {m}");
            }
            let _ = writeln!(o, "  type          {what}");
            if r.merged_from.len() > 1 {
                let ls: Vec<String> = r.merged_from.iter().map(|l| l.to_string()).collect();
                let _ = writeln!(o, "  merged from   layers {}", ls.join(", "));
            }
            if let Some(d) = r.data_from {
                let _ = writeln!(
                    o,
                    "  data in       {} (a metadata-only copy: the data is copied up on first write)",
                    label(d)
                );
            }
            for x in &r.renamed {
                let below = match x.redirect.starts_with('/') {
                    true => x.redirect.clone(),
                    false => format!("the name {} in its parent", x.redirect),
                };
                let _ = writeln!(
                    o,
                    "  renamed       {} in {}: the layers below hold it at {below} (overlay.redirect)",
                    x.path,
                    label(x.layer)
                );
            }
        }
        (None, status) => {
            let why = match status {
                "whited_out" => "hidden by a whiteout",
                "missing" => "no layer has it",
                _ => "a parent is not a directory",
            };
            let _ = writeln!(
                o,
                "  not found     {why} (lookup ends at {})",
                r.ends_at.as_deref().unwrap_or("?")
            );
        }
    }
    match &r.copied_up {
        Some(c) => {
            let also: Vec<String> = c.also_in.iter().map(|l| l.to_string()).collect();
            let _ = writeln!(
                o,
                "  copied up     yes: the upper layer holds it and layer {} too",
                also.join(", ")
            );
            if let Some(ct) = &c.upper_ctime {
                let _ = writeln!(o, "                upper copy changed {ct} (ctime)");
            }
            for (n, v) in &c.origin_xattrs {
                let _ = writeln!(o, "                {n} = {v}");
            }
        }
        None if r.served_by.as_ref().is_some_and(|l| l.role == Role::Upper) => {
            let _ = writeln!(
                o,
                "  copied up     no: only the upper layer has it (created there)"
            );
        }
        None => {}
    }
    if r.hides.is_empty() {
        let _ = writeln!(o, "  hides         nothing");
    }
    for (i, h) in r.hides.iter().enumerate() {
        let because = match h.reason.why {
            "whiteout" => format!(
                "whiteout of {} in {} ({})",
                h.reason.path,
                label(h.reason.layer),
                encoding_prose(h.reason.encoding.as_deref().unwrap_or(""))
            ),
            "opaque" => format!(
                "opaque directory {} in {} ({})",
                h.reason.path,
                label(h.reason.layer),
                encoding_prose(h.reason.encoding.as_deref().unwrap_or(""))
            ),
            "directory_above" => format!(
                "covered by the directory {} in {}",
                h.reason.path,
                label(h.reason.layer)
            ),
            _ => format!(
                "covered by the {} {} in {}",
                h.reason.kind.unwrap_or("entry"),
                h.reason.path,
                label(h.reason.layer)
            ),
        };
        let head = if i == 0 {
            "  hides         "
        } else {
            "                "
        };
        let _ = writeln!(o, "{head}{} in {}: {because}", h.kind, label(h.layer));
    }
    for (title, marks) in [("whiteouts", &r.whiteouts), ("opaque dirs", &r.opaque_dirs)] {
        for (i, m) in marks.iter().enumerate() {
            let head = if i == 0 { title } else { "" };
            let _ = writeln!(
                o,
                "  {head:<14}{} in {} ({})",
                m.path,
                label(m.layer),
                encoding_prose(&m.encoding)
            );
        }
    }
    o
}

/// Finds the stack and the path inside it from the command line.
fn target_and_path(args: &ExplainArgs, store: &Store) -> Result<(Target, Vec<u8>), ExplainError> {
    let path_bytes = |p: &Path| p.as_os_str().as_bytes().to_vec();
    match (&args.image, &args.container, args.args.as_slice()) {
        (Some(i), None, [p]) => Ok((
            layers::from_image(store, i).map_err(ExplainError::Target)?,
            path_bytes(p),
        )),
        (None, Some(c), [p]) => Ok((
            layers::from_container(store, c).map_err(ExplainError::Target)?,
            path_bytes(p),
        )),
        (Some(_), _, _) | (_, Some(_), _) => Err(ExplainError::Usage(
            "with --image or --container, give only the PATH to explain".into(),
        )),
        (None, None, [m, p]) => {
            let st = state::find(m).map_err(|e| ExplainError::Target(TargetError::State(e)))?;
            Ok((layers::from_mount(&st), path_bytes(p)))
        }
        (None, None, [p]) => {
            let (st, inner) = state::find_containing(p)
                .map_err(|e| ExplainError::Target(TargetError::State(e)))?;
            Ok((layers::from_mount(&st), path_bytes(&inner)))
        }
        _ => Err(ExplainError::Usage(
            "usage: layerfs explain [--image IMAGE | --container NAME | MOUNTPOINT] PATH".into(),
        )),
    }
}

pub fn run(args: ExplainArgs, store: &Store) -> i32 {
    let r = target_and_path(&args, store).and_then(|(t, p)| explain(&t, &p));
    match r {
        Ok(r) if args.json => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            0
        }
        Ok(r) => {
            print!("{}", render(&r));
            0
        }
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}
