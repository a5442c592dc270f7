//! Crash safety: layerfs runs in the foreground (`-f`, our child), writer threads append to
//! many lower files through the mount (copy-up of small and large files), and the daemon is
//! killed with SIGKILL at a random moment, ten times. After each kill the dead mount is lazily
//! unmounted and the upper dir is checked directly: every file there is the lower content
//! plus a prefix of the bytes the writers append, never a partial copy. Then layerfs is
//! remounted on the same upper/work dirs: `work/` must be empty and the merged view consistent.
//! At the end the upper is also mounted by kernel overlayfs and both views are compared.
//!
//! Environment: `LAYERFS_CRASH_SEED` (default 7), `LAYERFS_CRASH_ROUNDS` (default 10).

use crate::common::{self, CompareOptions, Layer, Stack};
use crate::diff::{Rng, env_u64};
use crate::harness::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SMALL_DIRS: usize = 8;
const SMALL_PER_DIR: usize = 50;
const BIG: usize = 4;
const BIG_SIZE: usize = 16 << 20;

fn lower_bytes(idx: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((k as u64).wrapping_mul(131) ^ (idx as u64 * 7919) ^ (k as u64 >> 9)) as u8)
        .collect()
}

/// The byte the writers append at position `k` after the lower content of file `idx`.
fn app_byte(idx: usize, k: u64) -> u8 {
    (k.wrapping_mul(31)
        .wrapping_add(idx as u64 * 17)
        .wrapping_add(k / 7)
        % 251) as u8
        + 1
}

fn crash_stack(r: &mut Rng) -> (Stack, Vec<String>) {
    let mut top = Layer::new();
    let mut bottom = Layer::new();
    let mut names = Vec::new();
    let mut idx = 0;
    for d in 0..SMALL_DIRS {
        for i in 0..SMALL_PER_DIR {
            let path = if d % 2 == 0 {
                format!("s{d}/f{i}")
            } else {
                format!("s{d}/n{}/f{i}", i % 3)
            };
            let len = 1 + r.below(8192) as usize;
            let content = lower_bytes(idx, len);
            // Half of the dirs get entries from both layers (merged parents).
            if (d + i) % 3 == 0 {
                top = top.file(&path, content, 0o644);
            } else {
                bottom = bottom.file(&path, content, 0o640);
            }
            names.push(path);
            idx += 1;
        }
    }
    for b in 0..BIG {
        let path = format!("big/b{b}");
        bottom = bottom.file(&path, lower_bytes(idx, BIG_SIZE + b * 4099), 0o644);
        names.push(path);
        idx += 1;
    }
    (Stack::new(vec![top, bottom]), names)
}

/// Checks one file's content against "lower + a prefix of the appended stream".
fn check_content(idx: usize, lower: &[u8], got: &[u8]) -> Result<(), String> {
    if got.len() < lower.len() {
        return Err(format!(
            "{} bytes, shorter than the lower file ({} bytes): partial copy-up",
            got.len(),
            lower.len()
        ));
    }
    if let Some(i) = (0..lower.len()).find(|&i| got[i] != lower[i]) {
        return Err(format!(
            "byte {i} differs from the lower content (got {:#x}, lower {:#x}); {} bytes in all",
            got[i],
            lower[i],
            got.len()
        ));
    }
    for (k, b) in got[lower.len()..].iter().enumerate() {
        if *b != app_byte(idx, k as u64) {
            return Err(format!(
                "appended byte {k} (offset {}) is {:#x}, want {:#x}: torn or misplaced write",
                lower.len() + k,
                b,
                app_byte(idx, k as u64)
            ));
        }
    }
    Ok(())
}

struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Result<u64, String>>>,
    appended: Arc<AtomicU64>,
}

/// Starts writer threads appending to the files (disjoint sets per thread).
fn start_writers(mnt: &Path, names: &[String], lowers: &Arc<Vec<Vec<u8>>>, seed: u64) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    let nthreads = 3;
    for t in 0..nthreads {
        let stop = stop.clone();
        let appended = appended.clone();
        let lowers = lowers.clone();
        let mnt = mnt.to_path_buf();
        let mut mine: Vec<(usize, String)> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % nthreads == t)
            .map(|(i, n)| (i, n.clone()))
            .collect();
        let mut r = Rng::new(seed * 31 + t as u64);
        handles.push(std::thread::spawn(move || -> Result<u64, String> {
            // Shuffle.
            for i in (1..mine.len()).rev() {
                let j = r.below(i as u64 + 1) as usize;
                mine.swap(i, j);
            }
            let mut ops = 0u64;
            loop {
                for (idx, name) in &mine {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(ops);
                    }
                    let p = mnt.join(name);
                    let fd = match open(&p, libc::O_WRONLY | libc::O_APPEND, 0) {
                        Ok(fd) => fd,
                        Err(_) => return Ok(ops), // the daemon died
                    };
                    let Ok(st) = fstat(&fd) else { return Ok(ops) };
                    let lower_len = lowers[*idx].len() as i64;
                    if st.st_size < lower_len {
                        return Err(format!(
                            "{name}: size {} < lower size {lower_len} seen through the mount",
                            st.st_size
                        ));
                    }
                    let k0 = (st.st_size - lower_len) as u64;
                    let len = if r.chance(20) {
                        1 + r.below(20_000)
                    } else {
                        1 + r.below(300)
                    };
                    let data: Vec<u8> = (k0..k0 + len).map(|k| app_byte(*idx, k)).collect();
                    if write(&fd, &data).is_err() {
                        return Ok(ops);
                    }
                    appended.fetch_add(len, Ordering::Relaxed);
                    ops += 1;
                    if r.chance(3) {
                        // A metadata-only copy-up now and then.
                        let _ = chmod(&p, if r.chance(50) { 0o600 } else { 0o644 });
                    }
                }
            }
        }));
    }
    Writers {
        stop,
        handles,
        appended,
    }
}

impl Writers {
    fn join(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for h in self.handles {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => out.push(e),
                Err(e) => out.push(format!("writer panicked: {}", panic_msg(e))),
            }
        }
        out
    }
}

/// Checks every regular file of the upper dir (and that nothing else is there).
fn check_upper(upper: &Path, index: &BTreeMap<String, usize>, lowers: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    let scan = common::scan_tree(
        upper,
        &CompareOptions {
            contents: true,
            xattrs: false,
            ..Default::default()
        },
    );
    for e in &scan.errors {
        out.push(format!("upper scan: {e}"));
    }
    for (k, n) in &scan.nodes {
        let rel = k.to_string_lossy().into_owned();
        match n.kind {
            common::Kind::Dir => {}
            common::Kind::File => match index.get(&rel) {
                Some(&i) => {
                    if let Err(e) =
                        check_content(i, &lowers[i], n.content.as_deref().unwrap_or(&[]))
                    {
                        out.push(format!("upper/{rel}: {e}"));
                    }
                }
                None => out.push(format!("upper/{rel}: unexpected file ({} bytes)", n.size)),
            },
            k => out.push(format!("upper/{rel}: unexpected {k:?}")),
        }
    }
    out
}

/// Checks the merged view: every file present with valid content.
fn check_merged(mnt: &Path, names: &[String], lowers: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match fs::read(mnt.join(n)) {
            Ok(v) => {
                if let Err(e) = check_content(i, &lowers[i], &v) {
                    out.push(format!("merged {n}: {e}"));
                }
            }
            Err(e) => out.push(format!("merged {n}: {e}")),
        }
    }
    let scan = common::scan_tree(mnt, &CompareOptions::default());
    for e in &scan.errors {
        out.push(format!("merged scan: {e}"));
    }
    for (k, n) in &scan.nodes {
        for e in &n.errors {
            out.push(format!("merged /{}: {e}", k.display()));
        }
    }
    out
}

pub fn crash_safety() {
    let seed = env_u64("LAYERFS_CRASH_SEED").unwrap_or(7);
    let rounds = env_u64("LAYERFS_CRASH_ROUNDS").unwrap_or(10);
    let mut r = Rng::new(seed);
    let (stack, names) = crash_stack(&mut r);
    let dir = common::temp_base();
    let base = dir.path().to_path_buf();
    let layers = common::materialize(&stack, &base.join("l"), common::Encoding::KERNEL).unwrap();
    let upper = base.join("upper");
    let work = base.join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    // Lower content per file (each file lives in exactly one layer).
    let lowers: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            layers
                .iter()
                .find_map(|l| fs::read(l.join(n)).ok())
                .expect("lower file")
        })
        .collect();
    let lowers = Arc::new(lowers);
    let index: BTreeMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let mnt_path = base.join("m");
    let log = base.join("layerfs.log");
    let mut fails: Vec<String> = Vec::new();
    let mut total_appended = 0;
    let mut mnt = Some(
        mount_layerfs_foreground(&layers, Some((&upper, &work)), &mnt_path, &log)
            .unwrap_or_else(|e| panic!("{e}")),
    );
    for round in 0..rounds {
        let m = mnt.as_mut().unwrap();
        let w = start_writers(m.path(), &names, &lowers, seed * 1000 + round);
        let delay = 5 + r.below(400);
        std::thread::sleep(Duration::from_millis(delay));
        // SIGKILL the daemon we started (by its pid).
        let child = m.child.as_mut().expect("foreground child");
        let pid = child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = child.wait();
        m.child = None;
        // Lazy unmount of the dead mount.
        let t = Instant::now();
        let out = std::process::Command::new("umount")
            .arg("-l")
            .arg(m.path())
            .output();
        if !wait_until(Duration::from_secs(10), || !common::is_mounted(&mnt_path)) {
            panic!(
                "could not lazily unmount the dead mount {}: {out:?}",
                mnt_path.display()
            );
        }
        m.disarm();
        let appended = w.appended.load(Ordering::Relaxed);
        total_appended += appended;
        let werr = w.join();
        eprintln!(
            "round {round}: killed after {delay} ms, {appended} bytes appended, unmounted in {:?}",
            t.elapsed()
        );
        for e in werr {
            fails.push(format!("round {round}: writer: {e}"));
        }
        let leftovers = common::list_names(&work.join("work"))
            .map(|v| v.len())
            .unwrap_or(0);
        eprintln!("  {leftovers} leftover(s) in work/work at the kill (an interrupted copy-up)");
        for e in check_upper(&upper, &index, &lowers) {
            fails.push(format!("round {round} (after kill): {e}"));
        }
        drop(mnt.take());
        // Remount on the same upper/work.
        match mount_layerfs_foreground(&layers, Some((&upper, &work)), &mnt_path, &log) {
            Ok(m) => mnt = Some(m),
            Err(e) => {
                fails.push(format!("round {round}: remount failed: {e}"));
                break;
            }
        }
        if let Err(e) = check_work_empty(&work) {
            fails.push(format!("round {round} (after remount): {e}"));
        }
        for e in check_merged(mnt.as_ref().unwrap().path(), &names, &lowers) {
            fails.push(format!("round {round} (after remount): {e}"));
        }
        if fails.len() > 40 {
            break;
        }
    }
    eprintln!("crash test: {total_appended} bytes appended over {rounds} rounds");
    // Final: the layerfs view vs the kernel's view of the same upper.
    if let Some(m) = mnt.as_mut() {
        let opts = CompareOptions::default();
        let mut lview = common::scan_tree(m.path(), &opts);
        if let Err(e) = m.unmount() {
            fails.push(e);
        }
        if let Err(e) = check_work_empty(&work) {
            fails.push(format!("after clean unmount: {e}"));
        }
        let kwork = base.join("kwork");
        fs::create_dir_all(&kwork).unwrap();
        match mount_kernel(&layers, Some((&upper, &kwork)), &base.join("km")) {
            Ok(k) => {
                let mut kview = common::scan_tree(k.path(), &opts);
                normalize_times(&mut kview);
                normalize_times(&mut lview);
                for d in common::diff_scans(&kview, &lview, &opts)
                    .into_iter()
                    .take(20)
                {
                    fails.push(format!(
                        "kernel view of the final upper vs layerfs view: {d}"
                    ));
                }
                drop(k);
            }
            Err(e) => fails.push(format!("kernel overlay mount of the final upper: {e}")),
        }
    }
    drop(mnt);
    if !fails.is_empty() {
        let logtext = fs::read_to_string(&log).unwrap_or_default();
        let tail: String = logtext
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        fails.push(format!("layerfs log tail:\n{tail}"));
        if std::env::var("LAYERFS_CRASH_KEEP").as_deref() == Ok("1") {
            let p: PathBuf = dir.keep();
            eprintln!("kept {}", p.display());
        }
    }
    assert_no_failures("crash_safety", &fails);
}

#[test]
fn check_content_detects_partial_and_torn_files() {
    let lower = lower_bytes(3, 100);
    let mut good = lower.clone();
    good.extend((0..50).map(|k| app_byte(3, k)));
    assert!(check_content(3, &lower, &lower).is_ok());
    assert!(check_content(3, &lower, &good).is_ok());
    assert!(
        check_content(3, &lower, &lower[..60]).is_err(),
        "partial copy-up"
    );
    let mut torn = good.clone();
    torn[120] = 0;
    assert!(
        check_content(3, &lower, &torn).is_err(),
        "hole in appended data"
    );
    let mut bad = good.clone();
    bad[10] ^= 1;
    assert!(
        check_content(3, &lower, &bad).is_err(),
        "changed lower byte"
    );
}
