//! The pruner thread: asks the kernel to forget inodes when the overlay's
//! node table is over `max_inodes` (see `crate::overlay::prune` for why).
//!
//! Owns: the thread, its duplicate of the `/dev/fuse` fd, and the encoding
//! of FUSE_NOTIFY_PRUNE (fuser 0.18 has no call for it). Does not own:
//! which inodes to pick ([`Overlay::prune_candidates`]).
//!
//! Why PRUNE and not FUSE_NOTIFY_INVAL_ENTRY: invalidating a name unhashes
//! its dentry even while it is in use, which detaches whatever is mounted
//! on it (a container runtime's bind mounts) and makes it unreachable as a
//! working directory (getcwd fails). PRUNE (Linux 6.18) only drops names
//! nobody uses, then evicts the inode, which sends FORGET. An older kernel
//! refuses the notification (EINVAL): the thread then says so once and
//! stops, and the table is bounded only by the kernel's own reclaim.
//!
//! Invariants: notifications are written from this thread only, never from
//! a thread serving requests (the kernel may wait on a request while it
//! prunes); no overlay guard is held across the write.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use log::{debug, warn};

use crate::overlay::{Ino, NodeLimit, Overlay};

/// `fuse_notify_code::FUSE_NOTIFY_PRUNE` (protocol 7.45).
const FUSE_NOTIFY_PRUNE: i32 = 9;
/// Inode numbers per notification (the kernel takes them 512 at a time).
const BATCH: usize = 4096;
/// Time given to the kernel's FORGETs to reach the overlay before the table
/// is looked at again.
const SETTLE: Duration = Duration::from_millis(20);

/// Starts the pruner for `ov`, writing to `dev` (the session's fd).
pub(super) fn spawn(ov: &Arc<Overlay>, dev: OwnedFd, limit: NodeLimit) -> io::Result<()> {
    let weak = Arc::downgrade(ov);
    let t = std::thread::Builder::new()
        .name("pruner".into())
        .spawn(move || run(weak, File::from(dev)))?;
    ov.set_pruner(limit, t.thread().clone());
    Ok(())
}

fn run(ov: Weak<Overlay>, mut dev: File) {
    loop {
        std::thread::park();
        let Some(ov) = ov.upgrade() else { return };
        let picked = ov.prune_candidates();
        for chunk in picked.chunks(BATCH) {
            let msg = prune_message(chunk);
            match dev.write(&msg) {
                Ok(n) if n == msg.len() => {}
                Ok(n) => debug!("prune notification: short write {n} of {}", msg.len()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    warn!(
                        "the kernel cannot prune inodes (FUSE_NOTIFY_PRUNE needs Linux 6.18): \
                         max_inodes is not enforced"
                    );
                    ov.stop_pruning();
                    return;
                }
                Err(e) => {
                    // ENODEV: the mount is gone.
                    debug!("prune notification: {e}; pruner stops");
                    ov.stop_pruning();
                    return;
                }
            }
        }
        debug!("asked the kernel to forget {} inodes", picked.len());
        drop(ov);
        if !picked.is_empty() {
            std::thread::sleep(SETTLE);
        }
    }
}

/// A FUSE_NOTIFY_PRUNE message for `inos`: `fuse_out_header` (length, the
/// notify code in place of an error, unique 0), `fuse_notify_prune_out`
/// (count, padding, spare), then the node ids, all in native byte order.
fn prune_message(inos: &[Ino]) -> Vec<u8> {
    let len = 16 + 16 + 8 * inos.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&FUSE_NOTIFY_PRUNE.to_ne_bytes());
    m.extend_from_slice(&0u64.to_ne_bytes());
    m.extend_from_slice(&(inos.len() as u32).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u64.to_ne_bytes());
    for i in inos {
        m.extend_from_slice(&i.0.to_ne_bytes());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let m = prune_message(&[Ino(7), Ino(1 << 40)]);
        assert_eq!(m.len(), 48);
        let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0), 48);
        assert_eq!(u32_at(4), 9);
        assert_eq!(u64_at(8), 0);
        assert_eq!(u32_at(16), 2);
        assert_eq!(u32_at(20), 0);
        assert_eq!(u64_at(24), 0);
        assert_eq!(u64_at(32), 7);
        assert_eq!(u64_at(40), 1 << 40);
        assert_eq!(prune_message(&[]).len(), 32);
    }
}
