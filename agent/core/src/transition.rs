//! The transition state machine and the recovery decision.
//!
//! ```text
//! fetching → verified → planned → staging → staged → activating → switched → confirmed
//!     │          │          │         │        │          │            │
//!     │          │          │         │        │          └─────┬──────┘
//!     │          │          │         │        │                ▼
//!     │          │          │         │        │          rolling-back → rolled-back
//!     │          │          │         │        │                │ (an undo failed)
//!     └──────────┴──────────┴─────────┴────────┴→ failed ◄──────┘
//!
//! gc:  planned → activating → confirmed
//! ```
//! A transition is persisted from `planned` on (a poll that plans nothing is
//! not a transition). Every move is written to the state database before the
//! side effect it announces, so `recover()` can tell from the phase alone
//! whether to finish the transition or to undo it (`RecoveryAction`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Fetching,
    Verified,
    Planned,
    Staging,
    Staged,
    Activating,
    Switched,
    Confirmed,
    RollingBack,
    RolledBack,
    Failed,
}

/// What started a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransitionKind {
    /// Reconcile to a revision from a source.
    Apply,
    /// Switch back to an existing generation.
    Rollback,
    /// Collect generations and blobs.
    Gc,
    /// Put back what drifted on the device, within the current generation
    /// (no new generation, no switch).
    Restore,
}

/// A move the state machine does not allow (a bug, or a corrupt database).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} transition from {from} to {to} is not allowed")]
pub struct IllegalTransition {
    pub kind: TransitionKind,
    pub from: Phase,
    pub to: Phase,
}

/// What `recover()` must do with a transition found in a given phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Finished already.
    Nothing,
    /// No side effect outside the store happened yet: drop it (leftover
    /// blobs and unused generation directories are garbage for GC).
    MarkFailed,
    /// Activations may have happened: undo them in reverse order.
    Undo,
    /// The switch happened: finish it.
    Confirm,
    /// Garbage collection was decided: finish deleting what it recorded.
    FinishGc,
}

impl Phase {
    pub const ALL: &'static [Phase] = &[
        Phase::Fetching,
        Phase::Verified,
        Phase::Planned,
        Phase::Staging,
        Phase::Staged,
        Phase::Activating,
        Phase::Switched,
        Phase::Confirmed,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fetching => "fetching",
            Phase::Verified => "verified",
            Phase::Planned => "planned",
            Phase::Staging => "staging",
            Phase::Staged => "staged",
            Phase::Activating => "activating",
            Phase::Switched => "switched",
            Phase::Confirmed => "confirmed",
            Phase::RollingBack => "rolling-back",
            Phase::RolledBack => "rolled-back",
            Phase::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Confirmed | Phase::RolledBack | Phase::Failed)
    }

    /// Whether a transition of `kind` may move from `self` to `to`.
    ///
    /// Garbage collection has no staging and no switch: `planned` records
    /// what will be deleted, `activating` that deletion has begun.
    pub fn allows(self, kind: TransitionKind, to: Phase) -> bool {
        use Phase::*;
        if kind == TransitionKind::Gc {
            return matches!((self, to), (Planned, Activating) | (Activating, Confirmed));
        }
        matches!(
            (self, to),
            (Fetching, Verified)
                | (Verified, Planned)
                | (Planned, Staging)
                | (Staging, Staged)
                | (Staged, Activating)
                | (Activating, Switched)
                | (Switched, Confirmed)
                | (Activating | Switched, RollingBack)
                | (RollingBack, RolledBack)
                | (
                    Fetching | Verified | Planned | Staging | Staged | RollingBack,
                    Failed
                )
        )
    }

    pub fn advance(self, kind: TransitionKind, to: Phase) -> Result<Phase, IllegalTransition> {
        if self.allows(kind, to) {
            Ok(to)
        } else {
            Err(IllegalTransition {
                kind,
                from: self,
                to,
            })
        }
    }

    /// The recovery decision for an interrupted transition of `kind`.
    pub fn recovery(self, kind: TransitionKind) -> RecoveryAction {
        use Phase::*;
        if self.is_terminal() {
            return RecoveryAction::Nothing;
        }
        match (kind, self) {
            // gc: `planned` records the decision, `activating` the deletion.
            (TransitionKind::Gc, _) => RecoveryAction::FinishGc,
            (_, Fetching | Verified | Planned | Staging | Staged) => RecoveryAction::MarkFailed,
            (_, Activating | RollingBack) => RecoveryAction::Undo,
            (_, Switched) => RecoveryAction::Confirm,
            (_, Confirmed | RolledBack | Failed) => RecoveryAction::Nothing,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transition phase {0:?}")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_owned()))
    }
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Apply => "apply",
            TransitionKind::Rollback => "rollback",
            TransitionKind::Gc => "gc",
            TransitionKind::Restore => "restore",
        }
    }
}

impl fmt::Display for TransitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TransitionKind {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "apply" => Ok(TransitionKind::Apply),
            "rollback" => Ok(TransitionKind::Rollback),
            "gc" => Ok(TransitionKind::Gc),
            "restore" => Ok(TransitionKind::Restore),
            _ => Err(UnknownPhase(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_is_allowed_in_order() {
        let path = [
            Phase::Fetching,
            Phase::Verified,
            Phase::Planned,
            Phase::Staging,
            Phase::Staged,
            Phase::Activating,
            Phase::Switched,
            Phase::Confirmed,
        ];
        let mut p = path[0];
        for next in &path[1..] {
            p = p.advance(TransitionKind::Apply, *next).unwrap();
        }
        assert_eq!(p, Phase::Confirmed);
    }

    #[test]
    fn terminal_phases_go_nowhere_and_skips_are_refused() {
        let apply = TransitionKind::Apply;
        for kind in [
            apply,
            TransitionKind::Rollback,
            TransitionKind::Gc,
            TransitionKind::Restore,
        ] {
            for from in Phase::ALL.iter().filter(|p| p.is_terminal()) {
                for to in Phase::ALL {
                    assert!(!from.allows(kind, *to), "{kind}: {from} -> {to}");
                }
            }
        }
        assert!(Phase::Planned.advance(apply, Phase::Activating).is_err());
        assert!(Phase::Staged.advance(apply, Phase::Switched).is_err());
        // Once activations may have happened, failing without undo is refused.
        assert!(!Phase::Activating.allows(apply, Phase::Failed));
        assert!(!Phase::Switched.allows(apply, Phase::Failed));
        // gc only goes planned -> activating -> confirmed.
        let gc = TransitionKind::Gc;
        assert!(Phase::Planned.allows(gc, Phase::Activating));
        assert!(Phase::Activating.allows(gc, Phase::Confirmed));
        assert!(!Phase::Planned.allows(gc, Phase::Staging));
    }

    #[test]
    fn recovery_matches_side_effects() {
        use RecoveryAction::*;
        let k = TransitionKind::Apply;
        assert_eq!(Phase::Staging.recovery(k), MarkFailed);
        assert_eq!(Phase::Staged.recovery(k), MarkFailed);
        assert_eq!(Phase::Activating.recovery(k), Undo);
        assert_eq!(Phase::RollingBack.recovery(k), Undo);
        assert_eq!(Phase::Switched.recovery(k), Confirm);
        assert_eq!(Phase::Confirmed.recovery(k), Nothing);
        assert_eq!(Phase::Planned.recovery(TransitionKind::Gc), FinishGc);
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), *p);
        }
    }

    /// The moves the diagram above draws, written out. The diagram in
    /// docs/design.md must be the same picture, and `allows` must agree.
    #[test]
    fn the_documented_diagram_is_the_state_machine() {
        fn diagram(text: &str, prefix: &str) -> String {
            let lines: Vec<&str> = text
                .lines()
                .map(|l| match l.strip_prefix(prefix) {
                    Some(rest) if !prefix.is_empty() => rest.strip_prefix(' ').unwrap_or(rest),
                    _ => l,
                })
                .collect();
            let start = lines
                .iter()
                .position(|l| l.starts_with("fetching →"))
                .unwrap();
            let end = start
                + lines[start..]
                    .iter()
                    .position(|l| l.starts_with("gc:"))
                    .unwrap();
            lines[start..=end].join("\n")
        }
        let code = diagram(include_str!("transition.rs"), "//!");
        let docs = diagram(include_str!("../../../docs/design.md"), "");
        assert_eq!(code, docs, "docs/design.md draws another state machine");

        use Phase::*;
        let drawn: &[(Phase, Phase)] = &[
            (Fetching, Verified),
            (Verified, Planned),
            (Planned, Staging),
            (Staging, Staged),
            (Staged, Activating),
            (Activating, Switched),
            (Switched, Confirmed),
            (Activating, RollingBack),
            (Switched, RollingBack),
            (RollingBack, RolledBack),
            (RollingBack, Failed),
            (Fetching, Failed),
            (Verified, Failed),
            (Planned, Failed),
            (Staging, Failed),
            (Staged, Failed),
        ];
        for kind in [TransitionKind::Apply, TransitionKind::Rollback] {
            for from in Phase::ALL {
                for to in Phase::ALL {
                    assert_eq!(
                        from.allows(kind, *to),
                        drawn.contains(&(*from, *to)),
                        "{kind}: {from} -> {to}"
                    );
                }
            }
        }
        let gc = TransitionKind::Gc;
        for from in Phase::ALL {
            for to in Phase::ALL {
                let drawn = matches!((from, to), (Planned, Activating) | (Activating, Confirmed));
                assert_eq!(from.allows(gc, *to), drawn, "gc: {from} -> {to}");
            }
        }
    }
}
