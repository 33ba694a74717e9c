//! What the agent does next.
//!
//! One reconcile is a sequence of actions — fetch, read the update policy,
//! apply, gate on health checks, roll back, remember the rejected revision,
//! reboot, collect garbage — each decided by [`decide`] from what the
//! reconcile has learned so far ([`Reconcile`]) and the clock ([`Clock`]).
//! `decide` does no I/O: the agent performs the action, records what came of
//! it in the `Reconcile`, and asks again, until the answer is
//! [`Action::Done`]. Every rule of the agent (windows, waves, rejected
//! revisions, the health gate, when to gc) is here and tested without a
//! device.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::schedule::{Civil, CronWindow};

/// A revision's update policy (`ferry/policy.toml`): when a device may
/// apply and reboot, and how far the rollout has reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// Empty: any time.
    pub update_windows: Vec<CronWindow>,
    pub reboot_allowed: bool,
    /// Empty: any time.
    pub reboot_windows: Vec<CronWindow>,
    /// Devices whose rollout bucket is below this apply.
    pub rollout_percent: u8,
}

impl Default for UpdatePolicy {
    /// No restrictions (a revision without a policy file).
    fn default() -> Self {
        UpdatePolicy {
            update_windows: Vec::new(),
            reboot_allowed: true,
            reboot_windows: Vec::new(),
            rollout_percent: 100,
        }
    }
}

/// Why the agent does not apply now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Not in the rollout wave yet.
    Wave { bucket: u8, percent: u8 },
    /// Outside every update window.
    Window,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Wave { bucket, percent } => write!(
                f,
                "not in the rollout wave yet (device bucket {bucket}, released to {percent}%)"
            ),
            Hold::Window => f.write_str("outside the update windows"),
        }
    }
}

impl UpdatePolicy {
    /// Whether a device in rollout `bucket` may apply at `now`. A device
    /// without a bucket (no machine id) is never in a partial wave.
    pub fn may_apply(&self, bucket: Option<u8>, now: &Civil) -> Result<(), Hold> {
        if self.rollout_percent < 100 {
            let bucket = bucket.unwrap_or(u8::MAX);
            if bucket >= self.rollout_percent {
                return Err(Hold::Wave {
                    bucket,
                    percent: self.rollout_percent,
                });
            }
        }
        if !self.update_windows.is_empty() && !self.update_windows.iter().any(|w| w.contains(now)) {
            return Err(Hold::Window);
        }
        Ok(())
    }

    /// Whether a firmware reboot may happen at `now`.
    pub fn may_reboot(&self, now: &Civil) -> bool {
        self.reboot_allowed
            && (self.reboot_windows.is_empty()
                || self.reboot_windows.iter().any(|w| w.contains(now)))
    }
}

/// The clock and the device, as a decision sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Device-local civil time.
    pub now: Civil,
    /// The device's rollout bucket (`None`: no machine id).
    pub rollout_bucket: Option<u8>,
}

/// What applying the desired state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    NoChange,
    /// Firmware was written to the other slot; it runs after a reboot.
    RebootRequired,
    /// A new generation is running.
    Switched,
}

/// How the rollback after failed health checks went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolledBack {
    Done,
    /// Nothing to return to (the first generation): it stays, but is not
    /// applied again.
    Refused(String),
}

/// What the one who started a reconcile may override. The agent overrides
/// nothing; an operator (`ferry apply`, `rollback`, `import`) may, and
/// each override is recorded before it takes effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Apply (and reboot) outside the policy's windows and rollout wave
    /// (`--ignore-window`). A policy that forbids reboots still holds.
    pub ignore_window: bool,
    /// Apply a revision that was rejected before (`--force`).
    pub force: bool,
    /// Never reboot (`--no-reboot`): firmware waits for a reboot started
    /// by someone else.
    pub no_reboot: bool,
}

/// A promise of the policy that an operator set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Override {
    /// Applied although the policy held it (window or wave).
    Hold { revision: String, hold: String },
    /// Applied although it was rejected before.
    Rejection { revision: String },
    /// Rebooted outside the reboot windows.
    RebootWindow { slot: Option<String> },
}

impl Override {
    /// The audit event that records it.
    pub fn event(&self) -> &'static str {
        match self {
            Override::Hold { .. } | Override::RebootWindow { .. } => "policy-overridden",
            Override::Rejection { .. } => "rejection-overridden",
        }
    }
}

/// What one reconcile has learned so far. The agent fills it in as it
/// performs the actions [`decide`] asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Collect garbage after a reconcile that leaves the device settled
    /// (`agent.gc`).
    pub gc: bool,
    /// What the one who started it may override.
    pub overrides: Overrides,
    /// Overrides recorded so far.
    pub overridden: Vec<Override>,
    /// Known before anything else: a firmware update waits for its reboot
    /// into this slot.
    pub awaiting_reboot: Option<String>,
    /// The newest revision, fetched and verified.
    pub revision: Option<String>,
    /// Whether that revision was rolled back before (rejected).
    pub rejected: bool,
    /// The revision's update policy, once read.
    pub policy: Option<UpdatePolicy>,
    pub applied: Option<Applied>,
    /// The health gate's verdict: `Ok`, or why the checks failed.
    pub health: Option<Result<(), String>>,
    pub rolled_back: Option<RolledBack>,
    /// The rejection of the revision is recorded.
    pub rejection_recorded: bool,
    /// A rejected revision applied by force passed its health checks (or
    /// already ran) and is no longer rejected.
    pub rejection_cleared: bool,
    /// The reboot was started.
    pub rebooted: bool,
    /// Garbage was collected.
    pub collected: bool,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch and verify the newest revision; set `revision` and `rejected`.
    Fetch,
    /// Read the revision's update policy; set `policy`.
    ReadPolicy,
    /// Apply the revision; set `applied`.
    Apply,
    /// Wait for the health checks; set `health`.
    CheckHealth,
    /// Roll back to the previous generation; set `rolled_back`.
    RollBack,
    /// Remember `revision` as rejected, with why; set `rejection_recorded`.
    Reject { revision: String, reason: String },
    /// Record that an operator overrides a promise of the policy; push it
    /// onto `overridden`.
    RecordOverride(Override),
    /// A rejected revision applied by force is healthy: forget the
    /// rejection; set `rejection_cleared`.
    ClearRejection { revision: String },
    /// Reboot into the slot the firmware update wrote; set `rebooted`.
    Reboot { slot: Option<String> },
    /// Collect generations and blobs nothing keeps; set `collected`.
    CollectGarbage,
    /// The reconcile is over.
    Done(Outcome),
}

/// How a reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NoChange,
    Applied {
        revision: String,
    },
    /// Waiting: for a window, a wave, or a reboot.
    Held {
        reason: String,
    },
    /// The newest revision was rolled back before; waiting for a newer one.
    Skipped {
        reason: String,
    },
    RolledBack {
        reason: String,
    },
}

impl Outcome {
    pub fn result(&self) -> ReconcileResult {
        match self {
            Outcome::NoChange => ReconcileResult::NoChange,
            Outcome::Applied { .. } => ReconcileResult::Applied,
            Outcome::Held { .. } => ReconcileResult::Held,
            Outcome::Skipped { .. } => ReconcileResult::Skipped,
            Outcome::RolledBack { .. } => ReconcileResult::RolledBack,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::NoChange => f.write_str("no changes"),
            Outcome::Applied { revision } => write!(f, "applied revision {revision}"),
            Outcome::Held { reason } | Outcome::Skipped { reason } => f.write_str(reason),
            Outcome::RolledBack { reason } => write!(f, "rolled back: {reason}"),
        }
    }
}

/// Decides the next action of a reconcile.
pub fn decide(r: &Reconcile, clock: &Clock) -> Action {
    let o = r.overrides;
    // A firmware update waiting for its reboot: reboot when the newest
    // revision's policy allows, and change nothing else meanwhile.
    if let Some(slot) = &r.awaiting_reboot {
        if r.revision.is_none() {
            return Action::Fetch;
        }
        let Some(policy) = &r.policy else {
            return Action::ReadPolicy;
        };
        if r.rebooted {
            return Action::Done(Outcome::Held {
                reason: format!("rebooting into firmware slot {slot}"),
            });
        }
        return match reboot(r, policy, clock, Some(slot)) {
            Ok(action) => action,
            Err(why) => Action::Done(Outcome::Held {
                reason: format!(
                    "a firmware update waits for a reboot into firmware slot {slot} ({why})"
                ),
            }),
        };
    }
    let Some(revision) = &r.revision else {
        return Action::Fetch;
    };
    if r.rejected && !o.force {
        return settled(
            r,
            Outcome::Skipped {
                reason: format!("revision {revision} was rolled back; waiting for a newer one"),
            },
        );
    }
    let Some(policy) = &r.policy else {
        return Action::ReadPolicy;
    };
    match r.applied {
        None => {
            if let Err(hold) = policy.may_apply(clock.rollout_bucket, &clock.now) {
                if !o.ignore_window {
                    return settled(
                        r,
                        Outcome::Held {
                            reason: format!("revision {revision}: {hold}"),
                        },
                    );
                }
                let o = Override::Hold {
                    revision: revision.clone(),
                    hold: hold.to_string(),
                };
                if !r.overridden.contains(&o) {
                    return Action::RecordOverride(o);
                }
            }
            if r.rejected {
                let o = Override::Rejection {
                    revision: revision.clone(),
                };
                if !r.overridden.contains(&o) {
                    return Action::RecordOverride(o);
                }
            }
            Action::Apply
        }
        Some(Applied::NoChange) => match cleared(r, revision) {
            Some(clear) => clear,
            None => settled(r, Outcome::NoChange),
        },
        // The new slot is written but not booted: the transition stays
        // open until the reboot, so no gc.
        Some(Applied::RebootRequired) => {
            let applied = Action::Done(Outcome::Applied {
                revision: revision.clone(),
            });
            if r.rebooted {
                return applied;
            }
            reboot(r, policy, clock, None).unwrap_or(applied)
        }
        Some(Applied::Switched) => match &r.health {
            None => Action::CheckHealth,
            Some(Ok(())) => match cleared(r, revision) {
                Some(clear) => clear,
                None => settled(
                    r,
                    Outcome::Applied {
                        revision: revision.clone(),
                    },
                ),
            },
            Some(Err(failure)) => {
                let reason = match &r.rolled_back {
                    None => return Action::RollBack,
                    Some(RolledBack::Done) => failure.clone(),
                    Some(RolledBack::Refused(why)) => {
                        format!("{failure} (not rolled back: {why})")
                    }
                };
                if !r.rejection_recorded {
                    return Action::Reject {
                        revision: revision.clone(),
                        reason: format!("health checks failed: {reason}"),
                    };
                }
                settled(r, Outcome::RolledBack { reason })
            }
        },
    }
}

/// A rejected revision the operator forced is running and healthy: the
/// rejection goes, so that status, the agent and the fleet agree.
fn cleared(r: &Reconcile, revision: &str) -> Option<Action> {
    (r.rejected && !r.rejection_cleared).then(|| Action::ClearRejection {
        revision: revision.to_owned(),
    })
}

/// The reboot into new firmware, if it may happen now (an override of the
/// reboot window recorded first); otherwise why not.
fn reboot(
    r: &Reconcile,
    policy: &UpdatePolicy,
    clock: &Clock,
    slot: Option<&String>,
) -> Result<Action, &'static str> {
    if r.overrides.no_reboot {
        return Err("not rebooting: --no-reboot");
    }
    if !policy.reboot_allowed {
        return Err("the update policy allows no reboots");
    }
    if !policy.may_reboot(&clock.now) {
        if !r.overrides.ignore_window {
            return Err("outside the reboot windows");
        }
        let o = Override::RebootWindow {
            slot: slot.cloned(),
        };
        if !r.overridden.contains(&o) {
            return Ok(Action::RecordOverride(o));
        }
    }
    Ok(Action::Reboot {
        slot: slot.cloned(),
    })
}

/// The device is settled (nothing in flight): gc first when enabled.
fn settled(r: &Reconcile, outcome: Outcome) -> Action {
    if r.gc && !r.collected {
        Action::CollectGarbage
    } else {
        Action::Done(outcome)
    }
}

/// The result of one reconcile, as its report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileResult {
    Applied,
    NoChange,
    Held,
    Skipped,
    RolledBack,
    Failed,
}

impl ReconcileResult {
    pub const ALL: [ReconcileResult; 6] = [
        ReconcileResult::Applied,
        ReconcileResult::NoChange,
        ReconcileResult::Held,
        ReconcileResult::Skipped,
        ReconcileResult::RolledBack,
        ReconcileResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Applied => "applied",
            ReconcileResult::NoChange => "no_change",
            ReconcileResult::Held => "held",
            ReconcileResult::Skipped => "skipped",
            ReconcileResult::RolledBack => "rolled_back",
            ReconcileResult::Failed => "failed",
        }
    }
}

/// What one reconcile reports to the agent: the last line of
/// `ferry run --once --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub result: ReconcileResult,
    /// For people: what happened, or the error.
    pub text: String,
    /// The failure was an activation (rolled back or not undone).
    #[serde(default)]
    pub activation_error: bool,
    pub generation: Option<u64>,
    pub revision: Option<String>,
    /// Bytes this reconcile fetched from the source.
    #[serde(default)]
    pub fetched_bytes: u64,
}

impl Report {
    /// A failed reconcile.
    pub fn failed(text: String) -> Report {
        Report {
            result: ReconcileResult::Failed,
            text,
            activation_error: false,
            generation: None,
            revision: None,
            fetched_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour: u8) -> Clock {
        Clock {
            now: Civil {
                minute: 0,
                hour,
                day: 10,
                month: 5,
                weekday: 0,
            },
            rollout_bucket: Some(10),
        }
    }

    fn windows(list: &[&str]) -> Vec<CronWindow> {
        list.iter().map(|w| w.parse().expect("window")).collect()
    }

    /// Update window 2–4 h, reboot window 3 h, 25% wave.
    fn strict() -> UpdatePolicy {
        UpdatePolicy {
            update_windows: windows(&["* 2-4 * * *"]),
            reboot_allowed: true,
            reboot_windows: windows(&["* 3 * * *"]),
            rollout_percent: 25,
        }
    }

    fn fetched(policy: UpdatePolicy) -> Reconcile {
        Reconcile {
            gc: true,
            revision: Some("r2".into()),
            policy: Some(policy),
            ..Reconcile::default()
        }
    }

    fn done(a: Action) -> Outcome {
        match a {
            Action::Done(o) => o,
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn a_reconcile_starts_by_fetching_then_reads_the_policy() {
        let mut r = Reconcile::default();
        assert_eq!(decide(&r, &at(12)), Action::Fetch);
        r.revision = Some("r1".into());
        assert_eq!(decide(&r, &at(12)), Action::ReadPolicy);
        r.policy = Some(UpdatePolicy::default());
        assert_eq!(decide(&r, &at(12)), Action::Apply);
    }

    #[test]
    fn policy_windows_and_waves_hold_the_apply() {
        // (hour, bucket, expected)
        let cases: [(u8, Option<u8>, Option<&str>); 5] = [
            (3, Some(10), None),
            (5, Some(10), Some("revision r2: outside the update windows")),
            (
                3,
                Some(25),
                Some(
                    "revision r2: not in the rollout wave yet (device bucket 25, released to 25%)",
                ),
            ),
            (
                3,
                None,
                Some(
                    "revision r2: not in the rollout wave yet (device bucket 255, released to 25%)",
                ),
            ),
            (2, Some(0), None),
        ];
        for (hour, bucket, held) in cases {
            let mut r = fetched(strict());
            r.gc = false;
            let clock = Clock {
                rollout_bucket: bucket,
                ..at(hour)
            };
            match held {
                None => assert_eq!(decide(&r, &clock), Action::Apply, "{hour} {bucket:?}"),
                Some(reason) => assert_eq!(
                    done(decide(&r, &clock)),
                    Outcome::Held {
                        reason: reason.into()
                    }
                ),
            }
        }
    }

    #[test]
    fn a_rejected_revision_is_skipped_never_applied() {
        let mut r = fetched(UpdatePolicy::default());
        r.rejected = true;
        r.policy = None;
        // Skipped before its policy is even read; gc first.
        assert_eq!(decide(&r, &at(12)), Action::CollectGarbage);
        r.collected = true;
        assert_eq!(
            done(decide(&r, &at(12))),
            Outcome::Skipped {
                reason: "revision r2 was rolled back; waiting for a newer one".into()
            }
        );
    }

    #[test]
    fn an_operator_forces_a_rejected_revision_and_a_healthy_one_is_no_longer_rejected() {
        let mut r = fetched(UpdatePolicy::default());
        r.rejected = true;
        r.overrides.force = true;
        let o = Override::Rejection {
            revision: "r2".into(),
        };
        assert_eq!(decide(&r, &at(12)), Action::RecordOverride(o.clone()));
        assert_eq!(o.event(), "rejection-overridden");
        r.overridden.push(o);
        assert_eq!(decide(&r, &at(12)), Action::Apply);
        r.applied = Some(Applied::Switched);
        assert_eq!(decide(&r, &at(12)), Action::CheckHealth);
        r.health = Some(Ok(()));
        assert_eq!(
            decide(&r, &at(12)),
            Action::ClearRejection {
                revision: "r2".into()
            }
        );
        r.rejection_cleared = true;
        assert_eq!(decide(&r, &at(12)), Action::CollectGarbage);
        // Failing again: rolled back and rejected again, never cleared.
        let mut r = fetched(UpdatePolicy::default());
        r.rejected = true;
        r.overrides.force = true;
        r.overridden.push(Override::Rejection {
            revision: "r2".into(),
        });
        r.applied = Some(Applied::Switched);
        r.health = Some(Err("probe".into()));
        assert_eq!(decide(&r, &at(12)), Action::RollBack);
        r.rolled_back = Some(RolledBack::Done);
        assert!(matches!(decide(&r, &at(12)), Action::Reject { .. }));
    }

    #[test]
    fn ignore_window_overrides_windows_and_waves_recorded_first() {
        let mut r = fetched(strict());
        r.gc = false;
        r.overrides.ignore_window = true;
        let clock = Clock {
            rollout_bucket: Some(90),
            ..at(12)
        };
        let hold = Override::Hold {
            revision: "r2".into(),
            hold: "not in the rollout wave yet (device bucket 90, released to 25%)".into(),
        };
        assert_eq!(decide(&r, &clock), Action::RecordOverride(hold.clone()));
        assert_eq!(hold.event(), "policy-overridden");
        r.overridden.push(hold);
        assert_eq!(decide(&r, &clock), Action::Apply);
        // Firmware outside the reboot window: the override is recorded, then
        // the reboot; --no-reboot holds it whatever the windows say.
        r.applied = Some(Applied::RebootRequired);
        let reboot = Override::RebootWindow { slot: None };
        assert_eq!(decide(&r, &clock), Action::RecordOverride(reboot.clone()));
        r.overridden.push(reboot);
        assert_eq!(decide(&r, &clock), Action::Reboot { slot: None });
        r.overrides.no_reboot = true;
        assert!(matches!(
            decide(&r, &clock),
            Action::Done(Outcome::Applied { .. })
        ));
        // Inside the windows nothing is overridden, so nothing is recorded.
        let mut r = fetched(strict());
        r.gc = false;
        r.overrides.ignore_window = true;
        assert_eq!(decide(&r, &at(3)), Action::Apply);
    }

    #[test]
    fn a_pending_reboot_says_why_it_waits() {
        let mut r = fetched(UpdatePolicy::default());
        r.awaiting_reboot = Some("B".into());
        r.overrides.no_reboot = true;
        assert_eq!(
            done(decide(&r, &at(3))),
            Outcome::Held {
                reason: "a firmware update waits for a reboot into firmware slot B (not rebooting: --no-reboot)".into()
            }
        );
        r.overrides.no_reboot = false;
        r.policy = Some(UpdatePolicy {
            reboot_allowed: false,
            ..UpdatePolicy::default()
        });
        assert_eq!(
            done(decide(&r, &at(3))),
            Outcome::Held {
                reason:
                    "a firmware update waits for a reboot into firmware slot B (the update policy allows no reboots)"
                        .into()
            }
        );
    }

    #[test]
    fn the_health_gate_rolls_back_rejects_then_collects() {
        let mut r = fetched(UpdatePolicy::default());
        r.applied = Some(Applied::Switched);
        assert_eq!(decide(&r, &at(12)), Action::CheckHealth);
        r.health = Some(Err("unit app.service is failed".into()));
        assert_eq!(decide(&r, &at(12)), Action::RollBack);
        r.rolled_back = Some(RolledBack::Done);
        assert_eq!(
            decide(&r, &at(12)),
            Action::Reject {
                revision: "r2".into(),
                reason: "health checks failed: unit app.service is failed".into()
            }
        );
        r.rejection_recorded = true;
        assert_eq!(decide(&r, &at(12)), Action::CollectGarbage);
        r.collected = true;
        assert_eq!(
            done(decide(&r, &at(12))),
            Outcome::RolledBack {
                reason: "unit app.service is failed".into()
            }
        );
    }

    #[test]
    fn a_first_generation_that_fails_its_checks_stays_but_is_rejected() {
        let mut r = fetched(UpdatePolicy::default());
        r.gc = false;
        r.applied = Some(Applied::Switched);
        r.health = Some(Err("probe failed".into()));
        r.rolled_back = Some(RolledBack::Refused("no earlier generation".into()));
        assert_eq!(
            decide(&r, &at(12)),
            Action::Reject {
                revision: "r2".into(),
                reason:
                    "health checks failed: probe failed (not rolled back: no earlier generation)"
                        .into()
            }
        );
        r.rejection_recorded = true;
        assert_eq!(
            done(decide(&r, &at(12))),
            Outcome::RolledBack {
                reason: "probe failed (not rolled back: no earlier generation)".into()
            }
        );
    }

    #[test]
    fn healthy_and_unchanged_reconciles_collect_garbage_when_enabled() {
        for applied in [Applied::Switched, Applied::NoChange] {
            let mut r = fetched(UpdatePolicy::default());
            r.applied = Some(applied);
            r.health = Some(Ok(()));
            assert_eq!(decide(&r, &at(12)), Action::CollectGarbage);
            r.collected = true;
            assert!(matches!(decide(&r, &at(12)), Action::Done(_)));
            r.gc = false;
            r.collected = false;
            assert!(matches!(decide(&r, &at(12)), Action::Done(_)));
        }
    }

    #[test]
    fn firmware_reboots_only_inside_the_reboot_window() {
        let mut r = fetched(strict());
        r.applied = Some(Applied::RebootRequired);
        // 3 h: inside; 2 h: inside the update window, outside the reboot one.
        assert_eq!(decide(&r, &at(3)), Action::Reboot { slot: None });
        let applied = Outcome::Applied {
            revision: "r2".into(),
        };
        assert_eq!(done(decide(&r, &at(2))), applied);
        r.rebooted = true;
        assert_eq!(done(decide(&r, &at(3))), applied);
        // Reboots not allowed at all.
        let mut r = fetched(UpdatePolicy {
            reboot_allowed: false,
            ..UpdatePolicy::default()
        });
        r.applied = Some(Applied::RebootRequired);
        assert_eq!(done(decide(&r, &at(3))), applied);
    }

    #[test]
    fn a_pending_reboot_waits_for_its_window_and_applies_nothing() {
        let mut r = Reconcile {
            gc: true,
            awaiting_reboot: Some("B".into()),
            ..Reconcile::default()
        };
        assert_eq!(decide(&r, &at(3)), Action::Fetch);
        r.revision = Some("r3".into());
        assert_eq!(decide(&r, &at(3)), Action::ReadPolicy);
        r.policy = Some(strict());
        assert_eq!(
            done(decide(&r, &at(5))),
            Outcome::Held {
                reason: "a firmware update waits for a reboot into firmware slot B (outside the reboot windows)".into()
            }
        );
        assert_eq!(
            decide(&r, &at(3)),
            Action::Reboot {
                slot: Some("B".into())
            }
        );
        r.rebooted = true;
        assert_eq!(
            done(decide(&r, &at(3))),
            Outcome::Held {
                reason: "rebooting into firmware slot B".into()
            }
        );
        // Even a rejected newest revision changes nothing while waiting.
        r.rejected = true;
        r.rebooted = false;
        assert_eq!(
            decide(&r, &at(3)),
            Action::Reboot {
                slot: Some("B".into())
            }
        );
    }

    #[test]
    fn reports_round_trip_and_name_their_result() {
        let r = Report {
            result: ReconcileResult::RolledBack,
            text: "rolled back: x".into(),
            activation_error: false,
            generation: Some(3),
            revision: Some("r2".into()),
            fetched_bytes: 10,
        };
        let line = serde_json::to_string(&r).expect("json");
        assert!(line.contains(r#""result":"rolled_back""#), "{line}");
        assert_eq!(serde_json::from_str::<Report>(&line).expect("parse"), r);
        for result in ReconcileResult::ALL {
            let json = serde_json::to_value(result).expect("json");
            assert_eq!(json, result.as_str());
        }
        assert!(serde_json::from_str::<Report>(r#"{"result":"exploded","text":""}"#).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn civil() -> impl Strategy<Value = Civil> {
        (0u8..60, 0u8..24, 1u8..29, 1u8..13, 0u8..7).prop_map(
            |(minute, hour, day, month, weekday)| Civil {
                minute,
                hour,
                day,
                month,
                weekday,
            },
        )
    }

    fn window() -> impl Strategy<Value = Vec<CronWindow>> {
        prop_oneof![
            Just(vec![]),
            (0u8..24, 0u8..4).prop_map(|(h, len)| {
                let end = (h + len).min(23);
                vec![format!("* {h}-{end} * * *").parse().expect("window")]
            }),
            (0u8..7).prop_map(|d| vec![format!("* * * * {d}").parse().expect("window")]),
        ]
    }

    fn policy() -> impl Strategy<Value = UpdatePolicy> {
        (window(), any::<bool>(), window(), 0u8..=100).prop_map(
            |(update_windows, reboot_allowed, reboot_windows, rollout_percent)| UpdatePolicy {
                update_windows,
                reboot_allowed,
                reboot_windows,
                rollout_percent,
            },
        )
    }

    /// What the world answers to each action.
    #[derive(Debug, Clone)]
    struct World {
        awaiting_reboot: bool,
        rejected: bool,
        policy: UpdatePolicy,
        applied: Applied,
        healthy: bool,
        rollback_refused: bool,
        gc: bool,
        overrides: Overrides,
    }

    fn world() -> impl Strategy<Value = World> {
        (
            any::<bool>(),
            any::<bool>(),
            policy(),
            prop_oneof![
                Just(Applied::NoChange),
                Just(Applied::RebootRequired),
                Just(Applied::Switched)
            ],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            (any::<bool>(), any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |(
                    awaiting_reboot,
                    rejected,
                    policy,
                    applied,
                    healthy,
                    rollback_refused,
                    gc,
                    (ignore_window, force, no_reboot),
                )| {
                    World {
                        awaiting_reboot,
                        rejected,
                        policy,
                        applied,
                        healthy,
                        rollback_refused,
                        gc,
                        overrides: Overrides {
                            ignore_window,
                            force,
                            no_reboot,
                        },
                    }
                },
            )
    }

    proptest! {
        /// Drives whole reconciles: every one ends within a few steps; no
        /// reboot outside a reboot window; a rejected revision is never
        /// applied; nothing is applied while a reboot is pending; nothing
        /// is applied outside the update windows or the wave; an action is
        /// never asked for twice; gc only when the device is settled. An
        /// operator's override lifts exactly the promise it names, and is
        /// recorded before it takes effect.
        #[test]
        fn reconciles_keep_the_agents_promises(
            w in world(),
            now in civil(),
            bucket in proptest::option::of(0u8..100),
        ) {
            let clock = Clock { now, rollout_bucket: bucket };
            let o = w.overrides;
            let mut r = Reconcile {
                gc: w.gc,
                overrides: o,
                awaiting_reboot: w.awaiting_reboot.then(|| "B".to_owned()),
                ..Reconcile::default()
            };
            let held = w.policy.may_apply(bucket, &now).is_err();
            let outside_reboot_window = !w.policy.may_reboot(&now);
            let mut taken: Vec<Action> = Vec::new();
            let outcome = loop {
                prop_assert!(taken.len() < 12, "no end: {taken:?}");
                let action = decide(&r, &clock);
                prop_assert!(!taken.contains(&action), "{action:?} twice: {taken:?}");
                taken.push(action.clone());
                match action {
                    Action::Fetch => {
                        r.revision = Some("r".into());
                        r.rejected = w.rejected;
                    }
                    Action::ReadPolicy => r.policy = Some(w.policy.clone()),
                    Action::Apply => {
                        prop_assert!(!w.rejected || o.force, "applied a rejected revision");
                        prop_assert!(!w.awaiting_reboot, "applied while a reboot is pending");
                        prop_assert!(!held || o.ignore_window, "applied while held");
                        let recorded = |f: fn(&Override) -> bool| r.overridden.iter().any(f);
                        let hold_recorded = recorded(|o| matches!(o, Override::Hold { .. }));
                        let rejection_recorded =
                            recorded(|o| matches!(o, Override::Rejection { .. }));
                        prop_assert!(!held || hold_recorded, "hold overridden unrecorded");
                        prop_assert!(
                            !w.rejected || rejection_recorded,
                            "rejection overridden unrecorded"
                        );
                        r.applied = Some(w.applied);
                    }
                    Action::RecordOverride(ov) => {
                        match &ov {
                            Override::Hold { .. } => prop_assert!(held && o.ignore_window),
                            Override::Rejection { .. } => prop_assert!(w.rejected && o.force),
                            Override::RebootWindow { .. } => {
                                prop_assert!(outside_reboot_window && o.ignore_window);
                            }
                        }
                        r.overridden.push(ov);
                    }
                    Action::ClearRejection { .. } => {
                        prop_assert!(w.rejected && o.force);
                        prop_assert!(
                            r.health == Some(Ok(())) || r.applied == Some(Applied::NoChange),
                            "cleared a rejection before the revision proved healthy"
                        );
                        r.rejection_cleared = true;
                    }
                    Action::CheckHealth => {
                        prop_assert_eq!(r.applied, Some(Applied::Switched));
                        r.health = Some(if w.healthy { Ok(()) } else { Err("bad".into()) });
                    }
                    Action::RollBack => {
                        prop_assert!(matches!(r.health, Some(Err(_))));
                        r.rolled_back = Some(if w.rollback_refused {
                            RolledBack::Refused("first".into())
                        } else {
                            RolledBack::Done
                        });
                    }
                    Action::Reject { .. } => {
                        prop_assert!(r.rolled_back.is_some());
                        r.rejection_recorded = true;
                    }
                    Action::Reboot { .. } => {
                        prop_assert!(!o.no_reboot && w.policy.reboot_allowed);
                        let reboot_recorded = r
                            .overridden
                            .iter()
                            .any(|o| matches!(o, Override::RebootWindow { .. }));
                        prop_assert!(
                            !outside_reboot_window || reboot_recorded,
                            "reboot outside its window"
                        );
                        prop_assert!(
                            w.awaiting_reboot || r.applied == Some(Applied::RebootRequired)
                        );
                        r.rebooted = true;
                    }
                    Action::CollectGarbage => {
                        prop_assert!(w.gc);
                        prop_assert!(!w.awaiting_reboot);
                        prop_assert_ne!(r.applied, Some(Applied::RebootRequired));
                        r.collected = true;
                    }
                    Action::Done(o) => break o,
                }
            };
            if w.rejected && !o.force && !w.awaiting_reboot {
                prop_assert_eq!(outcome.result(), ReconcileResult::Skipped);
            }
            if o == Overrides::default() {
                prop_assert!(r.overridden.is_empty());
            }
            if matches!(outcome, Outcome::RolledBack { .. }) {
                prop_assert!(r.rejection_recorded, "rolled back without rejecting");
            }
        }
    }
}
