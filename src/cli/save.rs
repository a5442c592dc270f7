//! `layerfs save IMAGE... [-o FILE]`: writes images to one tar archive that
//! `layerfs load`, `docker load`, `podman load` and skopeo
//! (`oci-archive:FILE`, `docker-archive:FILE`) read; see
//! [`crate::store::save`] for the layout. Without `-o`, the archive goes to
//! standard output, which must not be a terminal.

use std::path::PathBuf;

use clap::Args;

use crate::store::Store;
use crate::store::save;
use crate::sys::ns;

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Images by name (REPO[:TAG]) or ID or ID prefix.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

pub fn run(args: SaveArgs, store: &Store) -> i32 {
    let r = match &args.output {
        Some(p) if p.as_os_str() != "-" => save::save_to_file(store, &args.images, p),
        _ => {
            if ns::isatty(1) {
                eprintln!(
                    "layerfs: refusing to write an archive to a terminal: use -o FILE or redirect the output"
                );
                return 2;
            }
            save::save_to(store, &args.images, std::io::stdout().lock())
        }
    };
    match r {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}
