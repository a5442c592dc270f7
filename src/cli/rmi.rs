//! `layerfs rmi [-f] IMAGE...`: untags images, and removes an image from
//! the index when its last tag goes or when it is named by ID. Layers are
//! freed by `layerfs prune`.

use clap::Args;

use crate::store::Store;
use crate::store::gc;

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Remove even when a container uses the image or it has several tags.
    #[arg(short, long)]
    pub force: bool,
    /// Images by name (REPO[:TAG]: that name goes, the image with its last
    /// name) or by ID or ID prefix (the image goes).
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(args: RmiArgs, store: &Store) -> i32 {
    let lock = match store.lock() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    let mut code = 0;
    for name in &args.images {
        match gc::rmi(store, &lock, name, args.force) {
            Ok(r) => {
                for t in &r.untagged {
                    println!("Untagged: {t}");
                }
                if let Some(id) = r.deleted {
                    println!("Deleted: {id}");
                }
            }
            Err(e) => {
                eprintln!("layerfs: {e}");
                code = 1;
            }
        }
    }
    code
}
