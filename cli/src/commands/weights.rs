//! `gramzoom weights download vgg16|vgg19`.

use crate::progress::Bar;
use anyhow::Result;
use clap::Subcommand;
use engine::vgg::Network;
use engine::weights;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum Command {
    /// Fetch torchvision's official VGG weights into the cache, verifying their hash;
    /// `render` then uses them by itself.
    Download {
        /// vgg16 or vgg19.
        network: String,
        /// Fetch from this URL instead of the official one (a mirror).
        #[arg(long)]
        url: Option<String>,
        /// Expected SHA-256 (or its prefix), when the file name does not carry one.
        #[arg(long)]
        sha256: Option<String>,
        /// Cache directory (default: $GRAMZOOM_CACHE/weights or ~/.cache/gramzoom/weights).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print where downloaded weights are kept.
    Dir,
}

pub fn run(cmd: Command, bar: &Bar) -> Result<()> {
    match cmd {
        Command::Dir => println!("{}", weights::cache_dir().display()),
        Command::Download { network, url, sha256, dir } => {
            let network: Network = network.parse()?;
            let url = match (url, weights::official_url(network)) {
                (Some(url), _) => url,
                (None, Some(official)) => official.to_string(),
                (None, None) => anyhow::bail!("network: {} has no pretrained weights to download", network.name()),
            };
            let dir = dir.unwrap_or_else(weights::cache_dir);
            tracing::info!(%url, dir = %dir.display(), "downloading");
            let mut pb = None;
            let path = weights::download(&url, &dir, sha256.as_deref(), &mut |done, total| {
                let pb = pb.get_or_insert_with(|| {
                    let pb = bar.start(total.unwrap_or(0), "download", false);
                    pb.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix:>8} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                        )
                        .expect("valid template"),
                    );
                    pb
                });
                pb.set_position(done);
            })?;
            bar.clear();
            println!("{}", path.display());
        }
    }
    Ok(())
}
