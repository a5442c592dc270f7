//! The rootless runner: run a command inside a mounted image.
//!
//! - [`spec`]: what to run (command, environment, working directory, user)
//!   from the image config and the flags; pure and table-tested;
//! - [`record`]: container directories and records under the store root;
//! - [`userns`]: entering a user namespace with the caller as root;
//! - [`launch`]: the supervisor (FUSE mount served in-process, signals,
//!   terminal relay, waiting);
//! - [`init`]: pid 1 of the container (mounts, pivot_root, exec, reaping).
//!
//! Not owned here: the union filesystem ([`crate::overlay`], [`crate::fuse`]),
//! the image store ([`crate::store`]) and the command line ([`crate::cli`]).
//!
//! Process tree of `layerfs run`: the runner (user, mount namespaces; serves
//! FUSE on threads) → pid 1 (pid, UTS, IPC and its own mount namespace) →
//! the command. Killing the runner kills pid 1 (PR_SET_PDEATHSIG), which
//! takes every process of the pid namespace, every mount and the FUSE
//! connection with it.

pub mod init;
pub mod launch;
pub mod record;
pub mod spec;
pub mod userns;
