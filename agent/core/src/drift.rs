//! Drift: a managed resource on the device no longer being what the
//! current generation installed (a hand edit, a process rewriting a managed
//! file, a planted symlink). Found by the engine, planned here: a drifted
//! resource becomes a `change` step back to what the generation says,
//! unless its policy only reports or ignores drift.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::ContentRef;
use crate::plan::{Op, Plan, Reason, Step};
use crate::resource::{ActualState, DesiredState, Resource, ResourceId};

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

/// [`crate::plan()`] of `desired` against `actual`, with the drift found on
/// the device: a resource the desired state keeps as it is but that
/// drifted is changed back (a step whose reasons are the drift); one the
/// desired state changes anyway carries the drift beside the other
/// reasons. Only drift whose policy is `restore` is given here; what is
/// only reported stays out of the plan.
pub fn plan_with_drift(desired: &DesiredState, actual: &ActualState, drifted: &Drifted) -> Plan {
    let mut p = crate::plan::plan(desired, actual);
    if drifted.is_empty() {
        return p;
    }
    for step in &mut p.steps {
        if let Some(d) = drifted.get(&step.id)
            && step.op == Op::Change
        {
            step.reasons
                .extend(d.iter().cloned().map(|d| Reason::Drifted { drift: d }));
        }
    }
    for (id, d) in drifted {
        if p.steps.iter().any(|s| &s.id == id) {
            continue;
        }
        let (Some(want), Some(have)) = (desired.get(id), actual.get(id)) else {
            continue;
        };
        p.steps.push(Step {
            op: Op::Change,
            id: id.clone(),
            from: Some(have.clone()),
            to: Some(want.clone()),
            reasons: d
                .iter()
                .cloned()
                .map(|d| Reason::Drifted { drift: d })
                .collect(),
        });
    }
    p.steps.sort_by(|a, b| a.id.cmp(&b.id));
    p
}

impl Step {
    /// Whether the step only puts back what drifted (the generation keeps
    /// the resource as it is).
    pub fn restores_drift(&self) -> bool {
        !self.reasons.is_empty()
            && self
                .reasons
                .iter()
                .all(|r| matches!(r, Reason::Drifted { .. }))
    }

    /// The drift this step puts back.
    pub fn drift(&self) -> impl Iterator<Item = &Drift> {
        self.reasons.iter().filter_map(|r| match r {
            Reason::Drifted { drift } => Some(drift),
            _ => None,
        })
    }
}

impl Plan {
    /// Whether every step only puts back drift.
    pub fn only_restores_drift(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(Step::restores_drift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Kind, ResourceSet};

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
    fn drift_of_an_unchanged_resource_is_a_restoring_change() {
        let set = ResourceSet::from_resources([file("/a", b"a"), file("/b", b"b")]).unwrap();
        let mut drifted = Drifted::new();
        drifted.insert(
            file("/b", b"").id(),
            vec![Drift::Content {
                expected: ContentRef::of(b"b"),
                found: ContentRef::of(b"x"),
            }],
        );
        let p = plan_with_drift(&set, &set, &drifted);
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].op, Op::Change);
        assert_eq!(p.steps[0].from, p.steps[0].to);
        assert!(p.only_restores_drift());
        assert!(crate::plan::plan(&set, &set).is_empty());
    }

    #[test]
    fn drift_beside_a_change_and_under_a_removal() {
        let actual = ResourceSet::from_resources([file("/a", b"a"), file("/b", b"b")]).unwrap();
        let desired = ResourceSet::from_resources([file("/a", b"a2")]).unwrap();
        let mut drifted = Drifted::new();
        for n in ["/a", "/b"] {
            drifted.insert(file(n, b"").id(), vec![Drift::Deleted]);
        }
        let p = plan_with_drift(&desired, &actual, &drifted);
        let ops: Vec<_> = p.steps.iter().map(|s| (s.op, s.reasons.len())).collect();
        // /a changes anyway (and was deleted); /b goes anyway.
        assert_eq!(ops, vec![(Op::Change, 2), (Op::Remove, 1)]);
        assert!(!p.only_restores_drift());
        assert!(!p.steps[0].restores_drift());
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
