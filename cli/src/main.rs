//! `gramzoom`: parses flags, sets up logging, and hands over to the library.

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gramzoom", version, about = "Infinite-zoom movies by neural texture synthesis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render a zoom movie (.mp4, .gif) or a still (.png, .jpg) from a style image.
    /// A flag given twice takes its last value, so scripts can append overrides.
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Render(cli::commands::render::Args),

    /// Manage pretrained VGG weights.
    #[command(subcommand)]
    Weights(cli::commands::weights::Command),
    /// Measure seconds per optimiser iteration and per frame.
    Bench(cli::commands::bench::Args),

    /// Run the coordinator: job and worker gRPC APIs, state under --data.
    Serve(coordinator::cli::ServeArgs),
    /// Run a render node that takes segments from a coordinator.
    Worker(cli::commands::worker::Args),
    /// Submit a job to a coordinator; prints its id.
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Submit(cli::commands::jobs::Submit),
    /// Show a movie's schedules second by second and what it will cost on this machine
    /// (`gramzoom plan movie.toml`, or the flags of `render`).
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Plan(cli::commands::plan::Args),
    /// Show all jobs, or one job (with --segments, its segments and attempts).
    Status(cli::commands::jobs::Status),
    /// Follow a job with a progress bar until it ends; exits non-zero unless it succeeded.
    Watch(cli::commands::jobs::Job),
    /// Download a finished job's output.
    Download(cli::commands::jobs::Download),
    /// Cancel a job; its running segment stops within seconds.
    Cancel(cli::commands::jobs::Job),
    /// Delete an ended job: its record, output and stored files.
    Delete(cli::commands::jobs::Job),
    /// Resume a failed job from its last done segment (after fixing what failed it).
    Retry(cli::commands::jobs::Job),
    /// List the farm's workers: what each renders, how it fares, which are quarantined.
    Workers(cli::commands::jobs::Farm),
}

fn main() -> ExitCode {
    // A movie file (`gramzoom render movie.toml`) stands for the flags its keys name.
    let args = match cli::movie::expand(std::env::args_os().collect(), &Cli::command()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    // A local render runs a coordinator and a node in-process: their logs are for clusters (a
    // lost lease, a retried upload); locally a failure reaches the user as the render's error.
    let default_filter = match &cli.command {
        Command::Render(a) if a.quiet => "warn",
        Command::Render(_) => "info,coordinator=error,worker=error",
        _ => "info",
    };
    let progress = cli::progress::init_logging(default_filter);
    let result = match cli.command {
        Command::Render(args) => cli::commands::render::run(args, &progress),
        Command::Weights(cmd) => cli::commands::weights::run(cmd, &progress),
        Command::Bench(args) => cli::commands::bench::run(args, &progress),
        Command::Serve(args) => cli::commands::serve::run(args),
        Command::Worker(args) => cli::commands::worker::run(args, &progress),
        Command::Submit(args) => cli::commands::jobs::submit(args),
        Command::Plan(args) => cli::commands::plan::run(args),
        Command::Status(args) => cli::commands::jobs::status(args),
        Command::Watch(args) => cli::commands::jobs::watch(args, &progress),
        Command::Download(args) => cli::commands::jobs::download(args),
        Command::Cancel(args) => cli::commands::jobs::cancel(args),
        Command::Delete(args) => cli::commands::jobs::delete(args),
        Command::Retry(args) => cli::commands::jobs::retry(args),
        Command::Workers(args) => cli::commands::jobs::workers(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            progress.clear();
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
