//! TUF client conformance entry point (`init`, `refresh`, `download`), over
//! the same verification code as the agent's `tuf` source.
//!
//! ```text
//! ferry-tuf-conformance --metadata-dir D init ROOT.json
//! ferry-tuf-conformance --metadata-url U --metadata-dir D refresh
//! ferry-tuf-conformance --metadata-url U --metadata-dir D --target-name T [--target-name T2 …] \
//!     --target-dir TD --target-base-url TU download
//! ```
//! Exit 0 on success, 1 on any failure. Time is the system clock (read
//! through libc, so `faketime` works); there is no time floor here, the
//! conformance cases decide the clock.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ferry_tuf::{Client, ClientConfig, Limits, Timeouts, client, transport};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-tuf-conformance",
    about = "TUF conformance client for ferry"
)]
struct Args {
    #[arg(long)]
    metadata_url: Option<String>,
    #[arg(long)]
    metadata_dir: PathBuf,
    #[arg(long = "target-name")]
    target_names: Vec<String>,
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[arg(long)]
    target_base_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Installs ROOT as the trusted root (no network).
    Init { root: PathBuf },
    /// Updates the top-level metadata.
    Refresh,
    /// Refreshes, then downloads each target in order.
    Download,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-tuf-conformance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(args: &Args) -> Result<Client> {
    let metadata_url = args
        .metadata_url
        .clone()
        .context("--metadata-url is required")?;
    let cfg = ClientConfig {
        metadata_url,
        targets_url: args.target_base_url.clone().unwrap_or_default(),
        metadata_dir: args.metadata_dir.clone(),
        limits: Limits::default(),
        timeouts: Timeouts::default(),
    };
    let mut c = Client::load(cfg, ferry_source::clock_now())?;
    c.refresh()?;
    Ok(c)
}

fn run(args: Args) -> Result<()> {
    match &args.command {
        Command::Init { root } => {
            let bytes =
                std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
            client::init(&args.metadata_dir, &bytes)?;
        }
        Command::Refresh => {
            client(&args)?;
        }
        Command::Download => {
            let dir = args
                .target_dir
                .clone()
                .context("--target-dir is required")?;
            if args.target_base_url.is_none() {
                bail!("--target-base-url is required");
            }
            let mut c = client(&args)?;
            for name in &args.target_names {
                let info = c
                    .target_info(name)?
                    .ok_or_else(|| ferry_tuf::TufError::UnknownTarget { name: name.clone() })?;
                let dest = dir.join(transport::quote_all(name));
                if client::matches_target(&dest, &info.file) {
                    continue;
                }
                let mut reader = c.open_target(&info, 0, false)?;
                let tmp = dir.join(format!(".{}.part", transport::quote_all(name)));
                let mut f = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                if let Err(e) = std::io::copy(&mut reader, &mut f) {
                    drop(f);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e).with_context(|| format!("downloading {name}"));
                }
                std::fs::rename(&tmp, &dest)
                    .with_context(|| format!("storing {}", dest.display()))?;
            }
        }
    }
    Ok(())
}
