//! `layerfs run`: create a container from an image and run a command in it
//! (or, with `--rootfs DIR`, run a command in a directory); also the part
//! shared with `layerfs start`.
//!
//! Order: every check that needs no privileges (flags, /dev/fuse, the
//! image, the command) first, then the user namespace, then the container
//! record, then the launch. A runner error (exit 125) of a fresh `run`
//! removes the container again: bad input leaves nothing behind.

use std::path::PathBuf;

use clap::Args;

use crate::runner::launch::{self, Launch, Rootfs};
use crate::runner::record::{self, Container, EtcFiles, Record, Status};
use crate::runner::spec::{self, EXIT_RUNNER, EnvInputs, UserSpec};
use crate::runner::userns::{self, Mapping};
use crate::store::Store;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Name the container (default: a generated adjective_noun).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Remove the container (its upper layer included) when it ends.
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable; KEY alone copies the host's value.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory inside the container (default: the image's, else /).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user (name or id, from the container's /etc/passwd).
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Host name inside the container (default: the short container ID).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Keep stdin open (without -i the command reads /dev/null).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run in this directory (or already mounted stack) instead of an image;
    /// then every argument is the command.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// IMAGE [COMMAND [ARG...]]; with --rootfs: COMMAND [ARG...].
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("layerfs: {msg}");
    EXIT_RUNNER
}

/// Checks that /dev/fuse can be opened for reading and writing.
pub(super) fn check_fuse() -> Result<(), String> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| {
            format!(
                "cannot open /dev/fuse: {e} (the runner mounts with FUSE: \
                 modprobe fuse, and make /dev/fuse mode 0666)"
            )
        })
}

/// Logging as for the mount daemon: warnings only, LAYERFS_LOG overrides.
pub(super) fn init_logging() {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Warn)
        .filter_module("fuser", log::LevelFilter::Error)
        .parse_env("LAYERFS_LOG")
        .format_timestamp_millis();
    let _ = b.try_init();
}

fn etc_files(hostname: &str) -> EtcFiles {
    EtcFiles {
        hosts: format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
        hostname: format!("{hostname}\n"),
        resolv_conf: std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    }
}

pub fn run(args: RunArgs, store: &Store) -> i32 {
    init_logging();
    match &args.rootfs {
        Some(dir) => run_rootfs(&args, dir.clone()),
        None => run_image(args, store),
    }
}

/// What every run checks before touching anything.
struct Checked {
    user: Option<UserSpec>,
    hostname: Option<String>,
}

fn check_flags(args: &RunArgs) -> Result<Checked, String> {
    if let Some(n) = &args.name {
        record::check_name(n).map_err(|e| e.to_string())?;
    }
    if let Some(h) = &args.hostname {
        spec::check_hostname(h).map_err(|e| e.to_string())?;
    }
    let user = args
        .user
        .as_deref()
        .map(UserSpec::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    if let Some(w) = &args.workdir {
        spec::workdir(&Default::default(), Some(w)).map_err(|e| e.to_string())?;
    }
    Ok(Checked {
        user,
        hostname: args.hostname.clone(),
    })
}

fn run_rootfs(args: &RunArgs, dir: PathBuf) -> i32 {
    let checked = match check_flags(args) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let root = match std::fs::canonicalize(&dir) {
        Ok(p) if p.is_dir() => p,
        Ok(_) => return fail(format!("--rootfs {} is not a directory", dir.display())),
        Err(e) => return fail(format!("--rootfs {}: {e}", dir.display())),
    };
    if args.args.is_empty() {
        return fail(spec::SpecError::NoCommand);
    }
    let hostname = checked
        .hostname
        .unwrap_or_else(|| record::short(&record::new_id()).to_string());
    let env = match spec::environment(
        &[],
        &EnvInputs {
            flags: &args.env,
            hostname: &hostname,
            home: None,
            tty: args.tty,
        },
        |k| std::env::var(k).ok(),
    ) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let workdir = args.workdir.clone().unwrap_or_else(|| "/".into());
    let mapping = match userns::enter() {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let l = Launch {
        rootfs: Rootfs::Dir(root),
        hostname,
        binds: Vec::new(),
        argv: args.args.clone(),
        env,
        workdir,
        user: checked.user,
        tty: args.tty,
        interactive: args.interactive,
        mapping,
    };
    match launch::launch(l, || {}) {
        Ok(end) => {
            if let Some(m) = &end.message {
                eprintln!("layerfs: {m}");
            }
            end.code
        }
        Err(e) => fail(e),
    }
}

fn run_image(args: RunArgs, store: &Store) -> i32 {
    let checked = match check_flags(&args) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let Some((image_text, cmd_args)) = args.args.split_first() else {
        return fail("\"layerfs run\" requires an IMAGE (or --rootfs DIR)");
    };
    if let Err(e) = check_fuse() {
        return fail(e);
    }
    let img = match store.resolve(image_text) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    if let Err(e) = store.layer_dirs(&img) {
        return fail(e);
    }
    let cfg = match spec::parse_run_config(&img.config_raw) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let command = match spec::command(&cfg, cmd_args) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let workdir = match spec::workdir(&cfg, args.workdir.as_deref()) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let user = match (&checked.user, cfg.user.as_deref().filter(|u| !u.is_empty())) {
        (Some(_), _) => args.user.clone().unwrap_or_default(),
        (None, Some(u)) => match UserSpec::parse(u) {
            Ok(_) => u.to_string(),
            Err(e) => return fail(format!("image {image_text}: {e}")),
        },
        (None, None) => String::new(),
    };
    let id = record::new_id();
    let hostname = checked
        .hostname
        .unwrap_or_else(|| record::short(&id).to_string());
    let env = match spec::environment(
        cfg.env.as_deref().unwrap_or_default(),
        &EnvInputs {
            flags: &args.env,
            hostname: &hostname,
            home: None,
            tty: args.tty,
        },
        |k| std::env::var(k).ok(),
    ) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    log::debug!("image {image_text} resolved");
    let mapping = match userns::enter() {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    log::debug!("user namespace entered: {mapping:?}");
    let naming = match args.name {
        Some(_) => record::Naming::Given,
        None => record::Naming::Generated,
    };
    let mut rec = Record {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| record::default_name(&id)),
        id,
        image: img.id.to_string(),
        image_name: image_text.clone(),
        command,
        env,
        workdir,
        user,
        hostname: hostname.clone(),
        tty: args.tty,
        created: record::now(),
        started: None,
        finished: None,
        status: Status::Created,
        exit_code: None,
    };
    let c = match record::create(store, &mut rec, &etc_files(&hostname), naming) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    log::debug!("container {} created", rec.id);
    start_container(store, &c, rec, mapping, args.interactive, true, args.rm)
}

/// Runs a container from its record and updates the record. `fresh`: the
/// container was created by this command (a runner error removes it);
/// `remove`: `--rm`.
pub(super) fn start_container(
    store: &Store,
    c: &Container,
    mut rec: Record,
    mapping: Mapping,
    interactive: bool,
    fresh: bool,
    remove: bool,
) -> i32 {
    let cleanup = |code: i32| {
        if fresh || remove {
            let _ = c.remove();
        }
        code
    };
    let lock = match c.lock_for_run() {
        Ok(Some(l)) => l,
        Ok(None) => return fail(record::RecordError::Running(rec.name.clone())),
        Err(e) => return cleanup(fail(e)),
    };
    let img = match store.resolve(&rec.image) {
        Ok(i) => i,
        Err(e) => return cleanup(fail(format!("container {}: {e}", rec.name))),
    };
    let mut lowers = vec![c.init()];
    match store.layer_dirs(&img) {
        Ok(l) => lowers.extend(l),
        Err(e) => return cleanup(fail(format!("container {}: {e}", rec.name))),
    }
    let user = if rec.user.is_empty() {
        None
    } else {
        match UserSpec::parse(&rec.user) {
            Ok(u) => Some(u),
            Err(e) => return cleanup(fail(e)),
        }
    };
    let binds = ["hosts", "hostname", "resolv.conf"]
        .iter()
        .map(|f| (c.etc_file(f), format!("/etc/{f}")))
        .collect();
    let l = Launch {
        rootfs: Rootfs::Stack {
            lowers,
            upper: c.upper(),
            work: c.work(),
            mountpoint: c.merged(),
            fsname: rec.image_name.clone(),
        },
        hostname: rec.hostname.clone(),
        binds,
        argv: rec.command.clone(),
        env: rec.env.clone(),
        workdir: rec.workdir.clone(),
        user,
        tty: rec.tty,
        interactive,
        mapping,
    };
    let mut running = rec.clone();
    let started = || {
        running.status = Status::Running;
        running.started = Some(record::now());
        let _ = c.write(&running);
    };
    let result = launch::launch(l, started);
    drop(lock);
    match result {
        Ok(end) => {
            if let Some(m) = &end.message {
                eprintln!("layerfs: {m}");
            }
            if end.runner_failed() && fresh {
                return cleanup(end.code);
            }
            if remove {
                let code = cleanup(end.code);
                log::debug!("container removed");
                return code;
            }
            rec.status = Status::Exited;
            rec.started = rec.started.or(Some(record::now()));
            rec.finished = Some(record::now());
            rec.exit_code = Some(end.code);
            if let Ok(r) = c.read() {
                rec.started = r.started.or(rec.started);
            }
            if let Err(e) = c.write(&rec) {
                eprintln!("layerfs: {e}");
            }
            end.code
        }
        Err(e) => {
            let code = fail(e);
            if fresh || remove { cleanup(code) } else { code }
        }
    }
}
