//! `layerfs layers MOUNTPOINT|IMAGE|CONTAINER`: the layer stack, top first,
//! with each layer's role, digests (when it comes from the store), directory,
//! apparent size, entry count and whiteout count.
//!
//! Also home of [`Target`]: a stack of layer directories named by a live
//! mount (its published state, see `state`), an image of the store, or a
//! container, shared by `explain` and `diff`.
//!
//! Containers are found through the runner's records (`runner::record`):
//! their stack is `upper/` over the `init/` layer over the image's layers,
//! as the runner mounts it.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::state::{self, MountState, StateError};
use crate::overlay::Role;
use crate::overlay::rules::{self, NameClass};
use crate::runner::record::{self, RecordError};
use crate::store::format::{human_size, table};
use crate::store::{LayerInfo, Store, StoreError, image_name};

/// One layer of a target, top first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerDesc {
    pub index: u16,
    #[serde(serialize_with = "ser_role")]
    pub role: Role,
    pub dir: PathBuf,
    /// When the layer is a store layer.
    pub diff_id: Option<String>,
    pub digest: Option<String>,
}

fn ser_role<S: serde::Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(role_name(*r))
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Upper => "upper",
        Role::Lower => "lower",
    }
}

impl LayerDesc {
    /// `layer 2 (lower, sha256:0123456789ab)`.
    pub fn label(&self) -> String {
        match &self.diff_id {
            Some(d) => format!(
                "layer {} ({}, {})",
                self.index,
                role_name(self.role),
                short_digest(d)
            ),
            None => format!("layer {} ({})", self.index, role_name(self.role)),
        }
    }
}

/// `sha256:` and the first 12 hex digits.
pub fn short_digest(d: &str) -> &str {
    let end = d.find(':').map_or(12, |i| i + 13).min(d.len());
    &d[..end]
}

/// Where a stack came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    Mount {
        mountpoint: PathBuf,
        pid: u32,
        image: Option<String>,
    },
    Image {
        name: String,
        id: String,
    },
    Container {
        name: String,
        id: String,
        image: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Mount {
                mountpoint, pid, ..
            } => write!(f, "mount {} (pid {pid})", mountpoint.display()),
            Source::Image { name, id } => write!(f, "image {name} ({})", short_digest(id)),
            Source::Container { name, id, image } => {
                write!(f, "container {name} ({}) of {image}", record::short(id))
            }
        }
    }
}

/// A stack of layer directories to look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub source: Source,
    pub layers: Vec<LayerDesc>,
    pub workdir: Option<PathBuf>,
}

impl Target {
    /// The upper layer, when the stack has one.
    pub fn upper(&self) -> Option<&LayerDesc> {
        self.layers.first().filter(|l| l.role == Role::Upper)
    }
}

/// Why a target could not be found.
#[derive(Debug)]
pub enum TargetError {
    Store(StoreError),
    State(StateError),
    Container(RecordError),
    /// The container's image is gone from the store.
    ContainerImage {
        container: String,
        image: StoreError,
    },
    /// Neither a mount, a container nor an image.
    Unknown {
        name: String,
        image: StoreError,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Store(e) => e.fmt(f),
            TargetError::State(e) => e.fmt(f),
            TargetError::Container(e) => e.fmt(f),
            TargetError::ContainerImage { container, image } => {
                write!(f, "container {container}: {image}")
            }
            TargetError::Unknown { name, image } => write!(
                f,
                "{name} is not a layerfs mountpoint, a container or an image ({image})"
            ),
        }
    }
}

impl std::error::Error for TargetError {}

/// The store's digests of a layer directory `.../layers/HEX/diff`, when it
/// has a `layer.json` beside it.
fn store_digests(dir: &Path) -> (Option<String>, Option<String>) {
    let Some(info) = dir
        .parent()
        .filter(|_| dir.file_name().is_some_and(|n| n == "diff"))
        .and_then(|p| fs::read(p.join("layer.json")).ok())
        .and_then(|b| serde_json::from_slice::<LayerInfo>(&b).ok())
    else {
        return (None, None);
    };
    (
        Some(info.diff_id.to_string()),
        Some(info.blob.digest.to_string()),
    )
}

/// Describes `lowers` (top first) under an optional upper layer.
pub fn describe(upper: Option<&Path>, lowers: &[PathBuf]) -> Vec<LayerDesc> {
    let mut out = Vec::new();
    let all = upper
        .map(|u| (u.to_path_buf(), Role::Upper))
        .into_iter()
        .chain(lowers.iter().map(|l| (l.clone(), Role::Lower)));
    for (i, (dir, role)) in all.enumerate() {
        let (diff_id, digest) = store_digests(&dir);
        out.push(LayerDesc {
            index: i as u16,
            role,
            dir,
            diff_id,
            digest,
        });
    }
    out
}

/// The stack of a live mount.
pub fn from_mount(st: &MountState) -> Target {
    Target {
        source: Source::Mount {
            mountpoint: st.mountpoint.clone(),
            pid: st.pid,
            image: st.source.clone(),
        },
        layers: describe(st.upperdir.as_deref(), &st.lowerdirs),
        workdir: st.workdir.clone(),
    }
}

/// The stack of an image of the store (read-only).
pub fn from_image(store: &Store, name: &str) -> Result<Target, TargetError> {
    let img = store.resolve(name).map_err(TargetError::Store)?;
    let dirs = store.layer_dirs(&img).map_err(TargetError::Store)?;
    Ok(Target {
        source: Source::Image {
            name: image_name(&img),
            id: img.id.to_string(),
        },
        layers: describe(None, &dirs),
        workdir: None,
    })
}

/// The stack of a container (name, ID or unique ID prefix): its upper
/// layer over its init layer over its image's layers.
pub fn from_container(store: &Store, name: &str) -> Result<Target, TargetError> {
    let (c, rec) = record::find(store, name).map_err(TargetError::Container)?;
    let image_err = |image| TargetError::ContainerImage {
        container: rec.name.clone(),
        image,
    };
    let img = store.resolve(&rec.image).map_err(image_err)?;
    let mut lowers = vec![c.init()];
    lowers.extend(store.layer_dirs(&img).map_err(image_err)?);
    Ok(Target {
        source: Source::Container {
            name: rec.name.clone(),
            id: rec.id.clone(),
            image: rec.image_name.clone(),
        },
        layers: describe(Some(&c.upper()), &lowers),
        workdir: Some(c.work()),
    })
}

/// A mountpoint (an existing directory with published state), else a
/// container, else an image.
pub fn resolve_any(store: &Store, what: &str) -> Result<Target, TargetError> {
    let p = Path::new(what);
    if p.is_dir() && (what.contains('/') || what == "." || what == "..") {
        return state::find(p)
            .map(|st| from_mount(&st))
            .map_err(TargetError::State);
    }
    match from_container(store, what) {
        Err(TargetError::Container(RecordError::NoSuchContainer(_))) => {}
        r => return r,
    }
    match from_image(store, what) {
        Ok(t) => Ok(t),
        Err(TargetError::Store(StoreError::NoSuchImage(_) | StoreError::Reference(_)))
            if p.is_dir() =>
        {
            state::find(p)
                .map(|st| from_mount(&st))
                .map_err(TargetError::State)
        }
        Err(TargetError::Store(image @ StoreError::NoSuchImage(_))) => Err(TargetError::Unknown {
            name: what.into(),
            image,
        }),
        Err(e) => Err(e),
    }
}

/// Totals of one layer directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Sum of the apparent sizes (st_size) of everything but directories.
    pub size: u64,
    /// Entries below the layer's root (whiteouts and markers included).
    pub entries: u64,
    /// Whiteouts: character devices 0/0 and `.wh.NAME` files.
    pub whiteouts: u64,
}

/// Walks a layer directory (never following symlinks).
pub fn usage(dir: &Path) -> io::Result<Usage> {
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let md = e.metadata()?;
            u.entries += 1;
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            u.size += md.len();
            let name = e.file_name();
            let wh_name = matches!(
                rules::classify(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str())),
                NameClass::Whiteout(_)
            );
            if wh_name || (ft.is_char_device() && md.rdev() == 0) {
                u.whiteouts += 1;
            }
        }
    }
    Ok(u)
}

#[derive(Args, Debug)]
pub struct LayersArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Show full digests.
    #[arg(long)]
    pub no_trunc: bool,
    /// A layerfs mountpoint, a container, or an image of the store.
    #[arg(value_name = "MOUNTPOINT|IMAGE|CONTAINER")]
    pub target: String,
}

#[derive(Serialize)]
struct LayerRow<'a> {
    #[serde(flatten)]
    layer: &'a LayerDesc,
    #[serde(flatten)]
    usage: Usage,
}

pub fn run(args: LayersArgs, store: &Store) -> i32 {
    let target = match resolve_any(store, &args.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    let mut rows = Vec::new();
    for l in &target.layers {
        match usage(&l.dir) {
            Ok(u) => rows.push(LayerRow { layer: l, usage: u }),
            Err(e) => {
                eprintln!(
                    "layerfs: cannot walk {} {}: {e}",
                    l.label(),
                    l.dir.display()
                );
                return 1;
            }
        }
    }
    if args.json {
        let v = serde_json::json!({ "source": target.source, "workdir": target.workdir, "layers": rows });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    let cut = |d: &Option<String>| match d {
        Some(d) if args.no_trunc => d.clone(),
        Some(d) => short_digest(d).to_string(),
        None => "-".into(),
    };
    let mut t = vec![
        [
            "INDEX",
            "ROLE",
            "DIFF ID",
            "DIGEST",
            "SIZE",
            "ENTRIES",
            "WHITEOUTS",
            "DIRECTORY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &rows {
        t.push(vec![
            r.layer.index.to_string(),
            role_name(r.layer.role).into(),
            cut(&r.layer.diff_id),
            cut(&r.layer.digest),
            human_size(r.usage.size),
            r.usage.entries.to_string(),
            r.usage.whiteouts.to_string(),
            r.layer.dir.display().to_string(),
        ]);
    }
    println!("{}", target.source);
    print!("{}", table(&t));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&d), "sha256:abababababab");
        assert_eq!(short_digest("abc"), "abc");
    }

    #[test]
    fn usage_counts() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("a/b/f"), b"12345").unwrap();
        fs::write(d.join("a/.wh.gone"), b"").unwrap();
        std::os::unix::fs::symlink("a/b/f", d.join("l")).unwrap();
        let u = usage(d).unwrap();
        assert_eq!(u.entries, 5);
        assert_eq!(u.whiteouts, 1);
        assert_eq!(u.size, 5 + 5);
    }

    #[test]
    fn describe_roles() {
        let l = describe(
            Some(Path::new("/u")),
            &[PathBuf::from("/a"), PathBuf::from("/b")],
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].role, Role::Upper);
        assert_eq!(l[2].index, 2);
        assert_eq!(l[1].label(), "layer 1 (lower)");
    }
}
