//! Fetch: from the configuration to a source, and what a revision must
//! pass besides its source's own verification (the update policy, Sigstore
//! bundles); USB bundles.
//!
//! The configuration ([`crate::config`]) only parses and validates; the
//! functions here turn it into the options each source crate takes, so
//! that no source depends on the configuration and a build without one
//! (a `git` or `tuf` feature left out) still reads every configuration.

use std::path::Path;

use ferry_core::RepoPath;
use ferry_source::{Source, TimeFloor};

use crate::config::{Config, ConfigError, SourceKind, SourceSpec};

pub mod bundle;
#[cfg(feature = "delta")]
pub mod delta;
pub mod policy;
#[cfg(feature = "sigstore")]
pub mod sigstore;

/// Builds the source named by the configuration.
pub fn source(config: &Config) -> Result<Box<dyn Source>, ConfigError> {
    match config.source.spec() {
        Some(SourceSpec::Dir(dir)) => {
            let path = dir.path.clone().ok_or(ConfigError::Invalid {
                key: "source.dir.path",
                message: "required when source.kind = \"dir\"".to_owned(),
            })?;
            let manifest = repo_path("source.dir.manifest", &dir.manifest)?;
            Ok(Box::new(ferry_source::dir::DirSource::new(path, manifest)))
        }
        #[cfg(feature = "tuf")]
        Some(SourceSpec::Tuf(_)) => Ok(Box::new(ferry_tuf::TufSource::new(tuf_options(
            config,
            &config.state_dir,
        )?))),
        #[cfg(feature = "git")]
        Some(SourceSpec::Git(_)) => {
            let mut opts = git_options(config, &config.state_dir)?;
            opts.time_floor = Some(time_floor(config, &config.state_dir)?);
            Ok(Box::new(ferry_git::GitSource::new(opts)))
        }
        // Reached only in a build without one of them.
        #[allow(unreachable_patterns)]
        Some(SourceSpec::Tuf(_) | SourceSpec::Git(_)) => {
            let kind = config.source.kind.map_or("", SourceKind::as_str);
            Err(ConfigError::not_built_in(
                "source.kind",
                &format!("the {kind} source"),
                kind,
            ))
        }
        None => Err(ConfigError::Invalid {
            key: "source.kind",
            message: "no source configured; set [source] kind in ferry.toml".to_owned(),
        }),
    }
}

/// Checks what [`Config::load`] cannot without the source crates (the
/// device's git signers policy parses, …): every error a source would
/// raise at its first fetch, raised at load instead.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    #[cfg(not(feature = "sigstore"))]
    if !config.sigstore.require.is_empty() {
        return Err(ConfigError::not_built_in(
            "sigstore.require",
            "Sigstore verification",
            "sigstore",
        ));
    }
    #[cfg(feature = "sigstore")]
    for (i, rule) in config.sigstore.require.iter().enumerate() {
        if let Some(r) = &rule.identity_regex {
            ferry_sigstore::IdentityMatch::regex(r).map_err(|e| ConfigError::Invalid {
                key: "sigstore.require",
                message: format!("[{i}]: identity_regex: {e}"),
            })?;
        }
    }
    match config.source.kind {
        Some(_) => source(config).map(drop),
        None => Ok(()),
    }
}

/// [`Config::load`] and [`check`].
pub fn load_config(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let config = Config::load(explicit)?;
    check(&config)?;
    Ok(config)
}

/// [`Config::load_with_text`] and [`check`].
pub fn load_config_with_text(explicit: Option<&Path>) -> Result<(Config, String), ConfigError> {
    let (config, text) = Config::load_with_text(explicit)?;
    check(&config)?;
    Ok((config, text))
}

fn repo_path(key: &'static str, v: &str) -> Result<RepoPath, ConfigError> {
    RepoPath::new(v.to_owned()).map_err(|e| ConfigError::Invalid {
        key,
        message: e.to_string(),
    })
}

/// The device's secure time floor: `state_dir/tuf/time-floor`, at least
/// the image's `time_floor`.
pub fn time_floor(config: &Config, state_dir: &Path) -> Result<TimeFloor, ConfigError> {
    let baked = match &config.source.tuf.time_floor {
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| ConfigError::Invalid {
                    key: "time_floor",
                    message: e.to_string(),
                })?
                .as_second(),
        ),
        None => None,
    };
    Ok(TimeFloor::new(
        state_dir.join("tuf").join(ferry_source::floor::FLOOR_FILE),
        baked,
    ))
}

#[cfg(feature = "tuf")]
/// `[source.tuf]` as the TUF source's options, its state in `state_dir/tuf`.
pub fn tuf_options(
    config: &Config,
    state_dir: &Path,
) -> Result<ferry_tuf::TufOptions, ConfigError> {
    let cfg = &config.source.tuf;
    let required = |key: &'static str, v: &Option<String>| {
        v.clone().ok_or_else(|| ConfigError::Invalid {
            key,
            message: "required".to_owned(),
        })
    };
    Ok(ferry_tuf::TufOptions {
        metadata_url: required("source.tuf.metadata_url", &cfg.metadata_url)?,
        targets_url: required("source.tuf.targets_url", &cfg.targets_url)?,
        trusted_root: cfg.root.clone(),
        manifest: repo_path("source.tuf.manifest", &cfg.manifest)?,
        dir: state_dir.join("tuf"),
        floor: time_floor(config, state_dir)?,
        timeouts: ferry_tuf::Timeouts {
            stall: cfg.stall_timeout(),
            metadata: cfg.metadata_timeout(),
            min_rate: cfg.min_rate_bytes_per_sec,
        },
    })
}

#[cfg(feature = "git")]
/// `[source.git]` as the git source's options; its state in
/// `state_dir/git`, without the time floor (see [`source`]).
pub fn git_options(
    config: &Config,
    state_dir: &Path,
) -> Result<ferry_git::GitOptions, ConfigError> {
    let c = &config.source.git;
    let url = c.url.clone().ok_or(ConfigError::Invalid {
        key: "source.git.url",
        message: "required when source.kind = \"git\"".into(),
    })?;
    let trust_dir = c.trust_dir.clone().ok_or(ConfigError::Invalid {
        key: "source.git.trust_dir",
        message: "required when source.kind = \"git\"".into(),
    })?;
    if c.branch.is_empty() || c.branch.contains(['*', ':', ' ', '~', '^']) {
        return Err(ConfigError::Invalid {
            key: "source.git.branch",
            message: format!("{:?} is not a branch name", c.branch),
        });
    }
    let device_policy = match &c.device_policy {
        Some(path) => {
            let text = std::fs::read(path)
                .ok()
                .filter(|t| t.len() <= ferry_git::policy::MAX_POLICY_BYTES)
                .and_then(|t| String::from_utf8(t).ok())
                .ok_or_else(|| ConfigError::Invalid {
                    key: "source.git.device_policy",
                    message: format!(
                        "{}: unreadable, not UTF-8 or larger than {} bytes",
                        path.display(),
                        ferry_git::policy::MAX_POLICY_BYTES
                    ),
                })?;
            Some(
                ferry_git::policy::Policy::parse(&text).map_err(|e| ConfigError::Invalid {
                    key: "source.git.device_policy",
                    message: format!("{}: {e}", path.display()),
                })?,
            )
        }
        None => None,
    };
    let freshness_max_age = match &c.freshness_max_age {
        Some(v) => Some(
            ferry_core::duration::parse(v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| ConfigError::Invalid {
                    key: "source.git.freshness_max_age",
                    message: format!("{v:?} is not a duration above zero (e.g. 7d, 36h)"),
                })?,
        ),
        None => None,
    };
    Ok(ferry_git::GitOptions {
        device_policy,
        freshness: repo_path("source.git.freshness", &c.freshness)?,
        freshness_max_age,
        url,
        branch: c.branch.clone(),
        trust_dir,
        policy: repo_path("source.git.policy", &c.policy)?,
        pin: c.pin.clone(),
        depth: c.depth,
        manifest: repo_path("source.git.manifest", &c.manifest)?,
        max_file_bytes: c.max_file_bytes,
        dir: state_dir.join("git"),
        bundle: None,
        time_floor: None,
    })
}
