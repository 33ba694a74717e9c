//! The engine's error type and its class (the binary maps classes to exit codes).

use std::path::PathBuf;

use ferry_core::IllegalTransition;
use ferry_core::audit::ChainError;

use crate::activate::ActivateError;
use crate::config::ConfigError;
use crate::render::manifest::ManifestError;
use crate::store::StoreError;
use crate::store::state::StateError;
use ferry_core::{Classify, ErrorClass};
use ferry_source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Boxed: manifest errors carry several strings and are rare.
    #[error(transparent)]
    Manifest(Box<ManifestError>),
    #[error("{0}")]
    AuditBroken(#[from] ChainError),
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {0} is in use by another ferry process")]
    Locked(PathBuf),
    #[error("{failure}; rolled back to {restored}")]
    RolledBack {
        failure: ActivateError,
        restored: String,
    },
    #[error("{failure}; rolling back also failed: {undo}")]
    UndoFailed {
        failure: String,
        undo: ActivateError,
    },
    #[error(transparent)]
    Firmware(#[from] crate::activate::firmware::FirmwareError),
    #[error("{0}")]
    Refused(String),
    /// A revision's update policy does not parse, or cannot be read.
    #[error(transparent)]
    Policy(#[from] crate::fetch::policy::PolicyError),
    /// Loading what an activator activated (e.g. the current rule sets).
    #[error(transparent)]
    Activate(#[from] ActivateError),
}

impl From<ManifestError> for EngineError {
    fn from(e: ManifestError) -> Self {
        EngineError::Manifest(Box::new(e))
    }
}

impl EngineError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

impl Classify for EngineError {
    fn class(&self) -> ErrorClass {
        match self {
            // A wrapped library error keeps the class its own type gives it.
            EngineError::Config(_) => ErrorClass::Config,
            EngineError::State(e) => e.class(),
            EngineError::Store(e) => e.class(),
            EngineError::Source(e) => e.class(),
            EngineError::Policy(e) => e.class(),
            EngineError::Activate(e) => e.class(),
            EngineError::Firmware(e) => e.class(),
            EngineError::Io { .. } | EngineError::UndoFailed { .. } => ErrorClass::Internal,
            EngineError::IllegalTransition(_) => ErrorClass::Internal,
            EngineError::Manifest(_) => ErrorClass::InvalidInput,
            EngineError::AuditBroken(_) => ErrorClass::Verification,
            EngineError::Locked(_) => ErrorClass::Busy,
            EngineError::RolledBack { .. } => ErrorClass::RolledBack,
            EngineError::Refused(_) => ErrorClass::Refused,
        }
    }
}
