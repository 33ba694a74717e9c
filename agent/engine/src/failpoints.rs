//! Names of the failpoints at ferry's risky steps.
//!
//! Compiled in only with the `failpoints` feature. Tests arm them through the
//! `FAILPOINTS` environment variable (the `fail` crate's syntax) to inject
//! errors, and crash the real binary at each of them (see
//! `integration/tests/crash.rs`). `all_failpoints_are_listed` keeps this list
//! equal to the `fail_point!` calls in the source.

/// Whether this build has the failpoints compiled in.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Every failpoint, in the order an apply meets them.
pub const ALL: &[&str] = &[
    STATE_BEFORE_COMMIT,
    PLANNED,
    STORE_WRITE,
    STORE_BEFORE_RENAME,
    GENERATION_BEFORE_RENAME,
    STAGED,
    ACTIVATE_BEFORE_APPLY,
    ACTIVATE_AFTER_APPLY,
    SWITCH_BEFORE_RENAME,
    SWITCH_AFTER_RENAME,
    SWITCHED,
    UNDO_AFTER_STEP,
    GC_PLANNED,
    GC_AFTER_GENERATION,
    GC_AFTER_BLOB,
    FIRMWARE_INVALIDATED,
    FIRMWARE_WRITE,
    FIRMWARE_WRITTEN,
    FIRMWARE_ACTIVATED,
    FIRMWARE_CANCEL_REJECTED,
    DELTA_INVALIDATED,
    DELTA_CHUNK,
    DELTA_WRITTEN,
    DRIFT_PLANNED,
    DRIFT_RESTORED,
];

/// The drift restore's own failpoints, in order (its activations meet the
/// `activate::*` ones between them).
pub const DRIFT: &[&str] = &[DRIFT_PLANNED, DRIFT_RESTORED];

/// The delta install flow's failpoints, in order.
pub const DELTA: &[&str] = &[DELTA_INVALIDATED, DELTA_CHUNK, DELTA_WRITTEN];

/// The firmware install flow's failpoints, in order.
pub const FIRMWARE: &[&str] = &[
    FIRMWARE_INVALIDATED,
    FIRMWARE_WRITE,
    FIRMWARE_WRITTEN,
    FIRMWARE_ACTIVATED,
];

/// A write transaction of the state database is written, not committed
/// (another process reading the state meets the held write lock).
pub const STATE_BEFORE_COMMIT: &str = "state::before-commit";
/// A drift restore is recorded as planned; nothing restored yet.
pub const DRIFT_PLANNED: &str = "drift::planned";
/// Every drifted resource is restored; the restore is not recorded done.
pub const DRIFT_RESTORED: &str = "drift::restored";
/// A transition was recorded as planned; nothing staged yet.
pub const PLANNED: &str = "transition::planned";
/// Inside the streaming write of a blob (injects ENOSPC with `return`).
pub const STORE_WRITE: &str = "store::write";
/// A blob is complete in its temp file, not yet renamed into the store.
pub const STORE_BEFORE_RENAME: &str = "store::before-rename";
/// A generation directory is complete under its temp name.
pub const GENERATION_BEFORE_RENAME: &str = "generation::before-rename";
/// The new generation is recorded; nothing activated.
pub const STAGED: &str = "transition::staged";
/// An activation's intent is recorded, the activator has not run
/// (`return` makes the activation fail).
pub const ACTIVATE_BEFORE_APPLY: &str = "activate::before-apply";
/// The activator ran; its completion is not recorded.
pub const ACTIVATE_AFTER_APPLY: &str = "activate::after-apply";
/// The new `current` link exists under its temp name.
pub const SWITCH_BEFORE_RENAME: &str = "switch::before-rename";
/// `current` points at the new generation; the switch is not recorded.
pub const SWITCH_AFTER_RENAME: &str = "switch::after-rename";
/// The switch is recorded; not yet confirmed.
pub const SWITCHED: &str = "transition::switched";
/// One activation has been undone during a rollback of a failed transition.
pub const UNDO_AFTER_STEP: &str = "undo::after-step";
/// The inactive slot is marked bad in the boot environment; nothing written.
pub const FIRMWARE_INVALIDATED: &str = "firmware::invalidated";
/// Inside the streaming write into the slot (a power cut mid-write).
pub const FIRMWARE_WRITE: &str = "firmware::write";
/// The image is in the slot and verified; the slot is still marked bad.
pub const FIRMWARE_WRITTEN: &str = "firmware::written";
/// The slot is marked active (tried at the next boot); not recorded as done.
pub const FIRMWARE_ACTIVATED: &str = "firmware::activated";
/// `firmware cancel`: the revision is rejected; the transition is not yet
/// undone.
pub const FIRMWARE_CANCEL_REJECTED: &str = "firmware::cancel-rejected";
/// Delta install: the inactive slot is marked bad; nothing written.
pub const DELTA_INVALIDATED: &str = "delta::invalidated";
/// Delta install: after each chunk written into the slot (a power cut mid-write).
pub const DELTA_CHUNK: &str = "delta::chunk";
/// Delta install: the image is in the slot and verified; still marked bad.
pub const DELTA_WRITTEN: &str = "delta::written";
/// gc recorded what it will delete.
pub const GC_PLANNED: &str = "gc::planned";
/// gc deleted one generation.
pub const GC_AFTER_GENERATION: &str = "gc::after-generation";
/// gc deleted one blob.
pub const GC_AFTER_BLOB: &str = "gc::after-blob";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(std::fs::read_to_string(&p).unwrap());
            }
        }
    }

    #[test]
    fn all_failpoints_are_listed() {
        let mut files = Vec::new();
        sources(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path(),
            &mut files,
        );
        let mut used: Vec<String> = Vec::new();
        for text in &files {
            for (i, _) in text.match_indices("fail_point!(fp::") {
                let rest = &text[i + "fail_point!(fp::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                    .unwrap();
                if end > 0 {
                    used.push(rest[..end].to_owned());
                }
            }
        }
        used.sort();
        used.dedup();
        assert_eq!(
            used.len(),
            ALL.len(),
            "fail_point! constants used: {used:?}"
        );
    }
}
