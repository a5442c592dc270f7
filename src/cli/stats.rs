//! `layerfs stats MOUNTPOINT`: the counters of a running mount, read from
//! its daemon's control socket (see `state`); `--trace FILE` starts tracing
//! copy-on-write events of a mount that was mounted without `trace=`.

use std::path::PathBuf;

use clap::Args;

use super::state;
use crate::overlay::layers::absolute;
use crate::store::format::table;

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of showing counters, start tracing copy-on-write events of
    /// the running mount into FILE (JSON Lines, as `-o trace=FILE`).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// A layerfs mountpoint.
    pub mountpoint: PathBuf,
}

pub fn run(args: StatsArgs) -> i32 {
    let r = state::find(&args.mountpoint).and_then(|st| {
        if let Some(f) = &args.trace {
            let p = absolute(f);
            state::request(&st, &format!("trace {}", p.display()))?;
            println!("tracing {} into {}", st.mountpoint.display(), p.display());
            return Ok(());
        }
        let s = state::stats(&st)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        } else {
            let rows: Vec<Vec<String>> = s
                .rows()
                .into_iter()
                .map(|(n, v)| vec![n.to_string(), v])
                .collect();
            print!("{}", table(&rows));
        }
        Ok(())
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}
