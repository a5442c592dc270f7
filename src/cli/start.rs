//! `layerfs start [-a] [-i] CONTAINER`: runs a stopped container again, with
//! the changes of its earlier runs (same upper layer), attached.

use clap::Args;

use super::run::{check_fuse, init_logging, start_container};
use crate::runner::record;
use crate::runner::spec::EXIT_RUNNER;
use crate::runner::userns;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach to the container's output (always on: layerfs has no daemon
    /// to leave a container running in the background).
    #[arg(short, long)]
    pub attach: bool,
    /// Attach stdin as well.
    #[arg(short, long)]
    pub interactive: bool,
    /// The container's name or ID.
    pub container: String,
}

pub fn run(args: StartArgs, store: &Store) -> i32 {
    init_logging();
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("layerfs: {e}");
        EXIT_RUNNER
    };
    let (c, rec) = match record::find(store, &args.container) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    if c.is_running() {
        return fail(&record::RecordError::Running(rec.name));
    }
    if let Err(e) = check_fuse() {
        return fail(&e);
    }
    let mapping = match userns::enter() {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    start_container(store, &c, rec, mapping, args.interactive, false, false)
}
