//! `layerfs import LAYER.tar[.gz|.zst] [REPO[:TAG]]`: one layer tarball
//! becomes a one-layer image; the compression is read from the magic bytes.

use std::path::PathBuf;

use clap::Args;

use super::load::LoadFlags;
use crate::store::Store;
use crate::store::load;
use crate::store::reference::Reference;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The layer tarball (plain, gzip or zstd).
    pub file: PathBuf,
    /// Name for the new image.
    #[arg(value_name = "REPO[:TAG]")]
    pub reference: Option<String>,
    #[command(flatten)]
    pub flags: LoadFlags,
}

pub fn run(args: ImportArgs, store: &Store) -> i32 {
    let reference = match args.reference.as_deref().map(Reference::parse).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 2;
        }
    };
    let lock = match store.lock() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    match load::import(
        store,
        &lock,
        &args.file,
        reference.as_ref(),
        &args.flags.options(),
    ) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("layerfs: warning: {w}");
            }
            println!("{}", loaded.id);
            0
        }
        Err(e) => {
            eprintln!("layerfs: import {}: {e}", args.file.display());
            1
        }
    }
}
