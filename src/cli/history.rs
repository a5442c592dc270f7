//! `layerfs history IMAGE`: the image's history, newest first, docker's
//! columns (IMAGE, CREATED, CREATED BY, SIZE, COMMENT). Rows other than the
//! newest show `<missing>` for IMAGE, as docker does for loaded images;
//! history entries of empty layers have size 0B.

use clap::Args;

use crate::store::Store;
use crate::store::format::{ago, human_size, now, parse_rfc3339, table, truncate};

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Do not truncate CREATED BY.
    #[arg(long)]
    pub no_trunc: bool,
    /// The image: a name (REPO[:TAG]) or an ID or ID prefix.
    pub image: String,
}

pub fn run(args: HistoryArgs, store: &Store) -> i32 {
    let img = match store.resolve(&args.image) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    let (now, _) = now();
    let diff_ids = &img.config.rootfs.diff_ids;
    let mut layer = 0;
    let mut rows = Vec::new();
    for h in &img.config.history {
        let size = if h.empty_layer {
            0
        } else {
            let s = diff_ids
                .get(layer)
                .and_then(|d| store.layer_info(d).ok().flatten())
                .map_or(0, |i| i.size);
            layer += 1;
            s
        };
        let by = h.created_by.clone().unwrap_or_default();
        rows.push(vec![
            "<missing>".to_string(),
            ago(h.created.as_deref().and_then(parse_rfc3339), now),
            if args.no_trunc { by } else { truncate(&by, 45) },
            human_size(size),
            h.comment.clone().unwrap_or_default(),
        ]);
    }
    // Layers the history does not describe (configs without history).
    for d in diff_ids.iter().skip(layer) {
        let size = store.layer_info(d).ok().flatten().map_or(0, |i| i.size);
        rows.push(vec![
            "<missing>".to_string(),
            "N/A".into(),
            String::new(),
            human_size(size),
            String::new(),
        ]);
    }
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first[0] = if args.no_trunc {
            img.id.to_string()
        } else {
            img.id.short().to_string()
        };
    }
    rows.insert(
        0,
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
            .map(String::from)
            .to_vec(),
    );
    print!("{}", table(&rows));
    0
}
