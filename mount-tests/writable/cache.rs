//! Writeback-cache semantics (issue 7). With the kernel's FUSE writeback cache, writes sit in
//! the page cache and reach the daemon later, in pages; the kernel reads pages of files opened
//! write-only, places appends itself, and owns mtime and size until it flushes them. Each test
//! runs the same steps on kernel overlayfs and on layerfs and compares the results, then the
//! merged trees and the upper directories after unmount (what the page cache held must be on
//! disk by then).
//!
//! They pass in every cache mode; they matter with `LAYERFS_TEST_OPTS=writeback=on` (as root)
//! and inside `unshare -Urm`, where writeback is the default (scripts/test-rootless.sh runs
//! both).
#![allow(unused_must_use)]

use crate::common::Layer;
use crate::harness::*;
use std::path::Path;

fn read_path(p: &Path) -> Res<Vec<u8>> {
    let fd = open(p, libc::O_RDONLY, 0)?;
    read_all(&fd, 64 << 20)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Length and a checksum: short enough for a failure message.
fn summary(d: &[u8]) -> String {
    let sum = d
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(131).wrapping_add(b as u64));
    format!("{} bytes, sum {sum:x}", d.len())
}

fn lseek(fd: &Fd, off: i64, whence: i32) -> Res<i64> {
    // SAFETY: plain syscall on an fd we own.
    let r = unsafe { libc::lseek(fd.0, off, whence) };
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn ftruncate(fd: &Fd, len: u64) -> Res<()> {
    // SAFETY: plain syscall on an fd we own.
    rc(unsafe { libc::ftruncate(fd.0, len as libc::off_t) })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------------

#[test]
fn write_only_partial_pages() {
    let Some(mut fx) = fixture_over(Layer::new().file("lower", pattern(10_000, 1), 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    // A lower file opened write-only (copy-up), a few bytes in the middle of a page: the kernel
    // must read the rest of the page from somewhere.
    t.both(
        &fx,
        "O_WRONLY partial page of a lower file",
        |r| -> Res<()> {
            let fd = open(&r.join("lower"), libc::O_WRONLY, 0)?;
            pwrite(&fd, b"abc", 5000)?;
            pwrite(&fd, b"Z", 9999)?;
            pwrite(&fd, b"tail", 12_000)?;
            Ok(())
        },
    );
    t.both(&fx, "read lower", |r| read_path(&r.join("lower")));
    // A file written whole, then patched write-only by a second open.
    t.both(&fx, "O_WRONLY patch of an upper file", |r| -> Res<()> {
        let p = r.join("d/new");
        let fd = open(&p, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, 0o644)?;
        write(&fd, &pattern(9000, 7))?;
        drop(fd);
        let fd = open(&p, libc::O_WRONLY, 0)?;
        pwrite(&fd, b"0123456789", 4090)?;
        Ok(())
    });
    t.both(&fx, "read d/new", |r| read_path(&r.join("d/new")));
    // A write-only file (mode 0200): its owner may open it write-only only.
    t.both(&fx, "mode 0200 file", |r| -> Res<()> {
        let p = r.join("d/wo");
        let fd = open(&p, libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL, 0o200)?;
        write(&fd, &pattern(5000, 3))?;
        pwrite(&fd, b"xy", 100)?;
        Ok(())
    });
    t.finish("write_only_partial_pages", &mut fx);
}

#[test]
fn append_and_truncate() {
    let Some(mut fx) = fixture_over(Layer::new().file("log", b"line0\n", 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    t.both(
        &fx,
        "two appenders and a plain writer",
        |r| -> Res<Vec<i64>> {
            let p = r.join("log");
            let a = open(&p, libc::O_WRONLY | libc::O_APPEND, 0)?;
            let b = open(&p, libc::O_WRONLY | libc::O_APPEND, 0)?;
            let mut out = Vec::new();
            for i in 0..20 {
                write(&a, format!("a{i}\n").as_bytes())?;
                write(&b, format!("b{i}\n").as_bytes())?;
            }
            pwrite(&a, b"P\n", 0)?; // appends: O_APPEND ignores the offset on Linux
            out.push(fstat(&a)?.st_size);
            out.push(lseek(&b, 0, libc::SEEK_CUR)?);
            let c = open(&p, libc::O_RDWR, 0)?;
            write(&c, b"HEAD")?;
            write(&a, b"end\n")?;
            out.push(fstat(&c)?.st_size);
            Ok(out)
        },
    );
    t.both(&fx, "read log", |r| read_path(&r.join("log")));
    t.both(
        &fx,
        "truncate with cached pages, then write",
        |r| -> Res<Vec<i64>> {
            let p = r.join("d/t");
            let fd = open(&p, libc::O_CREAT | libc::O_RDWR, 0o644)?;
            let mut out = Vec::new();
            write(&fd, &pattern(20_000, 9))?;
            ftruncate(&fd, 100)?;
            out.push(fstat(&fd)?.st_size);
            pwrite(&fd, b"X", 6000)?;
            out.push(fstat(&fd)?.st_size);
            truncate(&p, 50)?; // by name, with the fd still open
            pwrite(&fd, b"Y", 60)?;
            out.push(fstat(&fd)?.st_size);
            ftruncate(&fd, 8192)?; // grow: zeros, not old data
            out.push(fstat(&fd)?.st_size);
            Ok(out)
        },
    );
    t.both(&fx, "read d/t", |r| read_path(&r.join("d/t")));
    t.both(&fx, "O_TRUNC open of a cached file", |r| -> Res<i64> {
        let p = r.join("d/t");
        let fd = open(&p, libc::O_WRONLY | libc::O_TRUNC, 0)?;
        pwrite(&fd, b"again", 3)?;
        Ok(fstat(&fd)?.st_size)
    });
    t.both(&fx, "read d/t again", |r| read_path(&r.join("d/t")));
    t.finish("append_and_truncate", &mut fx);
}

#[test]
fn mtime_follows_writes() {
    let old = 1_500_000_000;
    let Some(mut fx) = fixture_over(Layer::new().file("f", b"data", 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    let t0 = now() - 5;
    // Written after an explicit old mtime: the write makes it recent, seen by fstat while
    // open, by stat after close, and on disk after unmount (fx.finish compares the uppers).
    t.holds(&fx, "mtime after write", |r| {
        let p = r.join("f");
        utimens(&p, (old, 0), (old, 0), false).map_err(errname)?;
        let fd = open(&p, libc::O_WRONLY, 0).map_err(errname)?;
        pwrite(&fd, b"more", 4).map_err(errname)?;
        let open_m = fstat(&fd).map_err(errname)?.st_mtime;
        drop(fd);
        let closed_m = lstat(&p).map_err(errname)?.st_mtime;
        if open_m < t0 || closed_m < t0 {
            return Err(format!(
                "mtime not updated by a write: open {open_m}, closed {closed_m}"
            ));
        }
        Ok(())
    });
    // An explicit mtime set after writes on an open fd wins over the kernel's late flush of
    // the write's time, also after close.
    t.holds(&fx, "explicit mtime after write", |r| {
        let p = r.join("d/e");
        let fd = open(&p, libc::O_CREAT | libc::O_RDWR, 0o644).map_err(errname)?;
        write(&fd, &pattern(10_000, 2)).map_err(errname)?;
        futimens_mtime(&fd, old).map_err(errname)?;
        let m1 = fstat(&fd).map_err(errname)?.st_mtime;
        drop(fd);
        let m2 = lstat(&p).map_err(errname)?.st_mtime;
        if (m1, m2) != (old, old) {
            return Err(format!("mtime {m1} (open), {m2} (closed), set {old}"));
        }
        Ok(())
    });
    t.both(
        &fx,
        "size seen by stat while writing",
        |r| -> Res<(i64, i64)> {
            let p = r.join("d/s");
            let fd = open(&p, libc::O_CREAT | libc::O_WRONLY, 0o644)?;
            pwrite(&fd, &pattern(3000, 4), 10_000)?;
            let by_path = lstat(&p)?.st_size;
            Ok((fstat(&fd)?.st_size, by_path))
        },
    );
    t.finish("mtime_follows_writes", &mut fx);
    // After the remount fx.finish did, the explicit time is what the upper layer holds.
    let st = lstat(&fx.f_upper.join("d/e")).map(|s| s.st_mtime);
    assert_eq!(st, Ok(old), "mtime of d/e in the upper layer after unmount");
}

#[test]
fn seek_data_and_hole_see_cached_data() {
    let Some(mut fx) = fixture_over(Layer::new().file("sparse", pattern(4096, 5), 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    // Data written at 1 MiB and not yet flushed. The answer may be exact (the kernel's) or
    // coarse (no holes), but must never skip data or report a hole inside it.
    t.holds(&fx, "SEEK_DATA/SEEK_HOLE over unflushed data", |r| {
        let p = r.join("d/h");
        let fd = open(&p, libc::O_CREAT | libc::O_RDWR, 0o644).map_err(errname)?;
        let at = 1 << 20;
        pwrite(&fd, &pattern(8192, 6), at as u64).map_err(errname)?;
        let size = at + 8192;
        let data = lseek(&fd, 0, libc::SEEK_DATA).map_err(errname)?;
        if data > at {
            return Err(format!(
                "SEEK_DATA from 0 = {data}, beyond the data at {at}"
            ));
        }
        let d2 = lseek(&fd, at, libc::SEEK_DATA).map_err(errname)?;
        if d2 != at {
            return Err(format!("SEEK_DATA from {at} = {d2}"));
        }
        let hole = lseek(&fd, at, libc::SEEK_HOLE).map_err(errname)?;
        if hole != size {
            return Err(format!("SEEK_HOLE from {at} = {hole}, size {size}"));
        }
        match lseek(&fd, size, libc::SEEK_DATA) {
            Err(libc::ENXIO) => {}
            r => return Err(format!("SEEK_DATA at EOF: {r:?}, expected ENXIO")),
        }
        Ok(())
    });
    // Same on a copied-up lower file extended by a write.
    t.holds(&fx, "SEEK_HOLE after extending a lower file", |r| {
        let fd = open(&r.join("sparse"), libc::O_RDWR, 0).map_err(errname)?;
        pwrite(&fd, b"far", 70_000).map_err(errname)?;
        let d = lseek(&fd, 69_000, libc::SEEK_DATA).map_err(errname)?;
        if !(69_000..=70_000).contains(&d) {
            return Err(format!("SEEK_DATA from 69000 = {d}"));
        }
        let h = lseek(&fd, 70_000, libc::SEEK_HOLE).map_err(errname)?;
        if h != 70_003 {
            return Err(format!("SEEK_HOLE from 70000 = {h}, size 70003"));
        }
        Ok(())
    });
    t.both(&fx, "read d/h", |r| read_path(&r.join("d/h")));
    t.both(&fx, "read sparse", |r| read_path(&r.join("sparse")));
    t.finish("seek_data_and_hole_see_cached_data", &mut fx);
}

#[test]
fn dirty_files_renamed_or_unlinked_then_name_reused() {
    let old = 1_400_000_000;
    let Some(mut fx) = fixture_over(Layer::new().file("c", b"lower c", 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    // Renamed while its pages are dirty; a new file takes the old name; the first is closed
    // last (its data and times are flushed after the name changed hands).
    t.both(&fx, "rename dirty, reuse name", |r| -> Res<()> {
        let a = r.join("d/a");
        let fd = open(&a, libc::O_CREAT | libc::O_WRONLY, 0o644)?;
        write(&fd, &pattern(12_000, 11))?;
        rename2(&a, &r.join("d/b"), 0)?;
        pwrite(&fd, b"after rename", 100)?;
        let fd2 = open(&a, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644)?;
        write(&fd2, b"the new a")?;
        futimens_mtime(&fd2, old)?;
        drop(fd2);
        drop(fd);
        Ok(())
    });
    t.both(&fx, "read d/a", |r| read_path(&r.join("d/a")));
    t.both(&fx, "read d/b", |r| read_path(&r.join("d/b")));
    // Unlinked while dirty (a lower file, copied up at open); a new file takes the name.
    t.both(&fx, "unlink dirty, reuse name", |r| -> Res<()> {
        let c = r.join("c");
        let fd = open(&c, libc::O_RDWR, 0)?;
        pwrite(&fd, &pattern(9000, 12), 0)?;
        unlink(&c)?;
        pwrite(&fd, b"still writing", 20)?;
        let fd2 = open(&c, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600)?;
        write(&fd2, b"new c")?;
        futimens_mtime(&fd2, old)?;
        drop(fd2);
        let seen = pread_all(&fd, 64)?;
        drop(fd);
        if seen.get(20..33) != Some(&b"still writing"[..]) {
            return Err(-1);
        }
        Ok(())
    });
    t.both(&fx, "read c", |r| read_path(&r.join("c")));
    // Renamed over: the replaced file's late flush must not land on the file that replaced it.
    t.both(&fx, "rename over a dirty file", |r| -> Res<()> {
        let x = r.join("d/x");
        let y = r.join("d/y");
        let fx_ = open(&x, libc::O_CREAT | libc::O_WRONLY, 0o644)?;
        write(&fx_, &pattern(7000, 13))?;
        let fy = open(&y, libc::O_CREAT | libc::O_WRONLY, 0o644)?;
        write(&fy, b"y wins")?;
        futimens_mtime(&fy, old)?;
        drop(fy);
        rename2(&y, &x, 0)?;
        pwrite(&fx_, b"late", 0)?;
        drop(fx_);
        Ok(())
    });
    t.both(&fx, "read d/x", |r| read_path(&r.join("d/x")));
    t.holds(&fx, "reused names keep their own mtime", |r| {
        for p in ["d/a", "c", "d/x"] {
            let m = lstat(&r.join(p)).map_err(errname)?.st_mtime;
            if m != old {
                return Err(format!("{p}: mtime {m}, set {old}"));
            }
        }
        Ok(())
    });
    t.finish("dirty_files_renamed_or_unlinked_then_name_reused", &mut fx);
    for p in ["d/a", "c", "d/x"] {
        let st = lstat(&fx.f_upper.join(p)).map(|s| s.st_mtime);
        assert_eq!(st, Ok(old), "mtime of {p} in the upper layer after unmount");
    }
}

/// A page-aligned buffer, as O_DIRECT wants.
struct Aligned(*mut u8, std::alloc::Layout);

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: a non-zero size and a valid layout; freed in Drop.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        Aligned(p, layout)
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `self.1.size()` bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.0, self.1.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.0, self.1) };
    }
}

#[test]
fn direct_io() {
    let Some(mut fx) = fixture_over(Layer::new().file("low", pattern(1 << 17, 21), 0o644)) else {
        return;
    };
    let mut t = Checks::new();
    // O_DIRECT reads and writes with aligned buffers work on the kernel; through the daemon
    // too (its own buffers are not aligned, so it must not pass O_DIRECT on).
    t.both(&fx, "O_DIRECT read of a lower file", |r| -> Res<String> {
        let fd = open(&r.join("low"), libc::O_RDONLY | libc::O_DIRECT, 0)?;
        let mut b = Aligned::new(1 << 16);
        // SAFETY: reads into the aligned buffer we own.
        let n = unsafe { libc::pread(fd.0, b.0.cast(), 1 << 16, 1 << 16) };
        if n < 0 {
            return Err(errno());
        }
        Ok(summary(&b.bytes()[..n as usize]))
    });
    t.both(&fx, "O_DIRECT write of a new file", |r| -> Res<i64> {
        let fd = open(
            &r.join("d/dio"),
            libc::O_CREAT | libc::O_WRONLY | libc::O_DIRECT,
            0o644,
        )?;
        let mut b = Aligned::new(1 << 16);
        b.bytes().copy_from_slice(&pattern(1 << 16, 22));
        // SAFETY: writes from the aligned buffer we own.
        let n = unsafe { libc::pwrite(fd.0, b.0.cast(), 1 << 16, 4096) };
        if n < 0 {
            return Err(errno());
        }
        Ok(n as i64)
    });
    t.both(&fx, "read d/dio", |r| read_path(&r.join("d/dio")));
    t.finish("direct_io", &mut fx);
}
