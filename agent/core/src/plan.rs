//! `plan(desired, actual)`: the pure diff at the heart of a reconcile.
//!
//! Deterministic (steps in activation order: kind, then name), idempotent
//! (planning an applied state yields an empty plan) and free of I/O.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::digest::ContentRef;
use crate::drift::{Drift, Drifted};
use crate::resource::{ActualState, DesiredState, Resource, ResourceId, ResourceSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Change,
    Remove,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Change => "change",
            Op::Remove => "remove",
        }
    }
}

/// Why a step is in the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Not present now.
    New,
    /// Present now, absent from the desired state.
    NoLongerDesired,
    ContentChanged {
        from: ContentRef,
        to: ContentRef,
    },
    SettingChanged {
        key: String,
    },
    /// Changed on the device since the generation installed it.
    Drifted {
        drift: crate::drift::Drift,
    },
}

impl Reason {
    /// The reason for humans; content digests are left out for secrets.
    pub fn describe(&self, secret: bool) -> String {
        match self {
            Reason::ContentChanged { .. } if secret => "content changed (secret)".to_owned(),
            Reason::Drifted { drift } => drift.describe(secret),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::New => f.write_str("new"),
            Reason::NoLongerDesired => f.write_str("no longer desired"),
            Reason::ContentChanged { from, to } => write!(
                f,
                "content {}… → {}…",
                &from.sha256.to_hex()[..12],
                &to.sha256.to_hex()[..12]
            ),
            Reason::SettingChanged { key } => write!(f, "{key} changed"),
            Reason::Drifted { drift } => write!(f, "{drift}"),
        }
    }
}

/// One step: what happens to one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub op: Op,
    pub id: ResourceId,
    /// The resource as it is now (change, remove).
    pub from: Option<Resource>,
    /// The resource as it will be (add, change).
    pub to: Option<Resource>,
    pub reasons: Vec<Reason>,
}

impl Step {
    /// Whether either side of the step is secret.
    pub fn is_secret(&self) -> bool {
        self.from.as_ref().is_some_and(|r| r.secret) || self.to.as_ref().is_some_and(|r| r.secret)
    }

    /// What the step does, as the plan and the audit journal name it:
    /// `add`, `change`, `remove`, or `release` for a firmware resource a
    /// generation no longer names (the booted firmware stays: a generation
    /// that does not manage firmware leaves it as it runs).
    pub fn verb(&self) -> &'static str {
        match (self.id.kind, self.op) {
            (crate::Kind::Firmware, Op::Remove) => "release",
            (_, op) => op.as_str(),
        }
    }

    /// The reasons for humans, redacted if the step is secret.
    pub fn describe_reasons(&self) -> Vec<String> {
        let secret = self.is_secret();
        self.reasons.iter().map(|r| r.describe(secret)).collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Counts of (add, change, remove).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.steps
            .iter()
            .fold((0, 0, 0), |(a, c, r), s| match s.op {
                Op::Add => (a + 1, c, r),
                Op::Change => (a, c + 1, r),
                Op::Remove => (a, c, r + 1),
            })
    }

    /// The state that results from carrying out this plan on `actual`.
    pub fn apply_to(&self, actual: &ResourceSet) -> ResourceSet {
        let mut out = actual.clone();
        for step in &self.steps {
            match &step.to {
                Some(r) => out.upsert(r.clone()),
                None => {
                    out.remove(&step.id);
                }
            }
        }
        out
    }
}

/// Diffs `desired` against `actual`.
pub fn plan(desired: &DesiredState, actual: &ActualState) -> Plan {
    let mut steps = Vec::new();
    let mut d = desired.map().iter().peekable();
    let mut a = actual.map().iter().peekable();
    // A merge of two sorted maps: one pass, output already in activation order.
    loop {
        let order = match (d.peek(), a.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((dk, _)), Some((ak, _))) => dk.cmp(ak),
        };
        match order {
            Ordering::Less => {
                let (id, want) = d.next().expect("peeked");
                steps.push(Step {
                    op: Op::Add,
                    id: id.clone(),
                    from: None,
                    to: Some(want.clone()),
                    reasons: vec![Reason::New],
                });
            }
            Ordering::Greater => {
                let (id, have) = a.next().expect("peeked");
                steps.push(Step {
                    op: Op::Remove,
                    id: id.clone(),
                    from: Some(have.clone()),
                    to: None,
                    reasons: vec![Reason::NoLongerDesired],
                });
            }
            Ordering::Equal => {
                let (id, want) = d.next().expect("peeked");
                let (_, have) = a.next().expect("peeked");
                let reasons = differences(have, want);
                if !reasons.is_empty() {
                    steps.push(Step {
                        op: Op::Change,
                        id: id.clone(),
                        from: Some(have.clone()),
                        to: Some(want.clone()),
                        reasons,
                    });
                }
            }
        }
    }
    Plan { steps }
}

fn differences(have: &Resource, want: &Resource) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if have.content != want.content {
        reasons.push(Reason::ContentChanged {
            from: have.content,
            to: want.content,
        });
    }
    // Both maps are sorted: the union of keys in order.
    let mut keys: Vec<&String> = have.settings.keys().chain(want.settings.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if have.settings.get(key) != want.settings.get(key) {
            reasons.push(Reason::SettingChanged { key: key.clone() });
        }
    }
    reasons
}

/// [`plan()`] of `desired` against `actual`, with the drift found on
/// the device: a resource the desired state keeps as it is but that
/// drifted is changed back (a step whose reasons are the drift); one the
/// desired state changes anyway carries the drift beside the other
/// reasons. Only drift whose policy is `restore` is given here; what is
/// only reported stays out of the plan.
pub fn plan_with_drift(desired: &DesiredState, actual: &ActualState, drifted: &Drifted) -> Plan {
    let mut p = plan(desired, actual);
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
    use crate::resource::Kind;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn file(name: &str, body: &[u8], mode: &str) -> Resource {
        Resource {
            kind: Kind::File,
            name: name.to_owned(),
            content: ContentRef::of(body),
            settings: BTreeMap::from([("mode".to_owned(), serde_json::json!(mode))]),
            secret: false,
        }
    }

    #[test]
    fn secret_reasons_hide_digests() {
        let a = file("/s", b"one", "0600");
        let mut b = file("/s", b"two", "0600");
        b.secret = true;
        let p = plan(
            &ResourceSet::from_resources([b]).unwrap(),
            &ResourceSet::from_resources([a]).unwrap(),
        );
        assert_eq!(
            p.steps[0].describe_reasons(),
            vec!["content changed (secret)"]
        );
        assert!(p.steps[0].is_secret());
    }

    #[test]
    fn add_change_remove_with_reasons() {
        let actual = ResourceSet::from_resources([
            file("/etc/a", b"a", "0644"),
            file("/etc/b", b"b", "0644"),
            file("/etc/c", b"c", "0644"),
        ])
        .unwrap();
        let desired = ResourceSet::from_resources([
            file("/etc/a", b"a", "0644"),
            file("/etc/b", b"b2", "0600"),
            file("/etc/d", b"d", "0644"),
        ])
        .unwrap();
        let p = plan(&desired, &actual);
        let summary: Vec<_> = p
            .steps
            .iter()
            .map(|s| (s.op, s.id.name.as_str(), s.reasons.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Op::Change, "/etc/b", 2),
                (Op::Remove, "/etc/c", 1),
                (Op::Add, "/etc/d", 1)
            ]
        );
        assert!(matches!(
            p.steps[0].reasons[0],
            Reason::ContentChanged { .. }
        ));
        assert_eq!(
            p.steps[0].reasons[1],
            Reason::SettingChanged { key: "mode".into() }
        );
        assert_eq!(p.counts(), (1, 1, 1));
        assert_eq!(p.apply_to(&actual), desired);
    }

    #[test]
    fn duplicate_identity_is_refused() {
        let err = ResourceSet::from_resources([file("/x", b"1", "0644"), file("/x", b"2", "0644")])
            .unwrap_err();
        assert_eq!(err.to_string(), "duplicate resource file /x");
    }

    fn arb_set() -> impl Strategy<Value = ResourceSet> {
        prop::collection::btree_map("[a-e]{1,2}", (any::<u8>(), "0[67][04]{2}"), 0..12).prop_map(
            |m| {
                ResourceSet::from_resources(
                    m.into_iter()
                        .map(|(name, (body, mode))| file(&format!("/{name}"), &[body % 4], &mode)),
                )
                .unwrap()
            },
        )
    }

    proptest! {
        #[test]
        fn plan_of_applied_state_is_empty(desired in arb_set(), actual in arb_set()) {
            let p = plan(&desired, &actual);
            let applied = p.apply_to(&actual);
            prop_assert_eq!(&applied, &desired);
            prop_assert!(plan(&desired, &applied).is_empty());
            prop_assert!(plan(&desired, &desired).is_empty());
        }

        #[test]
        fn order_is_stable_and_sorted(desired in arb_set(), actual in arb_set()) {
            let p1 = plan(&desired, &actual);
            // Rebuilding the sets from reversed input yields the same plan.
            let rev = |s: &ResourceSet| {
                let mut v: Vec<Resource> = s.iter().cloned().collect();
                v.reverse();
                ResourceSet::from_resources(v).unwrap()
            };
            let p2 = plan(&rev(&desired), &rev(&actual));
            prop_assert_eq!(&p1, &p2);
            let ids: Vec<_> = p1.steps.iter().map(|s| s.id.clone()).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            prop_assert_eq!(ids, sorted);
        }
    }

    #[test]
    fn drift_of_an_unchanged_resource_is_a_restoring_change() {
        let set = ResourceSet::from_resources([file("/a", b"a", "0644"), file("/b", b"b", "0644")])
            .unwrap();
        let mut drifted = Drifted::new();
        drifted.insert(
            file("/b", b"", "0644").id(),
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
        assert!(plan(&set, &set).is_empty());
    }

    #[test]
    fn drift_beside_a_change_and_under_a_removal() {
        let actual =
            ResourceSet::from_resources([file("/a", b"a", "0644"), file("/b", b"b", "0644")])
                .unwrap();
        let desired = ResourceSet::from_resources([file("/a", b"a2", "0644")]).unwrap();
        let mut drifted = Drifted::new();
        for n in ["/a", "/b"] {
            drifted.insert(file(n, b"", "0644").id(), vec![Drift::Deleted]);
        }
        let p = plan_with_drift(&desired, &actual, &drifted);
        let ops: Vec<_> = p.steps.iter().map(|s| (s.op, s.reasons.len())).collect();
        // /a changes anyway (and was deleted); /b goes anyway.
        assert_eq!(ops, vec![(Op::Change, 2), (Op::Remove, 1)]);
        assert!(!p.only_restores_drift());
        assert!(!p.steps[0].restores_drift());
    }
}
