//! The command line: one file per subcommand, plus the fuse-overlayfs
//! compatible form (`layerfs [SOURCE] MOUNTPOINT -o lowerdir=...`) that tools
//! taking a mount program call.
//!
//! Dispatch: a first argument that names a subcommand (or asks for help or the
//! version) goes to clap; anything else is the compat form.

pub mod commit;
pub mod diff;
pub mod explain;
pub mod history;
pub mod images;
pub mod import;
pub mod inspect;
pub mod layers;
pub mod load;
pub mod mount;
pub mod options;
pub mod prune;
pub mod ps;
pub mod refresh;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod save;
pub mod start;
pub mod state;
pub mod stats;
pub mod tag;

use clap::{CommandFactory, Parser, Subcommand};

use options::{Compat, MountOptions};

const COMPAT_HELP: &str = "\
DROP-IN FORM (compatible with fuse-overlayfs and mount -t fuse.layerfs):
  layerfs [SOURCE] MOUNTPOINT -o lowerdir=A:B[,upperdir=U,workdir=W][,OPTIONS] [-f] [-d]

  The leftmost lowerdir is the top layer. `\\:` escapes a colon in a path and
  `\\,` a comma. Relative paths resolve against the current directory. Without
  upperdir the mount is read-only. The command returns once the mount is live
  and serves in the background; `umount MOUNTPOINT` or `fusermount3 -u` ends it.

MOUNT OPTIONS:
  lowerdir=DIR[:DIR...]   read-only layers, top first (required)
  upperdir=DIR            writable layer that receives every change
  workdir=DIR             empty directory on upperdir's filesystem, for atomic copy-up
  volatile, fsync=0       skip fsync on copy-up and make fsync a no-op
  whiteout=auto|chardev|file
                          how deletions are recorded in upperdir (auto: char
                          device 0/0 when allowed, else .wh.NAME files)
  timeout=SECONDS         how long the kernel caches names and attributes (86400)
  threads=N, threaded=0|1 request-serving threads (one per CPU, 2 to 8)
  uring=on|off|N          FUSE over io_uring (on, 1 thread per CPU): requests
                          are served on the CPU that made them, which saves a
                          cross-CPU wake-up per request; needs Linux 6.14+
                          with /sys/module/fuse/parameters/enable_uring set to
                          Y (root can set it), else /dev/fuse is used
  passthrough=on|off      FUSE passthrough for open files (on when root in the
                          initial user namespace and the kernel offers it)
  writeback=on|off        the kernel's writeback cache for writable mounts (on
                          when there is no passthrough, e.g. rootless): writes
                          are cached and sent in big batches; on also gives
                          up passthrough for it
  readdirplus=auto|on|off attributes with directory listings: they save a
                          LOOKUP per entry for ls -l or git status, but cost
                          find and os.walk an inode per entry; auto (default)
                          sends them while the names listed get looked up,
                          on lets the kernel choose, off never
  max_inodes=N            inodes the daemon keeps in memory (200000, about
                          40 MiB): near it, the kernel is asked to forget
                          the least recently used ones it is not using
                          (Linux 6.18+); 0: keep all it holds
  static_nlink            report nlink 1 for every directory
  noxattrs=1|0            no extended attributes at all (1): every xattr call
                          fails with EOPNOTSUPP, and ls -l stops asking
  redirect_dir=on|follow|off|nofollow
                          renaming a directory that exists in a lower layer:
                          on (default) moves it by an overlay.redirect xattr,
                          as kernel overlayfs with redirect_dir=on; follow and
                          off refuse it with EXDEV (mv then copies), still
                          following existing redirects; with nofollow a
                          renamed directory cannot be looked up (EPERM)
  metacopy=on|off         chmod/chown/touch of a lower file copies its metadata
                          only, the data on first write (on, default); off
                          copies the data at once
  userxattr               keep overlay marks in user.overlay.* even as root
                          (the default is trusted.overlay.* where allowed)
  index=, xino=, uuid=, nfs_export=
                          kernel overlayfs options, accepted with any value:
                          hard links stay linked across copy-up and inode
                          numbers are stable either way
  context=, fscontext=, defcontext=, rootcontext=
                          SELinux labels, passed to the kernel as given
                          (quote a value that holds commas)
  uidmapping=C:H:N[:C:H:N...], gidmapping=C:H:N[:C:H:N...]
                          ids C..C+N stored in the layers show as H..H+N, and
                          a chown to (or a file created by) H+k stores C+k, as
                          with fuse-overlayfs; other ids show, and are stored,
                          as the overflow id (65534)
  squash_to_root, squash_to_uid=N, squash_to_gid=N
                          every file shows as owned by root, or by uid/gid N
                          (squash_to_uid/gid win over squash_to_root); what is
                          stored is unchanged
  trace=FILE              append copy-on-write events to FILE as JSON Lines
                          (also LAYERFS_TRACE=FILE; see `layerfs stats`)
  ro, rw, dev, nodev, suid, nosuid, exec, noexec, atime, noatime, sync, async,
  dirsync, allow_other, allow_root, default_permissions, fsname=NAME, subtype=NAME
                          generic FUSE/mount options (defaults: nodev, nosuid;
                          as root also allow_other and default_permissions)
  fast_ino=, noacl, relatime and other mount(8) generic options
                          accepted and ignored

  Not implemented yet (accepted by fuse-overlayfs; layerfs refuses them):
    xattr_permissions=, plugins=

  Layers are taken as immutable while mounted: after changing a lower layer
  directly, run `layerfs refresh MOUNTPOINT` (see `layerfs refresh --help`).

EXAMPLES:
  layerfs -o lowerdir=/layers/app:/layers/base /mnt/merged
  layerfs mount --layer /layers/app --layer /layers/base /mnt/merged
  mount -t fuse.layerfs layerfs /mnt/merged -o lowerdir=/layers/app:/layers/base
  umount /mnt/merged";

const RUN_HELP: &str = "\
EXIT STATUS:
  the command's; 125 when the runner fails, 126 when the command cannot be
  executed, 127 when it is not found, 128+N when it dies of signal N.

EXAMPLES:
  layerfs run --rm busybox sh -c 'echo hello; id'
  layerfs run -it --name box busybox sh
  layerfs start -a box
  layerfs run --rootfs ./rootfs -- /bin/sh";

/// layerfs: mount container image layers as one merged tree, without root
/// and without the kernel's overlayfs.
#[derive(Parser, Debug)]
#[command(name = "layerfs", version, after_help = COMPAT_HELP)]
pub struct Cli {
    /// The image store (default: /var/lib/layerfs for root, else
    /// $XDG_DATA_HOME/layerfs or ~/.local/share/layerfs).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount an image from the store, or a stack of layer directories (first --layer on top).
    #[command(allow_missing_positional = true)]
    Mount(mount::MountArgs),
    /// Load images from a docker save archive or an OCI layout (dir or tar).
    Load(load::LoadArgs),
    /// Import one layer tarball (plain, gzip or zstd) as a one-layer image.
    Import(import::ImportArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Show the history of an image.
    History(history::HistoryArgs),
    /// Show details of images as JSON.
    Inspect(inspect::InspectArgs),
    /// Give an image another name.
    Tag(tag::TagArgs),
    /// Remove images (untag; delete when the last tag goes).
    Rmi(rmi::RmiArgs),
    /// Delete layers and blobs no image or container uses.
    Prune(prune::PruneArgs),
    /// Run a command in a new container from an image, without root.
    #[command(after_help = RUN_HELP)]
    Run(run::RunArgs),
    /// List containers.
    Ps(ps::PsArgs),
    /// Run a stopped container again, keeping its changes.
    Start(start::StartArgs),
    /// Remove containers and their changes.
    Rm(rm::RmArgs),
    /// Explain a path: which layer serves it, what it hides, whiteouts, copy-up.
    Explain(explain::ExplainArgs),
    /// Show a stack's layers, top first, with digests, sizes and entry counts.
    Layers(layers::LayersArgs),
    /// Show the counters of a running mount (or start tracing it).
    Stats(stats::StatsArgs),
    /// Make a running mount show changes made directly to its lower layers.
    #[command(after_help = refresh::REFRESH_HELP)]
    Refresh(refresh::RefreshArgs),
    /// List changes of an upper layer against its lower layers (A/C/D).
    Diff(diff::DiffArgs),
    /// Create a new image from a stopped container's changes.
    Commit(commit::CommitArgs),
    /// Save images to a tar archive (OCI layout + docker-save manifest.json).
    Save(save::SaveArgs),
}

const SUBCOMMANDS: &[&str] = &[
    "mount",
    "load",
    "import",
    "images",
    "history",
    "inspect",
    "tag",
    "rmi",
    "prune",
    "run",
    "ps",
    "start",
    "rm",
    "explain",
    "layers",
    "stats",
    "refresh",
    "diff",
    "commit",
    "save",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
    "--root",
];

/// Runs the command line; returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let first = args.get(1).map(String::as_str);
    if args.len() <= 1
        || first.is_some_and(|a| SUBCOMMANDS.contains(&a) || a.starts_with("--root="))
    {
        let cli = match Cli::try_parse_from(&args) {
            Ok(c) => c,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() { 2 } else { 0 };
            }
        };
        let store = crate::store::Store::at(cli.root);
        return match cli.command {
            Command::Mount(m) => match m.into_request(&store) {
                Ok(req) => mount::run(req),
                Err(e) => {
                    eprintln!("layerfs: {e}");
                    2
                }
            },
            Command::Load(a) => load::run(a, &store),
            Command::Import(a) => import::run(a, &store),
            Command::Images(a) => images::run(a, &store),
            Command::History(a) => history::run(a, &store),
            Command::Inspect(a) => inspect::run(a, &store),
            Command::Tag(a) => tag::run(a, &store),
            Command::Rmi(a) => rmi::run(a, &store),
            Command::Prune(a) => prune::run(a, &store),
            Command::Run(a) => run::run(a, &store),
            Command::Ps(a) => ps::run(a, &store),
            Command::Start(a) => start::run(a, &store),
            Command::Rm(a) => rm::run(a, &store),
            Command::Explain(a) => explain::run(a, &store),
            Command::Layers(a) => layers::run(a, &store),
            Command::Stats(a) => stats::run(a),
            Command::Refresh(a) => refresh::run(a),
            Command::Diff(a) => diff::run(a, &store),
            Command::Commit(a) => commit::run(a, &store),
            Command::Save(a) => save::run(a, &store),
        };
    }
    match options::parse_compat(&args[1..]) {
        Ok(Compat::Help) => {
            let _ = Cli::command().print_long_help();
            0
        }
        Ok(Compat::Version) => {
            println!("layerfs {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Compat::Mount(c)) => {
            let mut opts = MountOptions::default();
            for o in &c.options {
                if let Err(e) = opts.apply(o) {
                    eprintln!("layerfs: {e}");
                    return 2;
                }
            }
            mount::run(mount::MountRequest {
                options: opts,
                source: c.source,
                mountpoint: c.mountpoint.into(),
                foreground: c.foreground,
                debug: c.debug,
            })
        }
        Err(e) => {
            eprintln!("layerfs: {e}");
            2
        }
    }
}
