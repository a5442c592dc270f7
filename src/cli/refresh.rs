//! `layerfs refresh MOUNTPOINT`: makes a running mount show the current
//! contents of its layers after a lower layer was changed directly.
//!
//! The daemon does the work when asked on its control socket (`refresh`,
//! see `state`): it drops its merged listings and directory fds, recomputes
//! which layers each known directory merges, and notifies the kernel to drop
//! the entries, attributes, data and listings it caches. This file only
//! sends the request and prints the answer.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::state::{self, StateError};

pub const REFRESH_HELP: &str = "\
WHY:
  A mount takes its layers as immutable, like kernel overlayfs: the kernel is
  told to cache names (also absent ones), attributes, file data and directory
  listings for a day (timeout=), and the daemon caches merged listings and
  which layers each directory merges. After a lower layer is changed directly
  while mounted (a file added, removed or rewritten, a directory created or
  removed), names and listings keep showing the old view, and attributes and
  contents may be old or new, until `layerfs refresh` (or a remount).
  Changing the upper or work directory directly is not supported at all.

AFTER A REFRESH:
  Names, listings, attributes and contents come from the layers as they are
  now, as a fresh mount of the same directories shows them. A descriptor that
  is open keeps the file it opened (one replaced by a new file still reads the
  old one); a directory that is open keeps the listing it already read; a name
  replaced by another object gets a new inode number. A change made while the
  refresh runs may or may not be seen. Mounts made by `layerfs run` publish no
  control socket and cannot be refreshed.

EXAMPLE:
  echo new > /layers/base/etc/motd
  layerfs refresh /mnt/merged";

#[derive(Args, Debug)]
pub struct RefreshArgs {
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// A layerfs mountpoint (mounted by `layerfs mount` or the drop-in form).
    pub mountpoint: PathBuf,
}

/// The daemon's answer (see `state::refresh_caches`).
#[derive(Debug, Deserialize)]
struct Refreshed {
    directories: u64,
    directories_changed: u64,
    inodes_invalidated: u64,
    entries_invalidated: u64,
    kernel: bool,
    millis: u64,
}

pub fn run(args: RefreshArgs) -> i32 {
    let r = state::find(&args.mountpoint).and_then(|st| {
        let v = state::request(&st, "refresh")?;
        if args.json {
            println!("{v}");
            return Ok(());
        }
        let r: Refreshed = v
            .get("refreshed")
            .cloned()
            .and_then(|x| serde_json::from_value(x).ok())
            .ok_or_else(|| StateError::Reply {
                mountpoint: st.mountpoint.clone(),
                message: format!("unexpected answer {v}"),
            })?;
        println!(
            "refreshed {}: {} known directories checked, {} merge other layers now; \
             kernel told to drop {} entries and {} inodes{} ({} ms)",
            st.mountpoint.display(),
            r.directories,
            r.directories_changed,
            r.entries_invalidated,
            r.inodes_invalidated,
            if r.kernel {
                ""
            } else {
                " (no kernel notifier: cached entries expire with timeout=)"
            },
            r.millis
        );
        Ok(())
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}
