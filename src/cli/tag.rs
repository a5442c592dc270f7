//! `layerfs tag SOURCE TARGET`: gives an image another name.

use clap::Args;

use crate::store::Store;
use crate::store::oci::{self, Descriptor};
use crate::store::reference::Reference;

#[derive(Args, Debug)]
pub struct TagArgs {
    /// The image to name: a name or an ID or ID prefix.
    #[arg(value_name = "SOURCE_IMAGE[:TAG]")]
    pub source: String,
    /// The new name (TAG defaults to latest).
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    pub target: String,
}

pub fn run(args: TagArgs, store: &Store) -> i32 {
    let target = match Reference::parse(&args.target) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 2;
        }
    };
    let r = store.lock().and_then(|lock| {
        let img = store.resolve(&args.source)?;
        let size = std::fs::metadata(store.blob_path(&img.manifest_digest)).map_or(0, |m| m.len());
        let desc = Descriptor::new(oci::MT_OCI_MANIFEST, img.manifest_digest.clone(), size);
        store.set_tag(&lock, &desc, Some(&target))
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}
