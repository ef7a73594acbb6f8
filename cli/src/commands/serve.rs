//! `gramzoom serve`: the coordinator, as the `gramzoom-coordinator` binary runs it.

use anyhow::{Context, Result};

pub fn run(args: coordinator::cli::ServeArgs) -> Result<()> {
    let config = args.config()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        // Tests and scripts that pass port 0 read the real address from this line.
        eprintln!("listening on {}", listener.local_addr()?);
        coordinator::run(listener, config, coordinator::cli::shutdown_signal()).await?;
        Ok(())
    })
}
