//! Drift: a managed resource on the device no longer being what the
//! current generation installed (a hand edit, a process rewriting a managed
//! file, a planted symlink). Found by the engine, planned here: a drifted
//! resource becomes a `change` step back to what the generation says,
//! unless its policy only reports or ignores drift.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::ContentRef;
use crate::resource::{Resource, ResourceId};

/// What differs on the device from what ferry installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "drift", rename_all = "snake_case")]
pub enum Drift {
    /// The content is not what was installed.
    Content {
        expected: ContentRef,
        found: ContentRef,
    },
    /// The permission bits changed (octal strings in JSON: `"0644"`).
    Mode {
        #[serde(with = "octal")]
        expected: u32,
        #[serde(with = "octal")]
        found: u32,
    },
    /// The owner or group changed.
    Owner {
        expected: (u32, u32),
        found: (u32, u32),
    },
    /// Something else is there: a symlink, a directory, a FIFO, a device.
    Replaced { found: String },
    /// Nothing is there.
    Deleted,
    /// A directory on its path is something else now (a symlink, a file):
    /// ferry does not follow it.
    Path { found: String },
    /// The boot side of firmware is not what ferry left: another slot
    /// booted, or the boot environment's order or flags were changed.
    Boot { expected: String, found: String },
    /// The running agent's rules engine or module host does not run what
    /// the current generation installed (loading it failed, or it still
    /// runs an older generation's).
    Running { expected: String, found: String },
}

impl Drift {
    /// For humans; content digests are left out for secrets.
    pub fn describe(&self, secret: bool) -> String {
        match self {
            Drift::Content { .. } if secret => "content changed (secret)".to_owned(),
            Drift::Content { expected, found } => format!(
                "content {}… → {}… on the device",
                &expected.sha256.to_hex()[..12],
                &found.sha256.to_hex()[..12]
            ),
            Drift::Mode { expected, found } => {
                format!("mode {expected:04o} → {found:04o} on the device")
            }
            Drift::Owner { expected, found } => format!(
                "owner {}:{} → {}:{} on the device",
                expected.0, expected.1, found.0, found.1
            ),
            Drift::Replaced { found } => format!("replaced by {found}"),
            Drift::Deleted => "deleted".to_owned(),
            Drift::Path { found } => format!("not reachable: {found}"),
            Drift::Boot { expected, found } | Drift::Running { expected, found } => {
                format!("expected {expected}, found {found}")
            }
        }
    }

    /// The audit and fleet view: what was expected and found, never content
    /// digests of a secret (they would tell a guessed value apart).
    pub fn audit(&self, secret: bool) -> serde_json::Value {
        match self {
            Drift::Content { .. } if secret => {
                serde_json::json!({"drift": "content", "secret": true})
            }
            other => serde_json::to_value(other).expect("drift serialises"),
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(false))
    }
}

/// Permission bits as the octal strings manifests use.
mod octal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bits: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{bits:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8).map_err(serde::de::Error::custom)
    }
}

/// What to do about drift of a resource (`drift:` in the manifest, `[agent]
/// drift` the device default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Put back what the generation says, through a recorded transition.
    #[default]
    Restore,
    /// Show and audit it, change nothing (a file an application rewrites).
    Report,
    /// Do not check.
    Ignore,
}

impl DriftPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Restore => "restore",
            DriftPolicy::Report => "report",
            DriftPolicy::Ignore => "ignore",
        }
    }

    /// The resource's own policy (`settings.drift`), else `default`.
    pub fn of(r: &Resource, default: DriftPolicy) -> DriftPolicy {
        match r.settings.get("drift").and_then(|v| v.as_str()) {
            Some("restore") => DriftPolicy::Restore,
            Some("report") => DriftPolicy::Report,
            Some("ignore") => DriftPolicy::Ignore,
            _ => default,
        }
    }
}

impl std::str::FromStr for DriftPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "restore" => Ok(DriftPolicy::Restore),
            "report" => Ok(DriftPolicy::Report),
            "ignore" => Ok(DriftPolicy::Ignore),
            other => Err(format!(
                "unknown drift policy {other:?} (known: restore, report, ignore)"
            )),
        }
    }
}

/// The drift found on the device, by resource of the current generation.
pub type Drifted = BTreeMap<ResourceId, Vec<Drift>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::Kind;

    fn file(name: &str, body: &[u8]) -> Resource {
        Resource {
            kind: Kind::File,
            name: name.to_owned(),
            content: ContentRef::of(body),
            settings: Default::default(),
            secret: false,
        }
    }

    #[test]
    fn secrets_and_policies() {
        let c = Drift::Content {
            expected: ContentRef::of(b"a"),
            found: ContentRef::of(b"b"),
        };
        assert_eq!(c.describe(true), "content changed (secret)");
        assert!(!c.audit(true).to_string().contains("sha256"));
        assert!(
            c.audit(false)
                .to_string()
                .contains(&ContentRef::of(b"b").sha256.to_hex())
        );
        let mut r = file("/a", b"a");
        assert_eq!(
            DriftPolicy::of(&r, DriftPolicy::Report),
            DriftPolicy::Report
        );
        r.settings.insert("drift".into(), "ignore".into());
        assert_eq!(
            DriftPolicy::of(&r, DriftPolicy::Restore),
            DriftPolicy::Ignore
        );
        assert!("sometimes".parse::<DriftPolicy>().is_err());
        let m = Drift::Mode {
            expected: 0o644,
            found: 0o666,
        };
        let v = m.audit(false);
        assert_eq!(
            v,
            serde_json::json!({"drift": "mode", "expected": "0644", "found": "0666"})
        );
        assert_eq!(serde_json::from_value::<Drift>(v).unwrap(), m);
    }
}

/// What the running agent watches for changes between full drift checks
/// (`state_dir/watch.json`, written by a reconcile the agent asked for it):
/// every path a drift check reads, for the current generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchList {
    /// The generation whose resources these are.
    pub generation: u64,
    /// Where nothing is watched above (`files.root`, the store): the
    /// directories between it and each path are watched too.
    pub roots: Vec<std::path::PathBuf>,
    pub paths: Vec<WatchPath>,
}

/// One watched path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchPath {
    pub path: std::path::PathBuf,
    /// Whether a change is put back (policy `restore`): the agent then
    /// reconciles at once rather than at its next poll.
    pub restore: bool,
}
