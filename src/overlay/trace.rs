//! Copy-on-write events of a writable mount and their JSON Lines sink.
//!
//! Owns: the [`Event`] type, its stable line format ([`to_json_line`]), and
//! the [`Tracer`], a bounded channel to one writer thread that owns the file.
//! The hooks in `write.rs` call the `note_*` methods below, which bump the
//! counters of [`super::stats`] and, only when a tracer is installed, build
//! the merged paths and send the event.
//!
//! Invariants:
//! - no file I/O on the request path: events are sent with `try_send`; when
//!   the channel is full the event is dropped and counted, never waited for;
//! - the writer flushes whenever the channel runs dry, so the file is current
//!   within a batch even if the process exits without dropping the tracer;
//! - disabled tracing costs one atomic load per hook (`OnceLock::get`).
//!
//! Line format (one JSON object per line, UTF-8; bytes of names that are not
//! UTF-8 are replaced by U+FFFD). Fields, always present:
//! `ts` (RFC 3339, UTC, nanoseconds), `ts_unix_ns` (integer), `event`
//! (`copy_up` | `whiteout` | `opaque` | `rename`), `path` (the merged path;
//! for `rename` the new one). Per event:
//! - `copy_up`: `kind` (`file`, `dir`, `symlink`, `fifo`, `socket`,
//!   `chardev`, `blockdev`), `size` (data bytes copied; 0 for `metadata`),
//!   `duration_us`, `method` (`reflink` | `copy` | `metadata`), and for
//!   `copy` `via` (`copy_file_range` | `read_write`);
//! - `rename`: `from` (the old merged path), `exchange` (bool);
//! - `whiteout`: the merged path that is now hidden by a whiteout;
//! - `opaque`: the merged directory that was marked opaque.
//!
//! New fields may be added; existing ones keep their name and meaning.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;
use serde::Serialize;

use super::fs::Overlay;
use super::types::Ino;
use crate::store::format::format_rfc3339;
use crate::sys::{FileKind, Stat};

/// Events waiting for the writer before new ones are dropped.
const QUEUE: usize = 64 * 1024;

/// How a copy-up moved the file's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// The filesystem shares the blocks (FICLONE).
    Reflink,
    /// `copy_file_range` over the data segments.
    CopyFileRange,
    /// `pread`/`pwrite` (copy_file_range refused).
    ReadWrite,
    /// No data: directories, symlinks, devices, empty files, or a copy-up
    /// for an open with O_TRUNC.
    Metadata,
}

impl CopyMethod {
    pub fn method(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::CopyFileRange | CopyMethod::ReadWrite => "copy",
            CopyMethod::Metadata => "metadata",
        }
    }

    pub fn via(self) -> Option<&'static str> {
        match self {
            CopyMethod::CopyFileRange => Some("copy_file_range"),
            CopyMethod::ReadWrite => Some("read_write"),
            _ => None,
        }
    }

    /// The method of a copy made of several ranges.
    pub fn combine(self, other: CopyMethod) -> CopyMethod {
        match (self, other) {
            (CopyMethod::ReadWrite, _) | (_, CopyMethod::ReadWrite) => CopyMethod::ReadWrite,
            (CopyMethod::Metadata, o) => o,
            (s, _) => s,
        }
    }
}

/// One copy-on-write event. Paths are merged paths (absolute, from the
/// mount's root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    CopyUp {
        path: Vec<u8>,
        kind: FileKind,
        size: u64,
        duration: Duration,
        method: CopyMethod,
    },
    Whiteout {
        path: Vec<u8>,
    },
    Opaque {
        path: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        exchange: bool,
    },
}

/// An event with the time it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub event: Event,
}

impl Record {
    pub fn now(event: Event) -> Record {
        let ts_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Record { ts_ns, event }
    }
}

/// The name of a file type in trace lines and explanations.
pub fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Regular => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDev => "chardev",
        FileKind::BlockDev => "blockdev",
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    ts_unix_ns: u64,
    event: &'static str,
    path: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exchange: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'static str>,
}

/// The JSON line of a record (without the newline).
pub fn to_json_line(r: &Record) -> String {
    let secs = (r.ts_ns / 1_000_000_000) as i64;
    let nanos = (r.ts_ns % 1_000_000_000) as u32;
    let lossy = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let mut line = Line {
        ts: format_rfc3339(secs, nanos),
        ts_unix_ns: r.ts_ns,
        event: "",
        path: "".into(),
        from: None,
        exchange: None,
        kind: None,
        size: None,
        duration_us: None,
        method: None,
        via: None,
    };
    match &r.event {
        Event::CopyUp {
            path,
            kind,
            size,
            duration,
            method,
        } => {
            line.event = "copy_up";
            line.path = lossy(path).into();
            line.kind = Some(kind_name(*kind));
            line.size = Some(*size);
            line.duration_us = Some(duration.as_micros() as u64);
            line.method = Some(method.method());
            line.via = method.via();
        }
        Event::Whiteout { path } => {
            line.event = "whiteout";
            line.path = lossy(path).into();
        }
        Event::Opaque { path } => {
            line.event = "opaque";
            line.path = lossy(path).into();
        }
        Event::Rename { from, to, exchange } => {
            line.event = "rename";
            line.path = lossy(to).into();
            line.from = Some(lossy(from).into());
            line.exchange = Some(*exchange);
        }
    }
    serde_json::to_string(&line).unwrap_or_default()
}

/// The sink of events: a bounded queue to a writer thread.
#[derive(Debug)]
pub struct Tracer {
    tx: Option<SyncSender<Record>>,
    path: PathBuf,
    dropped: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl Tracer {
    /// Starts a writer thread appending to `file` (already open, so that
    /// opening errors reach the user before the daemon detaches). `path` is
    /// only reported.
    pub fn spawn(file: File, path: &Path) -> std::io::Result<Tracer> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shown = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("trace".into())
            .spawn(move || write_loop(rx, file, &shown))?;
        Ok(Tracer {
            tx: Some(tx),
            path: path.to_path_buf(),
            dropped: AtomicU64::new(0),
            thread: Some(thread),
        })
    }

    /// Queues an event; never blocks.
    pub fn emit(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Record::now(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events lost because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(rx: Receiver<Record>, file: File, path: &Path) {
    let mut w = BufWriter::new(file);
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut r = Ok(());
        for rec in std::iter::once(first).chain(rx.try_iter()) {
            r = r.and_then(|()| writeln!(w, "{}", to_json_line(&rec)));
        }
        r = r.and_then(|()| w.flush());
        match r {
            Err(e) if !failed => {
                warn!("trace file {}: {e}", path.display());
                failed = true;
            }
            Err(_) => {}
            Ok(()) => failed = false,
        }
    }
    let _ = w.flush();
}

impl Overlay {
    /// Installs the event sink; fails (giving it back) if one is installed.
    pub fn set_tracer(&self, t: Tracer) -> Result<(), Tracer> {
        self.tracer.set(t)
    }

    pub fn tracer(&self) -> Option<&Tracer> {
        self.tracer.get()
    }

    /// Hook: `ino` was copied up (`st`: the source's stat).
    pub(super) fn note_copy_up(&self, ino: Ino, st: &Stat, method: CopyMethod, started: Instant) {
        let size = if method == CopyMethod::Metadata {
            0
        } else {
            st.size
        };
        self.counters.copied_up(size, method);
        if let Some(t) = self.tracer.get() {
            t.emit(Event::CopyUp {
                path: self.merged_path(ino),
                kind: st.kind(),
                size,
                duration: started.elapsed(),
                method,
            });
        }
    }

    /// Hook: `parent`/`name` is now hidden by a whiteout.
    pub(super) fn note_whiteout(&self, parent: Ino, name: &[u8]) {
        self.counters.whiteouts.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.tracer.get() {
            t.emit(Event::Whiteout {
                path: self.child_path(parent, name),
            });
        }
    }

    /// Hook: directory `parent`/`name` was marked opaque.
    pub(super) fn note_opaque(&self, parent: Ino, name: &[u8]) {
        self.counters.opaque_dirs.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.tracer.get() {
            t.emit(Event::Opaque {
                path: self.child_path(parent, name),
            });
        }
    }

    /// Hook: a rename (or exchange) was done.
    pub(super) fn note_rename(&self, from: (Ino, &[u8]), to: (Ino, &[u8]), exchange: bool) {
        self.counters.renames.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.tracer.get() {
            t.emit(Event::Rename {
                from: self.child_path(from.0, from.1),
                to: self.child_path(to.0, to.1),
                exchange,
            });
        }
    }

    /// The merged path of `name` in directory `parent`.
    pub(super) fn child_path(&self, parent: Ino, name: &[u8]) -> Vec<u8> {
        let mut p = self.merged_path(parent);
        if p.last() != Some(&b'/') {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(event: Event) -> Record {
        Record {
            ts_ns: 1_700_000_000_123_456_789,
            event,
        }
    }

    #[test]
    fn lines_table() {
        let ts = r#""ts":"2023-11-14T22:13:20.123456789Z","ts_unix_ns":1700000000123456789"#;
        let cases: Vec<(Event, String)> = vec![
            (
                Event::CopyUp {
                    path: b"/etc/passwd".to_vec(),
                    kind: FileKind::Regular,
                    size: 1234,
                    duration: Duration::from_micros(56),
                    method: CopyMethod::CopyFileRange,
                },
                format!(
                    r#"{{{ts},"event":"copy_up","path":"/etc/passwd","kind":"file","size":1234,"duration_us":56,"method":"copy","via":"copy_file_range"}}"#
                ),
            ),
            (
                Event::CopyUp {
                    path: b"/etc".to_vec(),
                    kind: FileKind::Dir,
                    size: 0,
                    duration: Duration::from_micros(7),
                    method: CopyMethod::Metadata,
                },
                format!(
                    r#"{{{ts},"event":"copy_up","path":"/etc","kind":"dir","size":0,"duration_us":7,"method":"metadata"}}"#
                ),
            ),
            (
                Event::Whiteout {
                    path: b"/a\xffb".to_vec(),
                },
                format!(r#"{{{ts},"event":"whiteout","path":"/a�b"}}"#),
            ),
            (
                Event::Opaque {
                    path: b"/d".to_vec(),
                },
                format!(r#"{{{ts},"event":"opaque","path":"/d"}}"#),
            ),
            (
                Event::Rename {
                    from: b"/a".to_vec(),
                    to: b"/b".to_vec(),
                    exchange: false,
                },
                format!(r#"{{{ts},"event":"rename","path":"/b","from":"/a","exchange":false}}"#),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(to_json_line(&rec(e.clone())), want, "{e:?}");
        }
    }

    #[test]
    fn methods_combine() {
        use CopyMethod::*;
        assert_eq!(Metadata.combine(CopyFileRange), CopyFileRange);
        assert_eq!(CopyFileRange.combine(ReadWrite), ReadWrite);
        assert_eq!(CopyFileRange.combine(CopyFileRange), CopyFileRange);
        assert_eq!(Reflink.method(), "reflink");
        assert_eq!(ReadWrite.method(), "copy");
    }

    #[test]
    fn tracer_writes_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trace.jsonl");
        let f = File::create(&p).unwrap();
        let t = Tracer::spawn(f, &p).unwrap();
        for i in 0..3 {
            t.emit(Event::Whiteout {
                path: format!("/f{i}").into_bytes(),
            });
        }
        drop(t);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["event"], "whiteout");
        }
    }
}
