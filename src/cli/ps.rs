//! `layerfs ps [-a]`: containers with docker's columns (CONTAINER ID, IMAGE,
//! COMMAND, CREATED, STATUS, NAMES); running ones only without `-a`.

use clap::Args;

use crate::runner::record::{self, Record, Status};
use crate::store::Store;
use crate::store::format::{ago, human_duration, table, truncate};

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show every container (default: running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only show container IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show full IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
}

/// The COMMAND column: the quoted command line, truncated like docker's.
pub fn command_column(cmd: &[String], no_trunc: bool) -> String {
    let line = cmd.join(" ");
    let line = if no_trunc { line } else { truncate(&line, 20) };
    format!("\"{line}\"")
}

/// The STATUS column.
pub fn status_column(r: &Record, running: bool, now: i64) -> String {
    let since = |t: Option<u64>| human_duration(now - t.unwrap_or(r.created) as i64);
    if running {
        return format!("Up {}", since(r.started));
    }
    match (r.status, r.exit_code) {
        (Status::Created, _) => "Created".into(),
        (Status::Exited, Some(c)) => format!("Exited ({c}) {} ago", since(r.finished)),
        // Marked running, but no runner holds it: the runner was killed.
        _ => "Dead".into(),
    }
}

pub fn run(args: PsArgs, store: &Store) -> i32 {
    let (now, _) = crate::store::format::now();
    let mut rows = vec![vec![
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "NAMES".into(),
    ]];
    for (c, r) in record::list(store) {
        let running = c.is_running();
        if !running && !args.all {
            continue;
        }
        let id = if args.no_trunc {
            r.id.clone()
        } else {
            record::short(&r.id).to_string()
        };
        if args.quiet {
            println!("{id}");
            continue;
        }
        rows.push(vec![
            id,
            r.image_name.clone(),
            command_column(&r.command, args.no_trunc),
            ago(Some(r.created as i64), now),
            status_column(&r, running, now),
            r.name.clone(),
        ]);
    }
    if !args.quiet {
        print!("{}", table(&rows));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: Status, code: Option<i32>) -> Record {
        Record {
            id: "ab".repeat(32),
            name: "n".into(),
            image: "sha256:00".into(),
            image_name: "img".into(),
            command: vec!["sh".into()],
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
            hostname: "h".into(),
            tty: false,
            created: 1000,
            started: Some(1010),
            finished: Some(1020),
            status,
            exit_code: code,
        }
    }

    #[test]
    fn columns() {
        let cmd: Vec<String> = ["sh", "-c", "echo hello; sleep 1000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(command_column(&cmd[..1], false), "\"sh\"");
        assert!(command_column(&cmd, false).chars().count() <= 22);
        assert_eq!(
            command_column(&cmd, true),
            "\"sh -c echo hello; sleep 1000\""
        );
        let now = 1080;
        assert_eq!(
            status_column(&rec(Status::Created, None), false, now),
            "Created"
        );
        assert!(
            status_column(&rec(Status::Exited, Some(3)), false, now).starts_with("Exited (3) ")
        );
        assert!(status_column(&rec(Status::Running, None), true, now).starts_with("Up "));
        assert_eq!(
            status_column(&rec(Status::Running, None), false, now),
            "Dead"
        );
    }
}
