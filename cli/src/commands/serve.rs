//! `gramzoom serve`: the coordinator, as the `gramzoom-coordinator` binary runs it.

use anyhow::{Context, Result};

pub fn run(args: coordinator::cli::ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(coordinator::cli::serve(&args))?;
    Ok(())
}
