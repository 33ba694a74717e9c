//! The pure core of ferry.
//!
//! Everything here is a function of its inputs: no file system, no network,
//! no clock. Time, when a decision needs it, is a parameter. The rest of ferry
//! (state, store, sources, activators, the binary) is built around these types.
#![forbid(unsafe_code)]

pub mod agent;
pub mod audit;
pub mod canonical;
pub mod control;
pub mod digest;
pub mod drift;
pub mod duration;
pub mod error;
pub mod glob;
pub mod path;
pub mod plan;
pub mod resource;
pub mod schedule;
pub mod text;
pub mod transition;

pub use digest::{ContentRef, DigestParseError, Sha256};
pub use drift::{Drift, DriftPolicy, Drifted};
pub use error::{Classify, ErrorClass};
pub use path::{RepoPath, RepoPathError};
pub use plan::{Op, Plan, Reason, Step, plan, plan_with_drift};
pub use resource::{
    ActualState, DesiredState, DuplicateResource, Kind, Resource, ResourceId, ResourceSet,
    UnknownKind,
};
pub use transition::{IllegalTransition, Phase, RecoveryAction, TransitionKind};
