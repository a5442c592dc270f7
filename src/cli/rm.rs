//! `layerfs rm [-f] CONTAINER...`: deletes containers with their upper
//! layers. Runs in the user namespace of `run` (as an ordinary user) so that
//! files the container created under other ids can be deleted.

use clap::Args;

use crate::runner::record::{self, RecordError};
use crate::runner::userns;
use crate::store::Store;
use crate::sys::ns;

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill a running container first.
    #[arg(short, long)]
    pub force: bool,
    /// Containers by name or ID or ID prefix.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// Kills the runner of a container (its pid is in the lock file) and waits
/// up to 5 s for it to let go.
fn kill_runner(c: &record::Container) -> bool {
    let pid = std::fs::read_to_string(c.dir.join("lock"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| *p > 0) {
        let _ = ns::kill(pid, libc::SIGKILL);
    }
    for _ in 0..500 {
        if !c.is_running() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

pub fn run(args: RmArgs, store: &Store) -> i32 {
    let mut found = Vec::new();
    let mut code = 0;
    for name in &args.containers {
        match record::find(store, name) {
            Ok((c, r)) => {
                if c.is_running() && !(args.force && kill_runner(&c)) {
                    eprintln!("layerfs: {}", RecordError::Running(r.name));
                    code = 1;
                    continue;
                }
                found.push((name, c));
            }
            Err(e) => {
                eprintln!("layerfs: {e}");
                code = 1;
            }
        }
    }
    if found.is_empty() {
        return code;
    }
    if let Err(e) = userns::enter() {
        eprintln!("layerfs: {e}");
        return 1;
    }
    for (name, c) in found {
        match c.remove() {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("layerfs: {e}");
                code = 1;
            }
        }
    }
    code
}
