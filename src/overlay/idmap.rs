//! Ownership translation between the ids stored in the layers and the ids
//! the mount reports, and the ids of the daemon's own user namespace.
//!
//! Owns two pure types:
//! - [`IdMap`]: fuse-overlayfs's `uidmapping=`/`gidmapping=` and `squash_*`
//!   options. A range `C:H:N` says that the ids `C..C+N` stored on disk are
//!   shown through the mount as `H..H+N` (and a chown or a new file by `H+k`
//!   stores `C+k`). containers/storage passes the container's user-namespace
//!   mapping this way when its store holds unshifted files: the kernel then
//!   maps `H` back to `C` for the container's processes. The FUSE adapter
//!   applies it at the boundary (attributes out, caller and chown ids in);
//!   the overlay itself only ever sees disk ids.
//! - [`NsIds`]: which ids exist in the daemon's user namespace. A stat of a
//!   file whose owner has no mapping there reports the overflow id, which is
//!   then in none of the namespace's ranges; kernel overlayfs refuses to copy
//!   such a file up (`EOVERFLOW`), and so does the overlay.
//!
//! Invariants: the ranges of one [`IdMap`] kind never overlap on either side
//! (the option parser checks), so the translation is a bijection on the
//! mapped ids; an id outside every range shows as (and is stored as) the
//! overflow id, as with fuse-overlayfs; squashing only changes what is shown.

/// Ids `disk..disk+len` in the layers are `mount..mount+len` in the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub disk: u32,
    pub mount: u32,
    pub len: u32,
}

impl IdRange {
    fn end(start: u32, len: u32) -> u64 {
        start as u64 + len as u64
    }
}

/// Why a list of ranges is not a mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeError {
    Empty(IdRange),
    /// `start + len` goes past the last id.
    TooLong(IdRange),
    /// Two ranges share ids on the disk side or the mount side.
    Overlap(IdRange, IdRange),
}

impl std::fmt::Display for RangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |r: &IdRange| format!("{}:{}:{}", r.disk, r.mount, r.len);
        match self {
            RangeError::Empty(x) => write!(f, "range {} has length 0", r(x)),
            RangeError::TooLong(x) => write!(f, "range {} goes past id 4294967295", r(x)),
            RangeError::Overlap(a, b) => write!(f, "ranges {} and {} overlap", r(a), r(b)),
        }
    }
}

/// The ranges of one kind of id (uids or gids); empty means no translation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdRanges(Vec<IdRange>);

impl IdRanges {
    /// Checks that `ranges` form a mapping (non-empty, in bounds, disjoint).
    pub fn new(ranges: Vec<IdRange>) -> Result<IdRanges, RangeError> {
        for (i, a) in ranges.iter().enumerate() {
            if a.len == 0 {
                return Err(RangeError::Empty(*a));
            }
            if IdRange::end(a.disk, a.len) > 1 << 32 || IdRange::end(a.mount, a.len) > 1 << 32 {
                return Err(RangeError::TooLong(*a));
            }
            let meets = |x: u32, y: u32, len_y: u32| {
                (x as u64) < IdRange::end(y, len_y) && (y as u64) < IdRange::end(x, a.len)
            };
            if let Some(b) = ranges[..i]
                .iter()
                .find(|b| meets(a.disk, b.disk, b.len) || meets(a.mount, b.mount, b.len))
            {
                return Err(RangeError::Overlap(*b, *a));
            }
        }
        Ok(IdRanges(ranges))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[IdRange] {
        &self.0
    }

    fn to_mount(&self, id: u32) -> Option<u32> {
        self.0
            .iter()
            .find(|r| id >= r.disk && (id as u64) < IdRange::end(r.disk, r.len))
            .map(|r| r.mount + (id - r.disk))
    }

    fn to_disk(&self, id: u32) -> Option<u32> {
        self.0
            .iter()
            .find(|r| id >= r.mount && (id as u64) < IdRange::end(r.mount, r.len))
            .map(|r| r.disk + (id - r.mount))
    }
}

/// The id shown for ids without a mapping (`/proc/sys/kernel/overflowuid`).
pub const DEFAULT_OVERFLOW_ID: u32 = 65534;

/// How ownership is translated between the layers and the mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub uids: IdRanges,
    pub gids: IdRanges,
    /// Every file shows this owner (`squash_to_uid=`, or 0 for
    /// `squash_to_root`).
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    pub overflow_uid: u32,
    pub overflow_gid: u32,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            uids: IdRanges::default(),
            gids: IdRanges::default(),
            squash_uid: None,
            squash_gid: None,
            overflow_uid: DEFAULT_OVERFLOW_ID,
            overflow_gid: DEFAULT_OVERFLOW_ID,
        }
    }
}

impl IdMap {
    /// True when nothing is translated (the common case, checked first).
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty()
            && self.gids.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    /// The owner shown for a file stored with `uid`.
    pub fn uid_out(&self, uid: u32) -> u32 {
        match (self.squash_uid, self.uids.is_empty()) {
            (Some(s), _) => s,
            (None, true) => uid,
            (None, false) => self.uids.to_mount(uid).unwrap_or(self.overflow_uid),
        }
    }

    /// The group shown for a file stored with `gid`.
    pub fn gid_out(&self, gid: u32) -> u32 {
        match (self.squash_gid, self.gids.is_empty()) {
            (Some(s), _) => s,
            (None, true) => gid,
            (None, false) => self.gids.to_mount(gid).unwrap_or(self.overflow_gid),
        }
    }

    /// The owner stored for a chown to, or a file created by, `uid`.
    pub fn uid_in(&self, uid: u32) -> u32 {
        if self.uids.is_empty() {
            return uid;
        }
        self.uids.to_disk(uid).unwrap_or(self.overflow_uid)
    }

    /// The group stored for a chown to, or a file created by, `gid`.
    pub fn gid_in(&self, gid: u32) -> u32 {
        if self.gids.is_empty() {
            return gid;
        }
        self.gids.to_disk(gid).unwrap_or(self.overflow_gid)
    }
}

/// The ids that exist in a user namespace: the inside column of its
/// `/proc/PID/uid_map` (or `gid_map`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsIds(Vec<(u32, u32)>);

impl NsIds {
    /// Parses the text of a uid_map/gid_map ("inside outside count" lines);
    /// lines that do not parse are left out.
    pub fn parse(map: &str) -> NsIds {
        NsIds(
            map.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace().map(|x| x.parse::<u32>());
                    match (f.next(), f.next(), f.next()) {
                        (Some(Ok(inside)), Some(Ok(_)), Some(Ok(count))) => Some((inside, count)),
                        _ => None,
                    }
                })
                .collect(),
        )
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0
            .iter()
            .any(|&(start, count)| id >= start && (id as u64) < start as u64 + count as u64)
    }

    /// Every id exists (the initial user namespace).
    pub fn is_full(&self) -> bool {
        self.0.iter().any(|&(s, c)| s == 0 && c == u32::MAX)
    }
}

/// The uids and gids of the daemon's user namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsOwners {
    pub uids: NsIds,
    pub gids: NsIds,
}

impl NsOwners {
    /// The namespace of this process; `None` in the initial namespace (or
    /// when the maps cannot be read), where every id exists.
    pub fn current() -> Option<NsOwners> {
        let read = |p| std::fs::read_to_string(p).ok().map(|s| NsIds::parse(&s));
        let o = NsOwners {
            uids: read("/proc/self/uid_map")?,
            gids: read("/proc/self/gid_map")?,
        };
        (!(o.uids.is_full() && o.gids.is_full())).then_some(o)
    }

    /// Both ids of a stat exist here (else one is the overflow id standing
    /// for an id this namespace cannot name).
    pub fn maps(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(uid) && self.gids.contains(gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(disk: u32, mount: u32, len: u32) -> IdRange {
        IdRange { disk, mount, len }
    }

    #[test]
    fn ranges_are_checked() {
        let cases: Vec<(Vec<IdRange>, Option<RangeError>)> = vec![
            (vec![r(0, 1000, 1), r(1, 100000, 65536)], None),
            (vec![r(0, 0, u32::MAX)], None),
            (vec![r(1, 1, u32::MAX)], None),
            (vec![r(0, 1, 0)], Some(RangeError::Empty(r(0, 1, 0)))),
            (
                vec![r(2, 1, u32::MAX)],
                Some(RangeError::TooLong(r(2, 1, u32::MAX))),
            ),
            (
                vec![r(0, 1000, 10), r(5, 2000, 1)],
                Some(RangeError::Overlap(r(0, 1000, 10), r(5, 2000, 1))),
            ),
            (
                vec![r(0, 1000, 10), r(100, 1009, 1)],
                Some(RangeError::Overlap(r(0, 1000, 10), r(100, 1009, 1))),
            ),
            (vec![r(0, 1000, 10), r(10, 1010, 1)], None),
        ];
        for (ranges, want) in cases {
            assert_eq!(IdRanges::new(ranges.clone()).err(), want, "{ranges:?}");
        }
    }

    #[test]
    fn mapping_table() {
        // The fuse-overlayfs manual's example: the namespace's own map.
        let m = IdMap {
            uids: IdRanges::new(vec![r(0, 1000, 1), r(1, 110000, 65536)]).unwrap(),
            gids: IdRanges::new(vec![r(0, 2000, 1)]).unwrap(),
            ..IdMap::default()
        };
        assert!(!m.is_identity());
        let out: &[(u32, u32)] = &[
            (0, 1000),
            (1, 110000),
            (65536, 175535),
            (65537, 65534),
            (4294967295, 65534),
        ];
        for &(disk, shown) in out {
            assert_eq!(m.uid_out(disk), shown, "out {disk}");
        }
        let inn: &[(u32, u32)] = &[
            (1000, 0),
            (110000, 1),
            (175535, 65536),
            (0, 65534),
            (999, 65534),
        ];
        for &(shown, disk) in inn {
            assert_eq!(m.uid_in(shown), disk, "in {shown}");
        }
        assert_eq!(m.gid_out(0), 2000);
        assert_eq!(m.gid_out(1), 65534);
        assert_eq!(m.gid_in(2000), 0);
        assert_eq!(m.gid_in(2001), 65534);
    }

    #[test]
    fn identity_and_squash() {
        let id = IdMap::default();
        assert!(id.is_identity());
        assert_eq!((id.uid_out(7), id.gid_out(8), id.uid_in(9)), (7, 8, 9));
        let sq = IdMap {
            squash_uid: Some(0),
            squash_gid: Some(0),
            ..IdMap::default()
        };
        assert_eq!((sq.uid_out(1000), sq.gid_out(1000)), (0, 0));
        // Squashing changes what is shown, never what is stored.
        assert_eq!((sq.uid_in(1000), sq.gid_in(5)), (1000, 5));
        let both = IdMap {
            uids: IdRanges::new(vec![r(0, 1000, 10)]).unwrap(),
            squash_uid: Some(42),
            ..IdMap::default()
        };
        assert_eq!(both.uid_out(3), 42);
        assert_eq!(both.uid_in(1003), 3);
        assert_eq!(both.gid_out(3), 3);
    }

    #[test]
    fn user_namespace_ids() {
        let init = NsIds::parse("         0          0 4294967295\n");
        assert!(init.is_full());
        assert!(init.contains(65534));
        let single = NsIds::parse("         0       1000          1\n");
        assert!(!single.is_full());
        assert!(single.contains(0));
        assert!(!single.contains(65534));
        let wide = NsIds::parse("0 1000 1\n1 100000 65536\nbogus line\n");
        assert!(wide.contains(65534));
        assert!(wide.contains(65536));
        assert!(!wide.contains(65537));
        let o = NsOwners {
            uids: single.clone(),
            gids: wide,
        };
        assert!(o.maps(0, 65534));
        assert!(!o.maps(65534, 0));
        assert!(NsIds::parse("").0.is_empty());
    }
}
