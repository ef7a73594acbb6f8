//! The `gramzoom` command. `main.rs` only parses flags, sets up logging and dispatches; the
//! rest is here, so the end-to-end tests can use it too:
//!
//! - `commands`: one module per subcommand (render, weights, bench, serve, worker, and the job
//!   commands submit, status, watch, download, cancel, delete).
//! - `client`: the job API client (submit a style and spec, watch, download atomically).
//! - `local`: `gramzoom render`, through the same coordinator and node a cluster runs, both
//!   in-process.
//! - `movie`: movie files, a movie's flags as TOML keys (`gramzoom render movie.toml`).
//! - `progress`: the progress bar on a terminal, progress log lines elsewhere, and logging.

pub mod beats;
pub mod client;
pub mod commands;
pub mod local;
pub mod movie;
pub mod progress;
pub mod styles;
