//! Progress of long loads on a terminal: one line on stderr, redrawn at
//! most a few times a second with bytes and layers done. Silent when stderr
//! is not a terminal, so logs and pipes stay clean.

use std::cell::Cell;
use std::io::{self, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use super::format::human_size;

/// A progress line.
pub struct Progress {
    enabled: bool,
    last: Cell<Option<Instant>>,
    drawn: Cell<bool>,
}

impl Progress {
    /// Enabled when `want` and stderr is a terminal.
    pub fn new(want: bool) -> Progress {
        Progress {
            enabled: want && io::stderr().is_terminal(),
            last: Cell::new(None),
            drawn: Cell::new(false),
        }
    }

    /// Redraws the line unless it was drawn very recently (or `force`).
    pub fn show(&self, label: &str, done: u64, total: u64, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force
            && self
                .last
                .get()
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last.set(Some(now));
        self.drawn.set(true);
        let mut e = io::stderr().lock();
        let _ = write!(
            e,
            "\r\x1b[K{label}: {} / {}",
            human_size(done),
            human_size(total)
        );
        let _ = e.flush();
    }

    /// Clears the line.
    pub fn clear(&self) {
        if self.enabled && self.drawn.replace(false) {
            let mut e = io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
        }
    }
}

/// Reports bytes read through it.
pub struct ProgressReader<'a, R> {
    pub inner: R,
    pub progress: &'a Progress,
    pub label: String,
    pub done: u64,
    pub total: u64,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        self.progress
            .show(&self.label, self.done, self.total, n == 0);
        Ok(n)
    }
}
