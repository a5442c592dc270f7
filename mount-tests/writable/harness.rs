//! Writable-mount harness: kernel overlayfs (the oracle) and layerfs mounted with an upper layer
//! on two identical copies of one stack, syscall wrappers that return raw errnos, and
//! comparisons of merged trees, upper directories and work directories.
//!
//! Environment (besides common's):
//! - `LAYERFS_TEST_OPTS=a,b`: extra `-o` options for every layerfs mount (`writeback=on`).
//! - `LAYERFS_KERNEL_OPTS=a,b`: the kernel overlayfs options in place of the default
//!   `redirect_dir=on` (`userxattr` rootless), e.g. `redirect_dir=off` against layerfs with
//!   `LAYERFS_TEST_OPTS=redirect_dir=off`.
//! - `LAYERFS_WT_SELFTEST=1`: mount kernel overlayfs on BOTH sides (validates the tests
//!   themselves; layerfs-only checks and the crash test are skipped).
#![allow(dead_code)]

use crate::common::{self, CompareOptions, Kind, Layer, Scan, Stack};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ------------------------------------------------------------------------------------------
// What runs on the "under test" side
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Kernel,
    Layerfs,
}

/// The implementation mounted on the side under test.
pub fn under_test() -> Impl {
    if std::env::var("LAYERFS_WT_SELFTEST").as_deref() == Ok("1") {
        Impl::Kernel
    } else {
        Impl::Layerfs
    }
}

/// True when checks of layerfs-specific behaviour (documented differences from the kernel)
/// apply: the side under test is the real layerfs (not the kernel, not fuse-overlayfs).
pub fn layerfs_specific() -> bool {
    under_test() == Impl::Layerfs && !common::is_fuse_overlayfs()
}

/// Common preconditions for every test: root + /dev/fuse + binary (see common), umask 022.
pub fn init() -> bool {
    unsafe { libc::umask(0o022) };
    if under_test() == Impl::Kernel {
        // The binary is not needed in self-test mode, only root.
        if unsafe { libc::geteuid() } != 0 {
            return common::mount_tests_required();
        }
        return true;
    }
    common::mount_tests_required()
}

/// The fixture of the small tests: `lower` over a layer holding only the empty directory `d`
/// (where they create files), mounted on both sides; `None` where mount tests are skipped.
pub fn fixture_over(lower: Layer) -> Option<WFixture> {
    if !init() {
        return None;
    }
    Some(WFixture::new(&Stack::new(vec![
        lower,
        Layer::new().dir("d", 0o755),
    ])))
}

// ------------------------------------------------------------------------------------------
// Mounts
// ------------------------------------------------------------------------------------------

/// A mount that is unmounted on drop (also while unwinding). For a foreground daemon started
/// by us (`child`), drop also reaps it, killing it by pid if it outlives the unmount.
#[derive(Debug)]
pub struct Mnt {
    pub target: PathBuf,
    pub fuse: bool,
    active: bool,
    pub child: Option<Child>,
}

impl Mnt {
    pub fn path(&self) -> &Path {
        &self.target
    }
    pub fn unmount(&mut self) -> Result<(), String> {
        let mut res = Ok(());
        if self.active {
            self.active = false;
            res = common::unmount(&self.target, self.fuse);
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if start.elapsed() > Duration::from_secs(10) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        res
    }
    /// Forgets the mount without unmounting (after the caller unmounted it some other way).
    pub fn disarm(&mut self) {
        self.active = false;
    }
}

impl Drop for Mnt {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("error: {e}");
        }
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Options added to every layerfs mount from `LAYERFS_TEST_OPTS` (comma-separated, e.g.
/// `writeback=on`): the same tests then run in another cache mode.
fn with_test_opts(opts: String) -> String {
    match std::env::var("LAYERFS_TEST_OPTS") {
        Ok(x) if !x.is_empty() => format!("{opts},{x}"),
        _ => opts,
    }
}

/// True when the layerfs mounts of this run use the kernel's writeback cache: asked for with
/// `LAYERFS_TEST_OPTS=writeback=on`, or by default where there is no passthrough (in a user
/// namespace).
pub fn writeback_mode() -> bool {
    let opts = std::env::var("LAYERFS_TEST_OPTS").unwrap_or_default();
    let asked = |v: &str| opts.split(',').any(|o| o == format!("writeback={v}"));
    under_test() == Impl::Layerfs
        && (asked("on") || asked("1") || (rootless() && !asked("off") && !asked("0")))
}

/// True inside a user namespace other than the initial one (`unshare -Urm`).
pub fn rootless() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false)
}

fn overlay_opts(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>, extra: &[&str]) -> String {
    let mut opts = format!("lowerdir={}", common::join_lowers(lowers));
    if let Some((u, w)) = upper_work {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            u.display(),
            w.display()
        ));
    }
    for o in extra {
        opts.push(',');
        opts.push_str(o);
    }
    opts
}

/// `mount -t overlay overlay -o lowerdir=..[,upperdir=..,workdir=..],redirect_dir=on TARGET`:
/// directories that exist below move by redirect, as on layerfs.
pub fn mount_kernel(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<Mnt, String> {
    if let Ok(o) = std::env::var("LAYERFS_KERNEL_OPTS")
        && !o.is_empty()
    {
        let extra: Vec<&str> = o.split(',').collect();
        return mount_kernel_opts(lowers, upper_work, target, &extra);
    }
    if rootless() {
        // In a user namespace the kernel takes its xattrs from user.overlay.* and has no
        // redirects (they need trusted xattrs).
        return mount_kernel_opts(lowers, upper_work, target, &["userxattr"]);
    }
    mount_kernel_opts(lowers, upper_work, target, &["redirect_dir=on"])
}

/// `mount -t overlay` with the given extra options (e.g. `index=on`).
pub fn mount_kernel_opts(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
    extra: &[&str],
) -> Result<Mnt, String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    let target = fs::canonicalize(target).map_err(|e| e.to_string())?;
    let opts = overlay_opts(lowers, upper_work, extra);
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    let m = Mnt {
        target: target.clone(),
        fuse: false,
        active: true,
        child: None,
    };
    if !out.status.success() {
        let mut m = m;
        m.disarm();
        return Err(format!(
            "mount -t overlay -o {opts} {}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if !wait_until(Duration::from_secs(5), || common::is_mounted(&target)) {
        return Err(format!("{} not mounted after mount", target.display()));
    }
    Ok(m)
}

/// `layerfs -o lowerdir=..[,upperdir=..,workdir=..][,extra] TARGET` (daemonizes).
pub fn mount_layerfs(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
    extra: &[&str],
) -> Result<Mnt, String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    let target = fs::canonicalize(target).map_err(|e| e.to_string())?;
    let opts = with_test_opts(overlay_opts(lowers, upper_work, extra));
    let out = common::run_layerfs(
        &[OsStr::new("-o"), OsStr::new(&opts), target.as_os_str()],
        Duration::from_secs(60),
    )?;
    // Whatever happened, never leave a mount behind.
    let m = Mnt {
        target: target.clone(),
        fuse: true,
        active: true,
        child: None,
    };
    if !out.status.success() {
        drop(m);
        return Err(format!(
            "layerfs -o {opts} {}: {}\nstderr: {}",
            target.display(),
            out.status,
            out.stderr
        ));
    }
    if !wait_until(Duration::from_secs(5), || common::is_mounted(&target)) {
        return Err(format!("layerfs: {} not mounted", target.display()));
    }
    Ok(m)
}

/// Starts layerfs in the foreground (`-f`) as our child, so its pid is known; waits until the
/// mount is live. The returned guard unmounts and reaps the child.
pub fn mount_layerfs_foreground(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
    log: &Path,
) -> Result<Mnt, String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    let target = fs::canonicalize(target).map_err(|e| e.to_string())?;
    let bin = common::layerfs_bin().ok_or("no layerfs binary")?;
    let opts = with_test_opts(overlay_opts(lowers, upper_work, &[]));
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let child = Command::new(&bin)
        .arg("-o")
        .arg(&opts)
        .arg(&target)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut m = Mnt {
        target: target.clone(),
        fuse: true,
        active: true,
        child: Some(child),
    };
    let ok = wait_until(Duration::from_secs(10), || {
        common::is_mounted(&target) || matches!(m.child.as_mut().unwrap().try_wait(), Ok(Some(_)))
    });
    if !ok || !common::is_mounted(&target) {
        let log = fs::read_to_string(log).unwrap_or_default();
        drop(m);
        return Err(format!(
            "layerfs -f -o {opts} {}: not mounted\nlog: {log}",
            target.display()
        ));
    }
    Ok(m)
}

pub fn mount_impl(
    which: Impl,
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<Mnt, String> {
    match which {
        Impl::Kernel => mount_kernel(lowers, upper_work, target),
        Impl::Layerfs => mount_layerfs(lowers, upper_work, target, &[]),
    }
}

// ------------------------------------------------------------------------------------------
// Fixture: one stack twice, oracle (kernel) on `k`, implementation under test on `f`
// ------------------------------------------------------------------------------------------

pub struct WFixture {
    // Drop order: mounts before the directory.
    pub kmnt: Option<Mnt>,
    pub fmnt: Option<Mnt>,
    pub k_layers: Vec<PathBuf>,
    pub f_layers: Vec<PathBuf>,
    pub k_upper: PathBuf,
    pub k_work: PathBuf,
    pub f_upper: PathBuf,
    pub f_work: PathBuf,
    pub which: Impl,
    dir: Option<tempfile::TempDir>,
}

impl WFixture {
    /// Materializes `stack` twice in kernel encoding (k/ and f/, with empty upper and work dirs)
    /// and mounts both writable.
    pub fn new(stack: &Stack) -> WFixture {
        let mut fx = Self::unmounted(stack);
        fx.mount().unwrap_or_else(|e| panic!("{e}"));
        fx
    }

    pub fn unmounted(stack: &Stack) -> WFixture {
        let dir = common::temp_base();
        let base = dir.path().to_path_buf();
        let mk = |side: &str| {
            let layers = common::materialize(stack, &base.join(side), common::Encoding::KERNEL)
                .unwrap_or_else(|e| panic!("materialize {side}: {e}"));
            let u = base.join(side).join("upper");
            let w = base.join(side).join("work");
            fs::create_dir_all(&u).unwrap();
            fs::create_dir_all(&w).unwrap();
            (layers, u, w)
        };
        let (k_layers, k_upper, k_work) = mk("k");
        let (f_layers, f_upper, f_work) = mk("f");
        WFixture {
            kmnt: None,
            fmnt: None,
            k_layers,
            f_layers,
            k_upper,
            k_work,
            f_upper,
            f_work,
            which: under_test(),
            dir: Some(dir),
        }
    }

    pub fn mount(&mut self) -> Result<(), String> {
        let base = self.base().to_path_buf();
        if self.kmnt.is_none() {
            self.kmnt = Some(mount_kernel(
                &self.k_layers,
                Some((&self.k_upper, &self.k_work)),
                &base.join("mk"),
            )?);
        }
        if self.fmnt.is_none() {
            self.fmnt = Some(mount_impl(
                self.which,
                &self.f_layers,
                Some((&self.f_upper, &self.f_work)),
                &base.join("mf"),
            )?);
        }
        Ok(())
    }

    pub fn base(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
    pub fn k(&self) -> &Path {
        self.kmnt.as_ref().expect("kernel side not mounted").path()
    }
    pub fn f(&self) -> &Path {
        self.fmnt
            .as_ref()
            .expect("side under test not mounted")
            .path()
    }

    /// Unmounts both sides (errors are returned as failures).
    pub fn unmount(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for m in [self.fmnt.take(), self.kmnt.take()].into_iter().flatten() {
            let mut m = m;
            if let Err(e) = m.unmount() {
                out.push(e);
            }
        }
        out
    }

    /// Merged-tree comparison (see [`compare_merged`]).
    pub fn compare_merged(&self) -> Vec<String> {
        compare_merged(self.k(), self.f())
    }

    /// Unmounts both sides, then compares the upper directories and checks that the work
    /// directory of the side under test has an empty `work/`. Returns failures.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.kmnt.is_some() && self.fmnt.is_some() {
            out.extend(
                self.compare_merged()
                    .into_iter()
                    .map(|d| format!("merged tree (A=kernel, B=under test): {d}")),
            );
        }
        out.extend(self.unmount());
        out.extend(
            compare_uppers(&self.k_upper, &self.f_upper, &self.k_layers)
                .into_iter()
                .map(|d| format!("upper dir (A=kernel, B=under test): {d}")),
        );
        if self.which == Impl::Layerfs
            && let Err(e) = check_work_empty(&self.f_work)
        {
            out.push(e);
        }
        out.extend(self.remount_checks());
        out
    }

    /// After a run: the same uppers mounted again show the same trees (what
    /// the upper layer records, redirects included, is read back), and so
    /// do the uppers rotated into the lower stack, read-only, as container
    /// tools do when they commit a layer.
    fn remount_checks(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        match self.mount() {
            Ok(()) => out.extend(
                self.compare_merged()
                    .into_iter()
                    .map(|d| format!("merged tree after remount (A=kernel, B=under test): {d}")),
            ),
            Err(e) => out.push(format!("remount: {e}")),
        }
        out.extend(self.unmount());
        let base = self.base().to_path_buf();
        let stacked = |upper: &Path, layers: &[PathBuf]| {
            std::iter::once(upper.to_path_buf())
                .chain(layers.iter().cloned())
                .collect::<Vec<_>>()
        };
        let k = mount_kernel(
            &stacked(&self.k_upper, &self.k_layers),
            None,
            &base.join("rk"),
        );
        let f = mount_impl(
            self.which,
            &stacked(&self.f_upper, &self.f_layers),
            None,
            &base.join("rf"),
        );
        match (k, f) {
            (Ok(mut k), Ok(mut f)) => {
                out.extend(compare_merged(k.path(), f.path()).into_iter().map(|d| {
                    format!("upper rotated into the lower stack (A=kernel, B=under test): {d}")
                }));
                for m in [&mut f, &mut k] {
                    if let Err(e) = m.unmount() {
                        out.push(e);
                    }
                }
            }
            (k, f) => {
                for e in [k.err(), f.err()].into_iter().flatten() {
                    out.push(format!("rotated mount: {e}"));
                }
            }
        }
        out
    }
}

impl Drop for WFixture {
    fn drop(&mut self) {
        let errs = self.unmount();
        let still = [self.base().join("mk"), self.base().join("mf")]
            .iter()
            .any(|p| common::is_mounted(p));
        if !errs.is_empty() || still {
            for e in errs {
                eprintln!("error: {e}");
            }
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!("leaving {} behind: a mount is still live", p.display());
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Comparisons
// ------------------------------------------------------------------------------------------

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// mtimes within the last two days are "now" (set by writes at slightly different moments on
/// the two sides) and compare equal; older ones (from the layers or set explicitly) must match
/// exactly.
pub fn normalize_times(s: &mut Scan) {
    let recent = now_secs() - 2 * 86400;
    for n in s.nodes.values_mut() {
        if n.mtime.0 >= recent {
            n.mtime = (i64::MAX, 0);
        }
    }
}

/// Compares two merged trees: names, types, modes, owners, sizes, contents, symlink targets,
/// user.* xattrs, nlink and mtime (normalized, see [`normalize_times`]) of non-directories.
/// st_ino is not compared here.
pub fn compare_merged(a: &Path, b: &Path) -> Vec<String> {
    let opts = CompareOptions::default();
    let (mut sa, mut sb) = std::thread::scope(|s| {
        let h = s.spawn(|| common::scan_tree(a, &opts));
        let sb = common::scan_tree(b, &opts);
        (h.join().expect("scan panicked"), sb)
    });
    normalize_times(&mut sa);
    normalize_times(&mut sb);
    common::diff_scans(&sa, &sb, &opts)
}

/// The namespace of overlay xattrs here: `user.` in a user namespace (kernel `userxattr`).
fn overlay_xattr(name: &str) -> String {
    match rootless() {
        true => format!("user.overlay.{name}"),
        false => format!("trusted.overlay.{name}"),
    }
}

pub fn opaque_of(p: &Path) -> Option<Vec<u8>> {
    common::lgetxattr(p, OsStr::new(&overlay_xattr("opaque"))).ok()
}

pub fn redirect_of(p: &Path) -> Option<Vec<u8>> {
    common::lgetxattr(p, OsStr::new(&overlay_xattr("redirect"))).ok()
}

/// Compares two upper directories (after unmount): the same entries with the same types;
/// regular files: content, mode, owner, nlink, user.* xattrs; symlinks: target; directories:
/// mode, owner, user.* xattrs and the opaque marker (`trusted.overlay.opaque`); whiteouts: char
/// devices 0/0 on both sides (their mode/nlink are not compared: the kernel hardlinks them).
///
/// With redirect_dir=on the kernel also marks every new directory in a merged directory opaque,
/// as an optimization; layerfs does not (issue #3: a new directory where nothing exists below
/// is not opaque). The marker changes nothing there, so a kernel-only marker is accepted where
/// nothing shows below in `lowers` (by path: a directory that moved by redirect may differ,
/// which the remount and rotation checks of `finish` then judge by the merged trees).
pub fn compare_uppers(a: &Path, b: &Path, lowers: &[PathBuf]) -> Vec<String> {
    let opts = CompareOptions::default();
    let sa = common::scan_tree(a, &opts);
    let sb = common::scan_tree(b, &opts);
    let mut out = Vec::new();
    for e in sa.errors.iter().chain(&sb.errors) {
        out.push(format!("scan error: {e}"));
    }
    let keys: std::collections::BTreeSet<&PathBuf> =
        sa.nodes.keys().chain(sb.nodes.keys()).collect();
    for k in keys {
        let p = format!("/{}", k.display());
        let (x, y) = match (sa.nodes.get(k), sb.nodes.get(k)) {
            (Some(x), Some(y)) => (x, y),
            (Some(x), None) => {
                if k.parent().is_none_or(|q| sb.nodes.contains_key(q)) {
                    out.push(format!("{p}: only in A ({})", describe(x)));
                }
                continue;
            }
            (None, Some(y)) => {
                if k.parent().is_none_or(|q| sa.nodes.contains_key(q)) {
                    out.push(format!("{p}: only in B ({})", describe(y)));
                }
                continue;
            }
            (None, None) => unreachable!(),
        };
        if x.kind != y.kind {
            out.push(format!("{p}: {} vs {}", describe(x), describe(y)));
            continue;
        }
        match x.kind {
            Kind::Char if (x.rdev != 0 || y.rdev != 0) => {
                out.push(format!(
                    "{p}: char device rdev {:#x} vs {:#x}",
                    x.rdev, y.rdev
                ));
            }
            Kind::File => {
                // A metadata-only copy on the side under test has its data below (the
                // remount and rotation checks compare what it shows).
                let metacopy =
                    common::lgetxattr(&b.join(k), OsStr::new("trusted.overlay.metacopy")).is_ok();
                if x.content != y.content && !metacopy {
                    out.push(format!(
                        "{p}: content differs ({} vs {} bytes)",
                        x.size, y.size
                    ));
                }
                if x.nlink != y.nlink {
                    out.push(format!("{p}: nlink {} vs {}", x.nlink, y.nlink));
                }
            }
            Kind::Symlink if x.target != y.target => {
                out.push(format!("{p}: target {:?} vs {:?}", x.target, y.target));
            }
            Kind::Dir => {
                let (oa, ob) = (opaque_of(&a.join(k)), opaque_of(&b.join(k)));
                let kernel_only_opaque = oa.as_deref() == Some(b"y") && ob.is_none();
                let moved = k.ancestors().any(|x| redirect_of(&a.join(x)).is_some());
                let parent_opaque = k
                    .ancestors()
                    .skip(1)
                    .any(|x| opaque_of(&a.join(x)).as_deref() == Some(b"y"));
                let moved = moved || parent_opaque;
                if oa != ob && !(kernel_only_opaque && (moved || !visible_below(lowers, k))) {
                    let s = |o: &Option<Vec<u8>>| match o {
                        Some(v) => format!("opaque={:?}", String::from_utf8_lossy(v)),
                        None => "not opaque".into(),
                    };
                    out.push(format!("{p}: {} vs {}", s(&oa), s(&ob)));
                }
                // A relative redirect and the absolute one naming the same place are
                // equal (the kernel writes the absolute form before it finds out that a
                // rename fails with ENOTEMPTY; layerfs checks first).
                let norm = |r: Option<Vec<u8>>| -> Option<Vec<u8>> {
                    let r = r?;
                    if r.starts_with(b"/") {
                        return Some(r);
                    }
                    let mut v = b"/".to_vec();
                    if let Some(p) = k.parent().filter(|p| !p.as_os_str().is_empty()) {
                        v.extend_from_slice(p.as_os_str().as_encoded_bytes());
                        v.push(b'/');
                    }
                    v.extend_from_slice(&r);
                    Some(v)
                };
                // A redirect to the directory's own path is no redirect.
                let own = format!("/{}", k.display()).into_bytes();
                let norm = |r: Option<Vec<u8>>| norm(r).filter(|v| *v != own);
                let (ra, rb) = (norm(redirect_of(&a.join(k))), norm(redirect_of(&b.join(k))));
                // The kernel also leaves a redirect to where a directory already is when
                // the rename then fails (ENOTEMPTY from the upper filesystem): a redirect on
                // the kernel side only is judged by the remount and rotation checks.
                if ra != rb && rb.is_some() {
                    let s = |o: &Option<Vec<u8>>| match o {
                        Some(v) => format!("redirect={:?}", String::from_utf8_lossy(v)),
                        None => "no redirect".into(),
                    };
                    out.push(format!("{p}: {} vs {}", s(&ra), s(&rb)));
                }
            }
            _ => {}
        }
        if x.kind != Kind::Char && !k.as_os_str().is_empty() {
            if x.mode != y.mode {
                out.push(format!("{p}: mode {:#o} vs {:#o}", x.mode, y.mode));
            }
            if (x.uid, x.gid) != (y.uid, y.gid) {
                out.push(format!(
                    "{p}: owner {}:{} vs {}:{}",
                    x.uid, x.gid, y.uid, y.gid
                ));
            }
            // layerfs's own bookkeeping (user.layerfs.* where it cannot use trusted.*, in a
            // user namespace) is not part of the layer's content.
            let own = |k: &&std::ffi::OsString| !k.as_bytes().starts_with(b"user.layerfs.");
            let xa: Vec<_> = x.xattrs.iter().filter(|(k, _)| own(k)).collect();
            let ya: Vec<_> = y.xattrs.iter().filter(|(k, _)| own(k)).collect();
            if xa != ya {
                out.push(format!(
                    "{p}: user xattrs {:?} vs {:?}",
                    x.xattrs.keys().collect::<Vec<_>>(),
                    y.xattrs.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    out
}

/// Whether relative path `k` exists in one of `lowers` (top first) without an opaque directory
/// of a layer above hiding it (an approximation of the lower stack's merged view: whiteouts
/// and redirects are not considered).
fn visible_below(lowers: &[PathBuf], k: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    for l in lowers {
        if let Ok(m) = fs::symlink_metadata(l.join(k)) {
            // A whiteout hides the name.
            return !m.file_type().is_char_device();
        }
        let mut wh = std::ffi::OsString::from(".wh.");
        wh.push(k.file_name().unwrap_or_default());
        if fs::symlink_metadata(l.join(k).with_file_name(wh)).is_ok() {
            return false;
        }
        let opaque_ancestor = k
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| opaque_of(&l.join(a)).as_deref() == Some(b"y"));
        if opaque_ancestor {
            return false;
        }
    }
    false
}

pub fn describe(n: &common::Node) -> String {
    match n.kind {
        Kind::Char if n.rdev == 0 => "whiteout".into(),
        Kind::File => format!("file, {} bytes", n.size),
        k => format!("{k:?}"),
    }
}

/// `WORKDIR/work` must be empty (or absent) when no operation is in flight.
pub fn check_work_empty(workdir: &Path) -> Result<(), String> {
    let w = workdir.join("work");
    match common::list_names(&w) {
        Ok(v) if v.is_empty() => Ok(()),
        Ok(v) => Err(format!(
            "{} is not empty: {:?}",
            w.display(),
            v.iter().take(20).collect::<Vec<_>>()
        )),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(format!("list {}: {e}", w.display())),
    }
}

// ------------------------------------------------------------------------------------------
// Syscall wrappers (raw errnos)
// ------------------------------------------------------------------------------------------

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("NUL in path")
}

pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

pub type Res<T> = Result<T, i32>;

pub fn rc(r: libc::c_int) -> Res<()> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

/// An owned fd closed on drop.
pub struct Fd(pub libc::c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

pub fn open(p: &Path, flags: i32, mode: u32) -> Res<Fd> {
    let c = cstr(p);
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 { Err(errno()) } else { Ok(Fd(fd)) }
}

pub fn pwrite(fd: &Fd, data: &[u8], off: u64) -> Res<usize> {
    let n = unsafe {
        libc::pwrite(
            fd.0,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            off as libc::off_t,
        )
    };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

pub fn write(fd: &Fd, data: &[u8]) -> Res<usize> {
    let n = unsafe { libc::write(fd.0, data.as_ptr() as *const libc::c_void, data.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

pub fn pread_all(fd: &Fd, max: usize) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = unsafe {
            libc::pread(
                fd.0,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                out.len() as libc::off_t,
            )
        };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 || out.len() >= max {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

pub fn read_all(fd: &Fd, max: usize) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = unsafe { libc::read(fd.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 || out.len() >= max {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

pub fn fstat(fd: &Fd) -> Res<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    rc(unsafe { libc::fstat(fd.0, &mut st) }).map(|_| st)
}

pub fn lstat(p: &Path) -> Res<libc::stat> {
    let c = cstr(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    rc(unsafe { libc::lstat(c.as_ptr(), &mut st) }).map(|_| st)
}

pub fn mkdir(p: &Path, mode: u32) -> Res<()> {
    let c = cstr(p);
    rc(unsafe { libc::mkdir(c.as_ptr(), mode) })
}
pub fn rmdir(p: &Path) -> Res<()> {
    let c = cstr(p);
    rc(unsafe { libc::rmdir(c.as_ptr()) })
}
pub fn unlink(p: &Path) -> Res<()> {
    let c = cstr(p);
    rc(unsafe { libc::unlink(c.as_ptr()) })
}
pub fn link(a: &Path, b: &Path) -> Res<()> {
    let (ca, cb) = (cstr(a), cstr(b));
    rc(unsafe { libc::link(ca.as_ptr(), cb.as_ptr()) })
}
pub fn symlink(target: &str, p: &Path) -> Res<()> {
    let (ct, cp) = (CString::new(target).unwrap(), cstr(p));
    rc(unsafe { libc::symlink(ct.as_ptr(), cp.as_ptr()) })
}
pub fn mkfifo(p: &Path, mode: u32) -> Res<()> {
    let c = cstr(p);
    rc(unsafe { libc::mknod(c.as_ptr(), libc::S_IFIFO | mode, 0) })
}
pub fn rename2(a: &Path, b: &Path, flags: u32) -> Res<()> {
    let (ca, cb) = (cstr(a), cstr(b));
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    };
    if r < 0 { Err(errno()) } else { Ok(()) }
}
pub fn chmod(p: &Path, mode: u32) -> Res<()> {
    let c = cstr(p);
    rc(unsafe { libc::chmod(c.as_ptr(), mode) })
}
pub fn lchown(p: &Path, uid: u32, gid: u32) -> Res<()> {
    let c = cstr(p);
    rc(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}
pub fn truncate(p: &Path, len: u64) -> Res<()> {
    let c = cstr(p);
    rc(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) })
}
pub fn utimens(p: &Path, atime: (i64, i64), mtime: (i64, i64), nofollow: bool) -> Res<()> {
    let c = cstr(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as _,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as _,
            tv_nsec: mtime.1 as _,
        },
    ];
    let fl = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    rc(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), fl) })
}
/// Sets the mtime of an open file, leaving its atime alone.
pub fn futimens_mtime(fd: &Fd, secs: i64) -> Res<()> {
    common::futimens_mtime(fd.0, secs).map_err(|e| e.raw_os_error().unwrap_or(-1))
}
pub fn lsetxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Res<()> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    rc(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
}
pub fn lremovexattr(p: &Path, name: &str) -> Res<()> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    rc(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}
pub fn lgetxattr(p: &Path, name: &str) -> Res<Vec<u8>> {
    common::lgetxattr(p, OsStr::new(name)).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Size-independent summary of an lstat: type, mode, owner, size (non-dirs), nlink (non-dirs),
/// mtime when not "recent".
pub fn stat_summary(st: &libc::stat) -> String {
    let fmt = st.st_mode & libc::S_IFMT;
    let dir = fmt == libc::S_IFDIR;
    let mt = if st.st_mtime >= now_secs() - 2 * 86400 {
        "now".to_string()
    } else {
        format!("{}.{:09}", st.st_mtime, st.st_mtime_nsec)
    };
    if dir {
        format!(
            "dir mode={:o} {}:{}",
            st.st_mode & 0o7777,
            st.st_uid,
            st.st_gid
        )
    } else {
        format!(
            "type={:o} mode={:o} {}:{} size={} nlink={} mtime={}",
            fmt >> 12,
            st.st_mode & 0o7777,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_nlink,
            mt
        )
    }
}

pub fn errname(e: i32) -> String {
    let s = unsafe { std::ffi::CStr::from_ptr(libc::strerror(e)) };
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EXDEV => "EXDEV",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::ENODATA => "ENODATA",
        libc::ENXIO => "ENXIO",
        libc::ESPIPE => "ESPIPE",
        libc::EBADF => "EBADF",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EMLINK => "EMLINK",
        libc::ENOTCONN => "ENOTCONN",
        libc::EIO => "EIO",
        libc::ELOOP => "ELOOP",
        libc::EBUSY => "EBUSY",
        _ => "",
    };
    format!("{name}({e}: {})", s.to_string_lossy())
}

pub fn show_res<T: std::fmt::Debug>(r: &Res<T>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", errname(*e)),
    }
}

pub fn panic_msg(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Collects the failures of one test that runs its steps on both mounts.
pub struct Checks {
    pub fails: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Checks { fails: Vec::new() }
    }
    /// Runs `f` on both roots; a difference is a failure. Returns (kernel, under test).
    pub fn both<R: PartialEq + std::fmt::Debug>(
        &mut self,
        fx: &WFixture,
        what: &str,
        f: impl Fn(&Path) -> R,
    ) -> (R, R) {
        let a = f(fx.k());
        let b = f(fx.f());
        if a != b {
            self.fails
                .push(format!("{what}: kernel {a:?} vs under test {b:?}"));
        }
        (a, b)
    }
    /// An expectation: must hold on the kernel side (else the test is wrong: panic), is a
    /// failure on the side under test.
    pub fn expect(&mut self, kernel_side: bool, ok: bool, msg: impl Into<String>) {
        let msg = msg.into();
        if kernel_side {
            assert!(
                ok,
                "test bug: expectation does not hold on the kernel: {msg}"
            );
        } else if !ok {
            self.fails.push(msg);
        }
    }
    /// Runs `check(root_of_mount, upper_dir, is_kernel)` on both sides.
    pub fn expect_both(&mut self, fx: &WFixture, f: impl Fn(&Path, &Path) -> Result<(), String>) {
        if let Err(e) = f(fx.k(), &fx.k_upper) {
            panic!("test bug: expectation does not hold on the kernel: {e}");
        }
        if let Err(e) = f(fx.f(), &fx.f_upper) {
            self.fails.push(e);
        }
    }
    /// Like [`Checks::expect_both`] on the two merged roots, the failure prefixed with `what`.
    pub fn holds(&mut self, fx: &WFixture, what: &str, f: impl Fn(&Path) -> Result<(), String>) {
        if let Err(e) = f(fx.k()) {
            panic!("test bug: {what} does not hold on the kernel: {e}");
        }
        if let Err(e) = f(fx.f()) {
            self.fails.push(format!("{what}: {e}"));
        }
    }
    pub fn finish(mut self, what: &str, fx: &mut WFixture) {
        self.fails.extend(fx.finish());
        assert_no_failures(what, &self.fails);
    }
}

/// Panics with all failures, one per line.
pub fn assert_no_failures(what: &str, failures: &[String]) {
    if !failures.is_empty() {
        let mut s = format!("{what}: {} failure(s)", failures.len());
        for f in failures.iter().take(60) {
            s.push_str("\n  - ");
            s.push_str(f);
        }
        panic!("{s}");
    }
}

/// Small file metadata helper: (st_blocks, st_size) of a path.
pub fn blocks_and_size(p: &Path) -> (u64, u64) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.blocks(), m.size())
}
