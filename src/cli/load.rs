//! `layerfs load -i FILE|DIR`: loads every image of a `docker save` archive
//! or an OCI image layout (directory or tar) into the store. Also holds the
//! options `load` and `import` share (limits, quiet).

use std::path::PathBuf;

use clap::Args;

use crate::store::Store;
use crate::store::extract::{ExtractOptions, Limits};
use crate::store::load::{self, LoadOptions, Loaded};

/// Options shared by `load` and `import`.
#[derive(Args, Debug, Clone)]
pub struct LoadFlags {
    /// Largest uncompressed size of one layer (suffixes K, M, G, T).
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "64G")]
    pub max_layer_size: u64,
    /// Most entries in one layer.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_entries)]
    pub max_layer_entries: u64,
    /// Do not show progress.
    #[arg(short, long)]
    pub quiet: bool,
}

impl LoadFlags {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            extract: ExtractOptions {
                limits: Limits {
                    max_bytes: self.max_layer_size,
                    max_entries: self.max_layer_entries,
                    ..Limits::default()
                },
                ..ExtractOptions::default()
            },
            progress: !self.quiet,
        }
    }
}

/// Parses `123`, `10K`, `64M`, `2G`, `1T` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in '{s}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size '{s}'"))
}

/// Prints what a load did, docker's way, and its warnings.
pub fn report(loaded: &Loaded) {
    for w in &loaded.warnings {
        eprintln!("layerfs: warning: {w}");
    }
    if loaded.tags.is_empty() {
        println!("Loaded image ID: {}", loaded.id);
    }
    for t in &loaded.tags {
        println!("Loaded image: {t}");
    }
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The archive or directory to load (docker save, OCI layout).
    #[arg(short, long, value_name = "FILE|DIR")]
    pub input: PathBuf,
    #[command(flatten)]
    pub flags: LoadFlags,
}

pub fn run(args: LoadArgs, store: &Store) -> i32 {
    let lock = match store.lock() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    match load::load(store, &lock, &args.input, &args.flags.options()) {
        Ok(images) => {
            images.iter().for_each(report);
            0
        }
        Err(e) => {
            eprintln!("layerfs: load {}: {e}", args.input.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("123", Some(123)),
            ("10K", Some(10 << 10)),
            ("64g", Some(64 << 30)),
            ("1T", Some(1 << 40)),
            ("1X", None),
            ("", None),
            ("G", None),
            ("99999999999T", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s).ok(), *want, "{s}");
        }
    }
}
