//! End-to-end tests: the real `gramzoom` binary and the engine's public API, on the CPU at small
//! sizes. One test binary (shared helpers, one link step).

mod helpers;

mod auth;
mod bench;
mod blame;
mod blend;
mod blocks;
mod browser;
mod cli_errors;
mod cluster;
mod dashboard;
mod direction;
mod farm;
mod handoff;
mod hostile;
mod metrics;
mod movie;
mod outputs;
mod quality;
mod segments;
mod soundtrack;
mod uploads;
mod weights;
