//! What every command starts from: the configuration (with the command
//! line's overrides) and the device facts.

use anyhow::{Context, Result};
use ferry_engine::Config;
use ferry_engine::config::ConfigError;
use ferry_engine::render::facts::Facts;

use crate::cli::Cli;

pub fn load_config(args: &Cli) -> Result<Config> {
    let (mut config, _) = read_config(args.config.as_deref())?;
    if let Some(dir) = &args.state_dir {
        config.state_dir =
            std::path::absolute(dir).with_context(|| format!("state dir {}", dir.display()))?;
    }
    Ok(config)
}

/// The configuration at `explicit` (or the default places) and its text,
/// checked by the engine and by the components that own a section the
/// engine only keeps (`[fleet]`).
pub fn read_config(explicit: Option<&std::path::Path>) -> Result<(Config, String)> {
    let (config, text) = ferry_engine::fetch::load_config_with_text(explicit)?;
    fleet_settings(&config)?;
    Ok((config, text))
}

/// `[fleet]`, read and checked by ferry-fleet.
#[cfg(feature = "fleet")]
pub fn fleet_settings(
    config: &Config,
) -> Result<ferry_fleet::settings::FleetSettings, ConfigError> {
    ferry_fleet::settings::FleetSettings::from_table(&config.fleet).map_err(|e| {
        ConfigError::Invalid {
            key: e.key,
            message: e.message,
        }
    })
}

/// Without the fleet channel, a `[fleet] broker` is refused at load.
#[cfg(not(feature = "fleet"))]
pub fn fleet_settings(config: &Config) -> Result<(), ConfigError> {
    if config.fleet.contains_key("broker") {
        return Err(ConfigError::not_built_in(
            "fleet.broker",
            "the fleet channel",
            "fleet",
        ));
    }
    Ok(())
}

/// `--facts FILE` as given, else this system's facts plus the configured facts file.
pub fn load_facts(file: Option<&std::path::Path>, config: &Config) -> Result<Facts> {
    Ok(match file {
        Some(path) => Facts::from_file(path)?,
        None => Facts::probe(&config.facts)?,
    })
}
