//! What every command starts from: the configuration (with the command
//! line's overrides) and the device facts.

use anyhow::{Context, Result};
use ferry_engine::Config;
use ferry_engine::render::facts::Facts;

use crate::cli::Cli;

pub fn load_config(args: &Cli) -> Result<Config> {
    let mut config = ferry_engine::fetch::load_config(args.config.as_deref())?;
    if let Some(dir) = &args.state_dir {
        config.state_dir =
            std::path::absolute(dir).with_context(|| format!("state dir {}", dir.display()))?;
    }
    Ok(config)
}

/// `--facts FILE` as given, else this system's facts plus the configured facts file.
pub fn load_facts(file: Option<&std::path::Path>, config: &Config) -> Result<Facts> {
    Ok(match file {
        Some(path) => Facts::from_file(path)?,
        None => Facts::probe(&config.facts)?,
    })
}
