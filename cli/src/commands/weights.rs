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
            let path = weights::download(&url, &dir, sha256.as_deref(), &mut bytes_bar(bar));
            bar.clear();
            println!("{}", path?.display());
        }
    }
    Ok(())
}

/// A progress callback that draws bytes done, rate and ETA on `bar` from the first byte on.
fn bytes_bar(bar: &Bar) -> impl FnMut(u64, Option<u64>) + '_ {
    let mut pb = None;
    move |done, total| {
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
    }
}

/// What a command without `--weights` renders with, decided before it starts: the cached
/// pretrained file, or on first use torchvision's file fetched now into the cache (with a
/// progress bar, its whole SHA-256 verified), as torchvision and Keras do. `offline`
/// (`--offline`, `GRAMZOOM_OFFLINE=1`) skips the fetch. A fetch that fails (no network, a cut
/// connection, a corrupt file) leaves nothing behind and is a warning that says what happened:
/// the command goes on with the built-in network, which it announces as before. A mirror set
/// up wrongly (`GRAMZOOM_<NETWORK>_URL` without its hash) is an error.
pub fn first_use(network: Network, offline: bool, bar: &Bar) -> Result<Option<PathBuf>> {
    if let Some(path) = weights::cached(network) {
        return Ok(Some(path));
    }
    if offline || !network.pretrainable() {
        return Ok(None);
    }
    let Some(source) = weights::FetchSource::for_network(network)? else {
        return Ok(None);
    };
    tracing::info!(
        url = %source.url,
        dir = %weights::cache_dir().display(),
        "fetching pretrained {} weights on first use (--offline or GRAMZOOM_OFFLINE=1 skips this)",
        network.name()
    );
    let fetched = weights::fetch_on_first_use(network, &source, &mut bytes_bar(bar));
    bar.clear();
    match fetched {
        Ok(path) => Ok(path),
        Err(e) => {
            tracing::warn!("could not fetch pretrained {} weights: {e}", network.name());
            Ok(None)
        }
    }
}
