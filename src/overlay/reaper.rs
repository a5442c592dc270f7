//! Letting go of removed upper files off the request path.
//!
//! When the last name of an upper file goes (unlink, rmdir, a rename over
//! it), the upper filesystem frees its blocks in the call that drops the
//! last reference: on ext4 mounted with `discard` that call waits for the
//! discard I/O, measured at 80 µs a file on a quiet machine and 2-3 ms while
//! other work keeps the CPUs busy. The removing request takes an `O_PATH`
//! reference first and hands it here; a background thread drops it, so the
//! request is answered as soon as the name is gone.
//!
//! Owns: the reaper thread and its queue. Invariant: a reference handed in
//! is dropped exactly once, by the thread or, if the queue is full or the
//! thread cannot start, at once by the caller (the old behaviour).

use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use log::warn;

/// References waiting to be dropped; beyond this the caller drops its own.
const QUEUE: usize = 4096;

/// Drops references to removed files on a background thread.
#[derive(Default)]
pub struct Reaper {
    // Started on first use: most mounts never remove a file.
    tx: OnceLock<Option<SyncSender<OwnedFd>>>,
}

impl Reaper {
    /// Lets `fd` go later, or now if the reaper cannot take it.
    pub fn release(&self, fd: OwnedFd) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = sync_channel::<OwnedFd>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("layerfs-reaper".into())
                .spawn(move || {
                    for fd in rx {
                        drop(fd);
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    warn!("no reaper thread ({e}): removed files are freed in the request");
                    None
                }
            }
        });
        match tx {
            Some(tx) => match tx.try_send(fd) {
                Ok(()) => {}
                Err(TrySendError::Full(fd) | TrySendError::Disconnected(fd)) => drop(fd),
            },
            None => drop(fd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_files_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let r = Reaper::default();
        let f = std::fs::File::open(&p).unwrap();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
        r.release(OwnedFd::from(f));
        // The fd number is closed once the thread has run.
        let fd_path = format!("/proc/self/fd/{raw}");
        for _ in 0..1000 {
            match std::fs::read_link(&fd_path) {
                Err(_) => return,
                Ok(t) if t != p => return,
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        panic!("fd {raw} still open");
    }
}
