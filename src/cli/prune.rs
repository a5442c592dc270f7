//! `layerfs prune`: deletes layers and blobs that no image or container
//! references, and reports the space freed.

use clap::Args;

use crate::store::Store;
use crate::store::format::human_size;
use crate::store::gc;

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Accepted for docker compatibility; prune never asks.
    #[arg(short, long)]
    pub force: bool,
}

pub fn run(_args: PruneArgs, store: &Store) -> i32 {
    let r = store.lock().and_then(|lock| gc::prune(store, &lock));
    match r {
        Ok(p) => {
            if !p.layers.is_empty() {
                println!("Deleted layers:");
                for l in &p.layers {
                    println!("deleted: {l}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", human_size(p.bytes));
            0
        }
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}
