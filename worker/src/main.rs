//! `gramzoom`: parses flags, sets up logging, and hands over to the library.

mod cli;

use clap::{Parser, Subcommand};
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
    Render(cli::render::Args),

    /// Manage pretrained VGG weights.
    #[command(subcommand)]
    Weights(cli::weights::Command),
    /// Measure seconds per optimiser iteration and per frame.
    Bench(cli::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(&cli.command, Command::Render(a) if a.quiet);
    let progress = cli::progress::init_logging(quiet);
    let result = match cli.command {
        Command::Render(args) => cli::render::run(args, &progress),
        Command::Weights(cmd) => cli::weights::run(cmd, &progress),
        Command::Bench(args) => cli::bench::run(args),
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
