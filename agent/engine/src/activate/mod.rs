//! Activators: one per resource kind, one trait.
//!
//! The engine calls, for each step of a plan and in plan order:
//! `prepare` (save what undo needs; no visible effect) → the engine records
//! the intent with the undo record → `apply` → the engine records completion.
//! On failure, or in `recover()` after a crash, `undo` runs for every recorded
//! step in reverse order. `undo` must be idempotent: it may run for a step
//! whose `apply` never happened, or happened twice.

use ferry_core::{Classify, ErrorClass};
use ferry_core::{Kind, Resource, Sha256, Step};
use serde_json::Value;

use crate::store::Store;

pub mod file;
pub mod firmware;
pub mod health;
pub mod ruleset;
#[cfg(feature = "wasm")]
pub mod wasm;

#[derive(Debug, thiserror::Error)]
#[error("activating {resource}: {message}")]
pub struct ActivateError {
    pub resource: String,
    pub message: String,
}

impl Classify for ActivateError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

impl ActivateError {
    pub fn new(resource: impl ToString, message: impl ToString) -> Self {
        ActivateError {
            resource: resource.to_string(),
            message: message.to_string(),
        }
    }
}

pub trait Activator: std::fmt::Debug {
    fn kind(&self) -> Kind;
    /// Saves what undoing `step` needs (e.g. the present content, into the
    /// store) and returns it as a record the engine persists before `apply`.
    fn prepare(&self, step: &Step, store: &Store) -> Result<Value, ActivateError>;
    /// Carries out `step`. The new content is in the store.
    fn apply(&self, step: &Step, store: &Store) -> Result<(), ActivateError>;
    /// `apply`, also returning details for the step's audit entry (`Null`
    /// for none).
    fn apply_noted(&self, step: &Step, store: &Store) -> Result<Value, ActivateError> {
        self.apply(step, store).map(|()| Value::Null)
    }
    /// Restores what `prepare` saved. Idempotent.
    fn undo(&self, step: &Step, undo: &Value, store: &Store) -> Result<(), ActivateError>;
    /// Blobs an undo record refers to (kept by GC while it may be needed).
    fn undo_blobs(&self, undo: &Value) -> Vec<Sha256>;
    /// Whether `undo`, recorded for an `add`, holds something that was there
    /// before ferry managed the resource, to be restored when the resource
    /// is removed again (instead of deleting it).
    fn is_original(&self, _undo: &Value) -> bool {
        false
    }
    /// Whether activating `resource` needs no blob from the store because
    /// its content is already where the activation takes it from.
    fn holds(&self, _resource: &Resource) -> bool {
        false
    }
    /// What `step` installed, as a drift check would record it (after a
    /// successful `apply`): the next check then needs no read.
    fn installed(&self, _step: &Step) -> Option<(String, crate::store::state::FileCheck)> {
        None
    }
    /// How `resource`, installed by this activator for the current
    /// generation, differs on the device now (nothing: no drift). `pass`
    /// holds what earlier checks found, so an untouched resource is not
    /// read again unless `full` (`ferry verify`), and what this one found.
    fn drift(
        &self,
        _resource: &Resource,
        _pass: &mut DriftPass,
        _full: bool,
    ) -> Result<Vec<ferry_core::Drift>, ActivateError> {
        Ok(Vec::new())
    }
}

/// What the drift checks of one pass share: what earlier checks recorded
/// (read once), what this pass verified (written once, at its end), and the
/// directories below `files.root` it opened (each once, without following
/// a symlink).
#[derive(Debug, Default)]
pub struct DriftPass {
    pub known: std::collections::HashMap<String, crate::store::state::FileCheck>,
    pub record: Vec<(String, crate::store::state::FileCheck)>,
    pub dirs: std::collections::HashMap<std::path::PathBuf, Option<crate::fsutil::Dir>>,
}

impl DriftPass {
    /// Remembers `check` for `key` unless it is what is known already.
    pub fn verified(&mut self, key: &str, check: crate::store::state::FileCheck) {
        if self.known.get(key) != Some(&check) {
            self.record.push((key.to_owned(), check));
        }
    }
}

/// The activators of this build, one per kind.
#[derive(Debug)]
pub struct Activators {
    items: Vec<Box<dyn Activator>>,
}

impl Activators {
    pub fn new(items: Vec<Box<dyn Activator>>) -> Self {
        Activators { items }
    }

    pub fn get(&self, kind: Kind) -> Result<&dyn Activator, ActivateError> {
        self.items
            .iter()
            .find(|a| a.kind() == kind)
            .map(|a| a.as_ref())
            .ok_or_else(|| ActivateError::new(kind, "no activator for this kind in this build"))
    }
}
