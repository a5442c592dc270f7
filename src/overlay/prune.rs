//! Bounding the node table: which inodes the kernel is asked to forget when
//! the table holds more than `max_inodes` nodes (pure, no I/O).
//!
//! Owns: the limit ([`NodeLimit`]), the use clock arithmetic ([`age`]) and
//! the choice of victims ([`Picker`]). Does not own: the node table
//! (`fs.rs`, which offers every node to a picker) or the request to the
//! kernel (`crate::fuse`, which sends the picked inode numbers with
//! FUSE_NOTIFY_PRUNE from a thread of its own).
//!
//! Why this frees memory: the daemon keeps a node while the kernel holds a
//! reference (its lookup count), and a kernel with plenty of RAM never drops
//! its cached entries on its own. Asked to prune an inode, the kernel drops
//! its unused names (never one in use: an open file, a working directory, a
//! mount point, a directory with cached children), evicts the inode and
//! sends FORGET, and the overlay frees the node. A later lookup rebuilds it
//! with the same inode number (numbers come from the layers' own inodes).
//!
//! Invariants: the root and nodes with open handles are never picked; the
//! least recently used are picked first; a [`Picker`] holds at most `want`
//! candidates, whatever the table's size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::types::Ino;

/// The most nodes the table should hold; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLimit(pub usize);

impl NodeLimit {
    /// The default bound: the daemon stays near 40 MiB however many files
    /// are looked up (see docs/benchmarks.md, "Daemon memory").
    pub const DEFAULT: NodeLimit = NodeLimit(200_000);

    pub fn is_bounded(self) -> bool {
        self.0 > 0
    }

    /// Whether `live` nodes are enough to start pruning: seven eighths of
    /// the limit, so that the nodes created while a pass runs (the kernel's
    /// FORGETs come later) seldom take the table over the limit.
    pub fn exceeded(self, live: usize) -> bool {
        self.is_bounded() && live > self.0 - self.0 / 8
    }

    /// How many nodes to ask the kernel to forget when `live` are held:
    /// down to five eighths of the limit, so that pruning happens in
    /// batches (each pass looks at every node) rather than once per lookup.
    pub fn excess(self, live: usize) -> usize {
        if !self.exceeded(live) {
            return 0;
        }
        live - (self.0 - self.0 * 3 / 8)
    }
}

/// Ticks of the use clock since `stamp` (the clock wraps; so do ages).
pub fn age(now: u32, stamp: u32) -> u32 {
    now.wrapping_sub(stamp)
}

/// Keeps the `want` oldest of the nodes offered to it.
pub struct Picker {
    want: usize,
    // A min-heap of ages: its top is the youngest kept, the first to go.
    heap: BinaryHeap<Reverse<(u32, Ino)>>,
}

impl Picker {
    pub fn new(want: usize) -> Picker {
        Picker {
            want,
            heap: BinaryHeap::with_capacity(want.min(1 << 16)),
        }
    }

    /// Considers node `ino`, last used `age` ticks ago; `open` says whether
    /// a handle is open on it (the kernel would refuse to drop it).
    pub fn offer(&mut self, ino: Ino, age: u32, open: bool) {
        if self.want == 0 || open || ino == Ino::ROOT {
            return;
        }
        if self.heap.len() < self.want {
            self.heap.push(Reverse((age, ino)));
        } else if let Some(Reverse((youngest, _))) = self.heap.peek()
            && age > *youngest
        {
            self.heap.pop();
            self.heap.push(Reverse((age, ino)));
        }
    }

    /// The picked nodes, oldest first.
    pub fn finish(self) -> Vec<Ino> {
        let mut v: Vec<(u32, Ino)> = self.heap.into_iter().map(|Reverse(x)| x).collect();
        v.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, ino)| ino).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_table() {
        let cases: &[(usize, usize, bool, usize)] = &[
            // limit, live, exceeded, excess
            (0, 10_000_000, false, 0),
            (1000, 875, false, 0),
            (1000, 876, true, 251),
            (1000, 1001, true, 376),
            (1000, 5000, true, 4375),
            (100_000, 87_501, true, 25_001),
            (1, 1, false, 0),
            (1, 2, true, 1),
            (3, 4, true, 2),
        ];
        for &(limit, live, exceeded, excess) in cases {
            let l = NodeLimit(limit);
            assert_eq!(l.exceeded(live), exceeded, "{limit} {live}");
            assert_eq!(l.excess(live), excess, "{limit} {live}");
        }
    }

    #[test]
    fn age_wraps() {
        assert_eq!(age(10, 4), 6);
        assert_eq!(age(2, u32::MAX), 3);
        assert_eq!(age(7, 7), 0);
    }

    #[test]
    fn picks_oldest_never_root_or_open() {
        let mut p = Picker::new(3);
        // (ino, age, open)
        let offers = [
            (1, 1000, false), // root: never
            (2, 5, false),
            (3, 50, false),
            (4, 900, true), // open: never
            (5, 40, false),
            (6, 1, false),
            (7, 60, false),
        ];
        for (ino, age, open) in offers {
            p.offer(Ino(ino), age, open);
        }
        assert_eq!(p.finish(), vec![Ino(7), Ino(3), Ino(5)]);
    }

    #[test]
    fn picker_bounds() {
        let mut none = Picker::new(0);
        none.offer(Ino(9), 9, false);
        assert!(none.finish().is_empty());

        // Fewer offers than wanted: all of them.
        let mut p = Picker::new(10);
        p.offer(Ino(2), 1, false);
        p.offer(Ino(3), 2, false);
        assert_eq!(p.finish(), vec![Ino(3), Ino(2)]);

        // Many offers: exactly `want` kept, the oldest.
        let mut p = Picker::new(100);
        for i in 2..100_000u64 {
            p.offer(Ino(i), (i % 1000) as u32, false);
        }
        let got = p.finish();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|i| i.0 % 1000 == 999));
    }
}
