//! `layerfs images`: the images in the store, docker's columns
//! (REPOSITORY, TAG, IMAGE ID, CREATED, SIZE), one row per tag.

use clap::Args;

use crate::store::Store;
use crate::store::format::{ago, human_size, now, parse_rfc3339, table};
use crate::store::reference::Reference;

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full image IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only images of this repository (and tag).
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub filter: Option<String>,
}

pub fn run(args: ImagesArgs, store: &Store) -> i32 {
    let images = match store.images() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    // A filter without a tag matches every tag of the repository.
    let filter = args.filter.as_deref().map(|f| {
        let tagged = f.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/'));
        (Reference::parse(f).ok(), tagged)
    });
    let (now, _) = now();
    let mut rows = vec![vec![
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    let mut ids = Vec::new();
    for img in &images {
        let id = if args.no_trunc {
            img.id.to_string()
        } else {
            img.id.short().to_string()
        };
        let created = ago(img.config.created.as_deref().and_then(parse_rfc3339), now);
        let size = human_size(store.image_size(img));
        let names: Vec<(String, String)> = if img.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            img.tags
                .iter()
                .map(|t| (t.repo.clone(), t.tag.clone()))
                .collect()
        };
        for (repo, tag) in names {
            if let Some((want, tagged)) = &filter {
                let Some(w) = want else { continue };
                if w.repo != repo || (*tagged && w.tag != tag) {
                    continue;
                }
            }
            if !ids.contains(&id) {
                ids.push(id.clone());
            }
            rows.push(vec![repo, tag, id.clone(), created.clone(), size.clone()]);
        }
    }
    if args.quiet {
        for id in ids {
            println!("{id}");
        }
    } else {
        print!("{}", table(&rows));
    }
    0
}
