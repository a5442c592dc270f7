//! Counters of a running mount, read by `layerfs stats`.
//!
//! Owns: the [`Counters`] (monotonic, `Relaxed` atomics bumped on the request
//! path; they order nothing) and the [`Snapshot`] a reader gets, which adds
//! gauges read at snapshot time (open handles, inodes, cache sizes).
//! The snapshot is what the daemon's control socket sends (JSON); its field
//! names are stable.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::fs::Overlay;
use super::trace::CopyMethod;

/// Monotonic event counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub(super) lookups: AtomicU64,
    pub(super) listing_hits: AtomicU64,
    pub(super) listing_misses: AtomicU64,
    pub(super) copy_ups: AtomicU64,
    pub(super) copy_up_bytes: AtomicU64,
    pub(super) reflinked_bytes: AtomicU64,
    pub(super) whiteouts: AtomicU64,
    pub(super) opaque_dirs: AtomicU64,
    pub(super) renames: AtomicU64,
    /// Inodes the kernel was asked to forget (`max_inodes`).
    pub(super) prune_requests: AtomicU64,
}

impl Counters {
    pub(super) fn lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn listing(&self, hit: bool) {
        let c = if hit {
            &self.listing_hits
        } else {
            &self.listing_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn copied_up(&self, bytes: u64, method: CopyMethod) {
        self.copy_ups.fetch_add(1, Ordering::Relaxed);
        let c = if method == CopyMethod::Reflink {
            &self.reflinked_bytes
        } else {
            &self.copy_up_bytes
        };
        c.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Everything `layerfs stats` shows, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Name lookups the kernel asked for (it caches the answers).
    pub lookups: u64,
    /// Directory listings served from the merged-listing cache.
    pub listing_cache_hits: u64,
    /// Directory listings read and merged from the layers.
    pub listing_cache_misses: u64,
    pub copy_ups: u64,
    /// Data bytes copied by copy-ups (not counting reflinks).
    pub copy_up_bytes: u64,
    /// Data bytes copied up by sharing blocks (reflink).
    pub reflinked_bytes: u64,
    /// Whiteouts written (a name removed that exists below).
    pub whiteouts: u64,
    /// Directories marked opaque.
    pub opaque_dirs: u64,
    pub renames: u64,
    /// Open file handles.
    pub open_files: u64,
    /// Inodes the kernel holds references to.
    pub inodes: u64,
    /// The most inodes held at once since the mount.
    #[serde(default)]
    pub inodes_peak: u64,
    /// Cached directory fds.
    pub dirfd_cache: u64,
    /// Entries held by the merged-listing cache.
    pub listing_cache_entries: u64,
    /// Inodes the kernel was asked to forget to keep the daemon within
    /// `max_inodes` (it keeps those in use).
    #[serde(default)]
    pub prune_requests: u64,
    /// The trace file, when tracing.
    #[serde(default)]
    pub trace: Option<String>,
    /// Trace events dropped because the writer could not keep up.
    #[serde(default)]
    pub trace_dropped: u64,
    /// How the kernel talks to the mount (cache mode, request transport).
    #[serde(default)]
    pub connection: Option<String>,
}

impl Snapshot {
    /// Name/value rows for people, in a fixed order.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = Vec::new();
        if let Some(c) = &self.connection {
            rows.push(("kernel connection", c.clone()));
        }
        rows.extend([
            ("lookups", self.lookups.to_string()),
            ("listing cache hits", self.listing_cache_hits.to_string()),
            (
                "listing cache misses",
                self.listing_cache_misses.to_string(),
            ),
            ("copy-ups", self.copy_ups.to_string()),
            ("bytes copied up", self.copy_up_bytes.to_string()),
            ("bytes reflinked", self.reflinked_bytes.to_string()),
            ("whiteouts", self.whiteouts.to_string()),
            ("opaque directories", self.opaque_dirs.to_string()),
            ("renames", self.renames.to_string()),
            ("open files", self.open_files.to_string()),
            ("inodes in memory", self.inodes.to_string()),
            ("inodes in memory, peak", self.inodes_peak.to_string()),
            ("cached directory fds", self.dirfd_cache.to_string()),
            (
                "cached listing entries",
                self.listing_cache_entries.to_string(),
            ),
            ("inodes pruned (asked)", self.prune_requests.to_string()),
        ]);
        if let Some(t) = &self.trace {
            rows.push(("trace file", t.clone()));
            rows.push(("trace events dropped", self.trace_dropped.to_string()));
        }
        rows
    }
}

impl Overlay {
    /// The counters and gauges now.
    pub fn stats(&self) -> Snapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (dirfd_cache, listing_cache_entries) = self.cache_sizes();
        Snapshot {
            lookups: get(&c.lookups),
            listing_cache_hits: get(&c.listing_hits),
            listing_cache_misses: get(&c.listing_misses),
            copy_ups: get(&c.copy_ups),
            copy_up_bytes: get(&c.copy_up_bytes),
            reflinked_bytes: get(&c.reflinked_bytes),
            whiteouts: get(&c.whiteouts),
            opaque_dirs: get(&c.opaque_dirs),
            renames: get(&c.renames),
            open_files: self.handles.len() as u64,
            inodes: self.nodes.len() as u64,
            inodes_peak: self.node_peak() as u64,
            dirfd_cache: dirfd_cache as u64,
            listing_cache_entries: listing_cache_entries as u64,
            prune_requests: get(&c.prune_requests),
            trace: self
                .tracer()
                .map(|t| t.path().to_string_lossy().into_owned()),
            trace_dropped: self.tracer().map_or(0, |t| t.dropped()),
            connection: self.connection(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_rows() {
        let c = Counters::default();
        c.lookup();
        c.listing(true);
        c.listing(false);
        c.listing(false);
        c.copied_up(10, CopyMethod::CopyFileRange);
        c.copied_up(7, CopyMethod::Reflink);
        assert_eq!(c.lookups.load(Ordering::Relaxed), 1);
        assert_eq!(c.listing_misses.load(Ordering::Relaxed), 2);
        assert_eq!(c.copy_ups.load(Ordering::Relaxed), 2);
        assert_eq!(c.copy_up_bytes.load(Ordering::Relaxed), 10);
        assert_eq!(c.reflinked_bytes.load(Ordering::Relaxed), 7);

        let s = Snapshot {
            copy_ups: 3,
            ..Default::default()
        };
        let rows = s.rows();
        assert_eq!(rows[3], ("copy-ups", "3".to_string()));
        assert!(!rows.iter().any(|(n, _)| *n == "trace file"));
        let with = Snapshot {
            connection: Some("passthrough".into()),
            ..Default::default()
        };
        assert_eq!(with.rows()[0], ("kernel connection", "passthrough".into()));
        // The JSON round-trips, and old snapshots without trace fields parse.
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&j).unwrap(), s);
        // A daemon of an older version may still send a field this one
        // dropped (`open_dirs`): it is ignored.
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v["open_dirs"] = 0.into();
        assert_eq!(serde_json::from_value::<Snapshot>(v).unwrap(), s);
    }
}
