//! layerfs: a FUSE union filesystem for container image layers.
//!
//! Layout: [`overlay`] holds the union semantics (no FUSE types), [`fuse`] is
//! the thin adapter to the kernel protocol, [`sys`] is the only place with
//! `unsafe`, and [`cli`] has one file per subcommand.

pub mod cli;
pub mod fuse;
pub mod overlay;
pub mod runner;
pub mod store;
pub mod sys;
