//! `layerfs inspect IMAGE...`: a JSON array shaped like `docker image
//! inspect`, plus where the layers are (`GraphDriver.Data.LowerDir`, top
//! first, ready for `lowerdir=`).

use clap::Args;
use serde_json::{Value, json};

use crate::store::{Image, Store};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Images by name (REPO[:TAG]) or ID or ID prefix.
    #[arg(required = true)]
    pub images: Vec<String>,
}

fn describe(store: &Store, img: &Image) -> Value {
    let raw: Value = serde_json::from_slice(&img.config_raw).unwrap_or(Value::Null);
    let field = |k: &str| raw.get(k).cloned().unwrap_or(Value::String(String::new()));
    let lower: Vec<String> = store
        .layer_dirs(img)
        .unwrap_or_default()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    json!({
        "Id": img.id.to_string(),
        "RepoTags": img.tags.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "RepoDigests": [],
        "Parent": "",
        "Comment": field("comment"),
        "Created": field("created"),
        "Author": field("author"),
        "Config": raw.get("config").cloned().unwrap_or(Value::Null),
        "Architecture": field("architecture"),
        "Variant": raw.get("variant").cloned(),
        "Os": field("os"),
        "Size": store.image_size(img),
        "GraphDriver": {"Name": "layerfs", "Data": {"LowerDir": lower.join(":")}},
        "RootFS": {
            "Type": "layers",
            "Layers": img.config.rootfs.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
        "Descriptor": {
            "mediaType": crate::store::oci::MT_OCI_MANIFEST,
            "digest": img.manifest_digest.to_string(),
        },
    })
}

pub fn run(args: InspectArgs, store: &Store) -> i32 {
    let mut out = Vec::new();
    let mut code = 0;
    for name in &args.images {
        match store.resolve(name) {
            Ok(img) => out.push(describe(store, &img)),
            Err(e) => {
                eprintln!("layerfs: {e}");
                code = 1;
            }
        }
    }
    match serde_json::to_string_pretty(&out) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("layerfs: {e}");
            code = 1;
        }
    }
    code
}
