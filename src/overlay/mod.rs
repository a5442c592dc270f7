//! The union semantics of layerfs, independent of FUSE.
//!
//! - [`rules`]: pure functions for whiteouts, opaque directories, lookup
//!   resolution and listing merges (table-tested, no I/O);
//! - [`layers`]: opening the layer stack and checking mountpoint overlap;
//! - [`types`]: inode numbers, layer indexes, the inode-number scheme;
//! - [`fs`]: the merged filesystem that the FUSE adapter calls;
//! - [`explain`]: replaying a lookup to explain a path (pure);
//! - [`idmap`]: ownership translation (`uidmapping=`, `squash_*`) and the
//!   ids of the daemon's user namespace (pure, but for reading its maps);
//! - [`prune`]: which inodes to let go when the node table is over its
//!   bound (pure);
//! - [`reaper`]: freeing removed upper files off the request path;
//! - [`trace`]: copy-on-write events and their JSON Lines sink;
//! - [`stats`]: counters of a running mount.
//!
//! Nothing here depends on `fuser`: every operation returns a
//! [`crate::sys::Errno`] on failure so that the adapter can reply with it.

pub mod explain;
pub mod fs;
pub mod idmap;
pub mod layers;
pub mod prune;
pub mod reaper;
pub mod rules;
pub mod stats;
pub mod trace;
pub mod types;
pub mod write;

pub use fs::{DirItem, Handle, Overlay, Refreshed};
pub use idmap::IdMap;
pub use layers::{Role, Stack, StackError};
pub use prune::NodeLimit;
pub use types::{Ino, InoScheme, LayerIdx};
pub use write::{
    Caller, Metacopy, RedirectDir, SetAttr, UpperOptions, WhiteoutMode, XattrNamespace,
};
