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

pub trait Activator: std::fmt::Debug + Send + Sync {
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
    pub checks: FileChecks,
    pub dirs: std::collections::HashMap<std::path::PathBuf, Option<crate::fsutil::Dir>>,
}

/// What earlier checks recorded, by key, and what this pass verified.
#[derive(Debug, Default)]
pub struct FileChecks {
    /// Shared by the threads of a full check (`ferry verify`).
    pub known: std::sync::Arc<std::collections::HashMap<String, crate::store::state::FileCheck>>,
    pub record: Vec<(String, crate::store::state::FileCheck)>,
}

impl FileChecks {
    /// The owner ferry found when it first checked what `key` names (an
    /// install keeps the owner of the file it replaces), else the one it
    /// has now (`meta`).
    pub fn owner(&self, key: &str, meta: &crate::fsutil::Meta) -> (u32, u32) {
        self.known
            .get(key)
            .map_or((meta.uid, meta.gid), |k| (k.uid, k.gid))
    }

    /// How the content of the regular file `name` in `dir` (`meta`: its
    /// `lstat`) differs from `expected`. It is read only when its inode,
    /// size, mtime or ctime moved since a check recorded `key` holding
    /// `expected` (always when `full`), and no further than its size when
    /// opened (a file that keeps growing does not keep the check reading);
    /// found as expected, it is remembered with its [`owner`](Self::owner).
    /// `None`: as expected.
    pub fn content(
        &mut self,
        dir: &crate::fsutil::Dir,
        name: &std::ffi::OsStr,
        meta: &crate::fsutil::Meta,
        key: &str,
        expected: ferry_core::ContentRef,
        full: bool,
    ) -> std::io::Result<Option<ferry_core::Drift>> {
        let stat = |m: &crate::fsutil::Meta| (m.dev, m.ino, m.len, m.mtime_ns, m.ctime_ns);
        // One lookup per file: this runs for every managed file.
        let known = self.known.get(key);
        let untouched = !full
            && known.is_some_and(|k| {
                k.sha256 == expected.sha256
                    && (k.dev, k.ino, k.size, k.mtime_ns, k.ctime_ns) == stat(meta)
            });
        if untouched {
            return Ok(None);
        }
        let owner = known.map_or((meta.uid, meta.gid), |k| (k.uid, k.gid));
        let Some((file, meta)) = dir.open_file_after(name, meta)? else {
            return Ok(Some(ferry_core::Drift::Deleted));
        };
        let found =
            crate::store::hash_reader_sized(&mut std::io::Read::take(file, meta.len), meta.len)?;
        if found != expected {
            return Ok(Some(ferry_core::Drift::Content { expected, found }));
        }
        let check = crate::store::state::FileCheck {
            sha256: expected.sha256,
            mode: meta.perm(),
            uid: owner.0,
            gid: owner.1,
            dev: meta.dev,
            ino: meta.ino,
            size: meta.len,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
        };
        if known != Some(&check) {
            self.record.push((key.to_owned(), check));
        }
        Ok(None)
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
