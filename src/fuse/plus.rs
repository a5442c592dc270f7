//! When a listing carries attributes (READDIRPLUS).
//!
//! Attributes with a listing save a LOOKUP round trip per entry for readers
//! that stat every entry (`ls -l`, `git status`, `du`), and cost readers that
//! only want names (`find`, `os.walk`) an inode per entry and bigger
//! replies. The kernel's own READDIRPLUS_AUTO still sends attributes for the
//! first chunk of every directory, which is all of a small one, so `find`
//! pays anyway. With [`ReaddirPlus::Auto`] the kernel asks the same way
//! (READDIRPLUS for a directory's first chunk, or once its children were
//! looked up) and [`PlusGate`] decides per request: listings go out names
//! only while the non-directory names listed are not looked up afterwards,
//! and with attributes for a run of requests once at least half of them are;
//! then one names-only request measures again. A names-only entry (nodeid
//! 0) is listed like a plain READDIR entry.
//!
//! Owns only the decision; no FUSE types. Counters are approximate under
//! concurrency (relaxed atomics): a wrong guess costs time, never
//! correctness, since a names-only entry is a plain directory entry.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How listings are answered (`-o readdirplus=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReaddirPlus {
    /// Plain READDIR: names, inode numbers and types only.
    Off,
    /// Attributes with every listing (the kernel's READDIRPLUS_AUTO).
    On,
    /// Attributes when the reader looks the listed names up (see module doc).
    #[default]
    Auto,
}

/// Non-directory names listed without attributes before the gate judges
/// (small: trees of small directories, /usr/share/doc, must switch soon).
const SAMPLE: u64 = 8;
/// Requests answered with attributes before the gate measures again.
const RUN: u32 = 64;

/// The state behind [`ReaddirPlus::Auto`].
#[derive(Debug, Default)]
pub struct PlusGate {
    /// Non-directory names sent without attributes since the last judgement.
    listed: AtomicU64,
    /// LOOKUPs that found a non-directory since the last judgement.
    looked: AtomicU64,
    /// Requests still to answer with attributes.
    plus_left: AtomicU32,
}

impl PlusGate {
    /// Whether the next listing request carries attributes.
    pub fn with_attributes(&self) -> bool {
        if self
            .plus_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return true;
        }
        let listed = self.listed.load(Ordering::Relaxed);
        if listed < SAMPLE {
            return false;
        }
        let looked = self.looked.swap(0, Ordering::Relaxed);
        self.listed.store(0, Ordering::Relaxed);
        if looked * 2 >= listed {
            self.plus_left.store(RUN - 1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// `n` non-directory names went out without attributes.
    pub fn listed(&self, n: u64) {
        self.listed.fetch_add(n, Ordering::Relaxed);
    }

    /// A LOOKUP found a non-directory. Only counted while names-only
    /// listings are being judged: most lookups then cost one shared read,
    /// not a write to a line every thread touches.
    pub fn looked_up(&self) {
        if self.listed.load(Ordering::Relaxed) > 0 {
            self.looked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (names listed per request, of them looked up, requests) -> requests with attributes.
    #[test]
    fn gate_follows_the_reader() {
        let cases: &[(&str, u64, u64, usize, std::ops::RangeInclusive<usize>)] = &[
            // find: names only, lookups of directories only (not counted).
            ("find", 100, 0, 200, 0..=0),
            // ls -l: every name looked up: attributes from the second request on,
            // one names-only request in every RUN + 1.
            ("ls -l", 100, 100, 200, 195..=198),
            // ls -l of directories with 3 files: the same once 8 names were seen.
            ("ls -l, small dirs", 3, 3, 200, 190..=197),
            // a third of the names looked up: below the threshold.
            ("a third", 90, 30, 200, 0..=0),
            // nothing judged before SAMPLE names.
            ("first", 3, 3, 3, 0..=0),
        ];
        for (what, listed, looked, requests, want) in cases {
            let g = PlusGate::default();
            let mut plus = 0;
            for _ in 0..*requests {
                if g.with_attributes() {
                    plus += 1;
                } else {
                    g.listed(*listed);
                    for _ in 0..*looked {
                        g.looked_up();
                    }
                }
            }
            assert!(want.contains(&plus), "{what}: {plus} of {requests}");
        }
    }
}
