//! `layerfs commit [-m MESSAGE] [-c INSTRUCTION]... CONTAINER [REPO[:TAG]]`:
//! a stopped container's changes become a new image (see
//! [`crate::store::commit`] for the layer format).
//!
//! Owns: the command line, finding the container, and the policy:
//! - a running container is refused ("stop it first"): the upper layer of a
//!   live container changes under the tar writer, so there is no consistent
//!   snapshot without freezing it. The container's run lock is held for the
//!   whole commit, so `start` cannot begin meanwhile;
//! - a container whose image was removed (`rmi -f`) still commits while the
//!   image's config blob and layers are in the store (`prune` keeps what
//!   containers use); once they are gone, one clear error line;
//! - `-c` instructions are all parsed before anything is read.
//!
//! Runs in the runner's user namespace (as `rm` does), so files the
//! container created under other ids are read with their container owners.

use clap::Args;

use crate::runner::record::{self, RecordError};
use crate::runner::userns;
use crate::store::Store;
use crate::store::change;
use crate::store::commit::{self, CommitRequest};
use crate::store::reference::Reference;

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// Commit message (the history entry's comment).
    #[arg(short, long, value_name = "MESSAGE")]
    pub message: Option<String>,
    /// Author (the config's and history entry's author).
    #[arg(short, long, value_name = "AUTHOR")]
    pub author: Option<String>,
    /// Apply a Dockerfile instruction to the image config: CMD, ENTRYPOINT,
    /// ENV, WORKDIR, USER, LABEL or EXPOSE (repeatable).
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
    /// The stopped container, by name or ID or ID prefix.
    pub container: String,
    /// Name for the new image (without one it is known by its ID only).
    #[arg(value_name = "REPO[:TAG]")]
    pub reference: Option<String>,
}

pub fn run(args: CommitArgs, store: &Store) -> i32 {
    let mut changes = Vec::new();
    for c in &args.changes {
        match change::parse(c) {
            Ok(c) => changes.push(c),
            Err(e) => {
                eprintln!("layerfs: {e}");
                return 2;
            }
        }
    }
    let tag = match args.reference.as_deref().map(Reference::parse).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 2;
        }
    };
    let (c, r) = match record::find(store, &args.container) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    let _run_lock = match c.try_lock() {
        Ok(Some(f)) => f,
        Ok(None) => {
            eprintln!(
                "layerfs: cannot commit container {}: it is running; stop it first (commit needs a consistent snapshot of its changes)",
                r.name
            );
            return 1;
        }
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    if let Err(e) = userns::enter() {
        eprintln!("layerfs: {e}");
        return 1;
    }
    let lock = match store.lock() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("layerfs: {}", RecordError::Store(e));
            return 1;
        }
    };
    let upper = c.upper();
    let req = CommitRequest {
        upper: &upper,
        container: &r.name,
        image: &r.image,
        created_by: commit::describe_command(&r.command),
        message: args.message,
        author: args.author,
        changes: &changes,
        tag: tag.as_ref(),
    };
    match commit::commit(store, &lock, &req) {
        Ok(done) => {
            println!("{}", done.id);
            0
        }
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}
