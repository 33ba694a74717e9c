//! The update policy: when a device may apply changes and reboot, and which
//! rollout wave a revision has reached. It is a file of the revision
//! (`ferry/policy.toml` by default), so it is signed like everything else;
//! a revision without one has no restrictions.
//!
//! ```toml
//! [update]
//! windows = ["* 2-4 * * sun"]   # cron-like, device-local time; empty: any time
//! [reboot]
//! allowed = true
//! windows = ["* 3 * * *"]       # default: the update windows
//! [rollout]
//! percent = 25                  # devices whose rollout bucket is below this
//! ```

use ferry_core::RepoPath;
use ferry_core::agent::UpdatePolicy;
use ferry_core::schedule::{Civil, CronWindow};
use ferry_core::{Classify, ErrorClass};
use serde::Deserialize;

use ferry_source::{SourceError, VerifiedRevision};

/// The largest policy file read.
const MAX_POLICY: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("update policy {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("update policy: {0}")]
    Source(#[from] SourceError),
}

impl Classify for PolicyError {
    fn class(&self) -> ErrorClass {
        match self {
            PolicyError::Invalid { .. } => ErrorClass::InvalidInput,
            PolicyError::Source(e) => e.class(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    update: RawWindows,
    #[serde(default)]
    reboot: RawReboot,
    #[serde(default)]
    rollout: RawRollout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindows {
    #[serde(default)]
    windows: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReboot {
    #[serde(default = "yes")]
    allowed: bool,
    #[serde(default)]
    windows: Option<Vec<String>>,
}

impl Default for RawReboot {
    fn default() -> Self {
        RawReboot {
            allowed: true,
            windows: None,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    #[serde(default = "hundred")]
    percent: u8,
}

impl Default for RawRollout {
    fn default() -> Self {
        RawRollout { percent: 100 }
    }
}

fn hundred() -> u8 {
    100
}

/// Parses a policy file's text (`path` names it in errors).
pub fn parse(path: &str, text: &str) -> Result<UpdatePolicy, PolicyError> {
    let invalid = |message: String| PolicyError::Invalid {
        path: path.to_owned(),
        message,
    };
    let raw: Raw = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if raw.rollout.percent > 100 {
        return Err(invalid(format!(
            "rollout.percent = {}: at most 100",
            raw.rollout.percent
        )));
    }
    let windows = |key: &str, list: &[String]| -> Result<Vec<CronWindow>, PolicyError> {
        list.iter()
            .map(|w| w.parse().map_err(|e| invalid(format!("{key}: {e}"))))
            .collect()
    };
    let update_windows = windows("update.windows", &raw.update.windows)?;
    let reboot_windows = match &raw.reboot.windows {
        Some(w) => windows("reboot.windows", w)?,
        None => update_windows.clone(),
    };
    Ok(UpdatePolicy {
        update_windows,
        reboot_allowed: raw.reboot.allowed,
        reboot_windows,
        rollout_percent: raw.rollout.percent,
    })
}

/// The policy of `rev` (the default when it has no policy file).
pub fn load(rev: &dyn VerifiedRevision, path: &str) -> Result<UpdatePolicy, PolicyError> {
    let p = RepoPath::new(path.to_owned()).map_err(|e| PolicyError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if !rev.exists(&p)? {
        return Ok(UpdatePolicy::default());
    }
    let bytes = rev.read_small(&p, MAX_POLICY)?;
    let text = String::from_utf8(bytes).map_err(|_| PolicyError::Invalid {
        path: path.to_owned(),
        message: "not UTF-8".into(),
    })?;
    parse(path, &text)
}

/// Device-local civil time now (the system time zone).
pub fn local_now() -> Civil {
    let z = jiff::Zoned::now();
    Civil {
        minute: z.minute() as u8,
        hour: z.hour() as u8,
        day: z.day() as u8,
        month: z.month() as u8,
        weekday: z.weekday().to_sunday_zero_offset() as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::agent::Hold;

    fn at(hour: u8, weekday: u8) -> Civil {
        Civil {
            minute: 0,
            hour,
            day: 10,
            month: 5,
            weekday,
        }
    }

    #[test]
    fn defaults_allow_everything() {
        let p = parse("p.toml", "").unwrap();
        assert_eq!(p.may_apply(None, &at(12, 3)), Ok(()));
        assert!(p.may_reboot(&at(12, 3)));
    }

    #[test]
    fn windows_waves_and_reboots() {
        let p = parse(
            "p.toml",
            "[update]\nwindows = [\"* 2-4 * * sun\"]\n[reboot]\nwindows = [\"* 3 * * *\"]\n[rollout]\npercent = 25\n",
        )
        .unwrap();
        assert_eq!(p.may_apply(Some(10), &at(3, 0)), Ok(()));
        assert_eq!(p.may_apply(Some(10), &at(5, 0)), Err(Hold::Window));
        assert_eq!(
            p.may_apply(Some(25), &at(3, 0)),
            Err(Hold::Wave {
                bucket: 25,
                percent: 25
            })
        );
        // No machine id: never in a partial wave.
        assert!(p.may_apply(None, &at(3, 0)).is_err());
        assert!(p.may_reboot(&at(3, 2)));
        assert!(!p.may_reboot(&at(4, 2)));
        let p = parse("p.toml", "[reboot]\nallowed = false\n").unwrap();
        assert!(!p.may_reboot(&at(3, 2)));
    }

    #[test]
    fn the_example_policy_parses_and_matches_its_schema() {
        let text = include_str!("../../../../policies/update-policy.toml");
        let p = parse("policies/update-policy.toml", text).unwrap();
        assert_eq!(p.rollout_percent, 25);
        assert_eq!(p.update_windows.len(), 2);
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../schemas/update-policy.schema.json"
        ))
        .unwrap();
        let doc: serde_json::Value =
            serde_json::to_value(toml::from_str::<toml::Value>(text).unwrap()).unwrap();
        let v = jsonschema::validator_for(&schema).unwrap();
        assert!(v.is_valid(&doc));
        let bad = serde_json::json!({"rollout": {"percent": 101}});
        assert!(!v.is_valid(&bad));
    }

    #[test]
    fn bad_policies_name_the_key() {
        let e = parse("p.toml", "[update]\nwindows = [\"* 99 * * *\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("update.windows") && e.contains("hour"), "{e}");
        let e = parse("p.toml", "[rollout]\npercent = 101\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rollout.percent"), "{e}");
        let e = parse("p.toml", "[surprise]\n").unwrap_err().to_string();
        assert!(e.contains("surprise"), "{e}");
    }
}
