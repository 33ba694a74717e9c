//! Audit entries from a process that does not hold the state directory.
//!
//! The engine (the process holding the state lock) is the one writer of
//! `state.db`. The agent's WASM module host audits faults while a reconcile
//! may hold the lock, so it does not open the database: it leaves each
//! entry as one file in `state_dir/audit-spool/` (written atomically, owner
//! only, at most [`MAX_FILES`] waiting), and the engine appends them to the
//! journal in name order: whenever it opens the state directory, after each
//! reconcile, and when the agent asks at once (`ferry audit flush`).
//!
//! A drain appends the entries and records the last name appended in the
//! same transaction, then removes the files: a crash between the two
//! appends nothing twice. A file that is not a spooled entry (too large,
//! not JSON, an event that may not come this way, a symlink) is removed
//! and audited as `audit-spool-rejected` with the reason.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::{AuditEvent, Db, StateError, now_ms};

/// The spool's directory under the state directory.
pub const SPOOL_DIR: &str = "audit-spool";
/// Most entries waiting; a full spool refuses new ones (logged).
pub const MAX_FILES: usize = 1024;
/// Largest spooled entry.
pub const MAX_BYTES: u64 = 64 << 10;
/// The events that may arrive through the spool.
pub const SPOOLED_EVENTS: &[&str] = &["wasm-fault", "wasm-cache-rejected"];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spooled {
    event: String,
    actor: String,
    /// When the entry was spooled (ms since the epoch): kept in the
    /// details as `spooled_ms`; the journal's time is when it was appended.
    time_ms: i64,
    details: Value,
}

/// The writing side: `push` leaves one entry for the engine to append.
#[derive(Debug)]
pub struct AuditSpool {
    state_dir: PathBuf,
    seq: AtomicU64,
}

impl AuditSpool {
    pub fn new(state_dir: &Path) -> AuditSpool {
        AuditSpool {
            state_dir: state_dir.to_path_buf(),
            seq: AtomicU64::new(0),
        }
    }

    /// Leaves `event` for the engine. Refuses events the spool does not
    /// carry, entries over [`MAX_BYTES`] and a full spool.
    pub fn push(&self, event: &str, actor: &str, details: Value) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        if !SPOOLED_EVENTS.contains(&event) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{event:?} is not an event the audit spool carries"),
            ));
        }
        let entry = Spooled {
            event: event.to_owned(),
            actor: actor.to_owned(),
            time_ms: now_ms(),
            details,
        };
        let bytes = serde_json::to_vec(&entry).map_err(Error::other)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{} bytes; an entry is at most {MAX_BYTES}", bytes.len()),
            ));
        }
        let dir = open(&self.state_dir, true)?.ok_or_else(|| Error::from(ErrorKind::NotFound))?;
        if dir.entries()?.len() >= MAX_FILES {
            return Err(Error::other(format!(
                "the audit spool is full ({MAX_FILES} entries wait for the engine)"
            )));
        }
        // Names sort in the order entries were made: time, process, count.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "{nanos:020}-{:010}-{:06}.json",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        dir.write_atomic(
            OsStr::new(&name),
            ferry_fs::FileMode::perm(0o600),
            &mut bytes.as_slice(),
        )?;
        Ok(())
    }
}

/// The spool directory of `state_dir` (created when `create`); `None` when
/// it does not exist.
fn open(state_dir: &Path, create: bool) -> std::io::Result<Option<ferry_fs::Dir>> {
    let base = ferry_fs::Dir::open(state_dir)?;
    base.open_beneath(Path::new(SPOOL_DIR), create.then_some(0o700))
}

/// Appends what waits in `state_dir`'s spool to the journal of `db`
/// (generation: the current one). Returns how many entries were appended
/// (rejected files count as their `audit-spool-rejected` entry).
pub fn drain(db: &mut Db, state_dir: &Path) -> Result<usize, StateError> {
    let io = |e: std::io::Error| StateError::Invalid {
        path: state_dir.join(SPOOL_DIR),
        message: e.to_string(),
    };
    let Some(dir) = open(state_dir, false).map_err(io)? else {
        return Ok(0);
    };
    let mut names: Vec<String> = dir
        .entries()
        .map_err(io)?
        .into_iter()
        .filter(|n| !ferry_fs::is_temp(n))
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    names.sort_unstable();
    names.truncate(MAX_FILES);
    let generation = db.current_generation()?;
    let mut entries: Vec<Spooled> = names
        .iter()
        .map(|name| match read(&dir, name) {
            Ok(mut s) => {
                if let Value::Object(m) = &mut s.details {
                    m.insert("spooled_ms".into(), s.time_ms.into());
                }
                s
            }
            Err(reason) => {
                tracing::warn!(file = %name, %reason, "audit spool: not an entry; removed and audited");
                Spooled {
                    event: "audit-spool-rejected".to_owned(),
                    actor: "ferry".to_owned(),
                    time_ms: now_ms(),
                    details: serde_json::json!({"file": name, "reason": reason}),
                }
            }
        })
        .collect();
    let events: Vec<(&str, AuditEvent<'_>)> = names
        .iter()
        .zip(&mut entries)
        .map(
            |(
                name,
                Spooled {
                    event,
                    actor,
                    details,
                    ..
                },
            )| {
                (
                    name.as_str(),
                    AuditEvent {
                        generation,
                        event,
                        actor,
                        details: std::mem::take(details),
                    },
                )
            },
        )
        .collect();
    let appended = db.append_spooled(&events)?;
    for name in &names {
        if let Err(e) = dir.remove(OsStr::new(name)) {
            tracing::warn!(file = %name, error = %e, "audit spool: removing an appended entry failed; it is skipped next time");
        }
    }
    Ok(appended)
}

/// One spooled entry, bounded while read; a reason when it is not one.
fn read(dir: &ferry_fs::Dir, name: &str) -> Result<Spooled, String> {
    let bytes = dir
        .read_bounded(OsStr::new(name), MAX_BYTES)
        .map_err(|e| e.to_string())?
        .ok_or("vanished")?;
    let s: Spooled = serde_json::from_slice(&bytes).map_err(|e| format!("not an entry: {e}"))?;
    if !SPOOLED_EVENTS.contains(&s.event.as_str()) {
        return Err(format!("{:?} is not an event the spool carries", s.event));
    }
    if !s.details.is_object() {
        return Err("details are not an object".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn setup() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("state.db"), true).unwrap();
        (dir, db)
    }

    fn events(db: &Db) -> Vec<(String, Value)> {
        db.audit_entries()
            .unwrap()
            .into_iter()
            .map(|(e, _)| (e.event, e.details))
            .collect()
    }

    fn spooled(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(SPOOL_DIR))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    #[test]
    fn entries_are_appended_once_in_order() {
        let (dir, mut db) = setup();
        assert_eq!(drain(&mut db, dir.path()).unwrap(), 0, "no spool yet");
        let spool = AuditSpool::new(dir.path());
        for i in 0..3 {
            spool
                .push("wasm-fault", "agent", json!({"module": "m", "faults": i}))
                .unwrap();
        }
        assert_eq!(spooled(dir.path()), 3);
        assert_eq!(drain(&mut db, dir.path()).unwrap(), 3);
        assert_eq!(spooled(dir.path()), 0, "appended entries are removed");
        let got = events(&db);
        assert_eq!(got.len(), 3);
        for (i, (event, details)) in got.iter().enumerate() {
            assert_eq!(event, "wasm-fault");
            assert_eq!(details["faults"], i);
            assert!(details["spooled_ms"].as_i64().unwrap() > 0);
        }
        assert_eq!(drain(&mut db, dir.path()).unwrap(), 0);
        assert_eq!(events(&db).len(), 3);
    }

    #[test]
    fn files_left_behind_by_a_crash_after_the_commit_are_not_appended_again() {
        let (dir, mut db) = setup();
        let spool = AuditSpool::new(dir.path());
        spool
            .push("wasm-cache-rejected", "agent", json!({"module": "m"}))
            .unwrap();
        let d = dir.path().join(SPOOL_DIR);
        let name = std::fs::read_dir(&d).unwrap().next().unwrap().unwrap();
        let (name, bytes) = (name.file_name(), std::fs::read(name.path()).unwrap());
        assert_eq!(drain(&mut db, dir.path()).unwrap(), 1);
        // The removal did not happen: the same file is there again.
        std::fs::write(d.join(&name), bytes).unwrap();
        assert_eq!(drain(&mut db, dir.path()).unwrap(), 0);
        assert_eq!(events(&db).len(), 1);
        assert_eq!(spooled(dir.path()), 0, "and it is removed now");
        // A later entry still goes in.
        spool.push("wasm-fault", "agent", json!({})).unwrap();
        assert_eq!(drain(&mut db, dir.path()).unwrap(), 1);
    }

    #[test]
    fn what_is_not_a_spooled_entry_is_removed_and_audited() {
        let (dir, mut db) = setup();
        let spool = AuditSpool::new(dir.path());
        spool.push("wasm-fault", "agent", json!({})).unwrap();
        let d = dir.path().join(SPOOL_DIR);
        std::fs::write(d.join("1-garbage.json"), "not json").unwrap();
        std::fs::write(
            d.join("2-event.json"),
            r#"{"event":"switched","actor":"agent","time_ms":1,"details":{}}"#,
        )
        .unwrap();
        let big = vec![b' '; MAX_BYTES as usize + 1];
        std::fs::write(d.join("3-big.json"), big).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("4-link.json")).unwrap();
        std::os::unix::fs::symlink(&d, d.join("5-dir.json")).unwrap();
        assert_eq!(drain(&mut db, dir.path()).unwrap(), 6);
        let got = events(&db);
        let reasons: Vec<String> = got
            .iter()
            .filter(|(e, _)| e == "audit-spool-rejected")
            .map(|(_, d)| format!("{}: {}", d["file"], d["reason"]))
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        for want in [
            "1-garbage.json\": \"not an entry",
            "2-event.json\": \"\\\"switched\\\" is not an event",
            "3-big.json is larger than 65536 bytes",
            "4-link.json is a symlink",
            "5-dir.json is a symlink",
        ] {
            assert!(
                reasons.iter().any(|r| r.contains(want)),
                "{want}: {reasons:?}"
            );
        }
        assert_eq!(got[0].0, "wasm-fault", "in name order");
        assert_eq!(spooled(dir.path()), 0);
        assert!(std::path::Path::new("/etc/passwd").exists());
    }

    #[test]
    fn the_spool_refuses_other_events_big_entries_and_a_full_directory() {
        let dir = tempfile::tempdir().unwrap();
        let spool = AuditSpool::new(dir.path());
        assert!(spool.push("switched", "agent", json!({})).is_err());
        let big = "x".repeat(MAX_BYTES as usize);
        assert!(
            spool
                .push("wasm-fault", "agent", json!({"e": big}))
                .is_err()
        );
        for _ in 0..MAX_FILES {
            spool.push("wasm-fault", "agent", json!({})).unwrap();
        }
        let err = spool.push("wasm-fault", "agent", json!({})).unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
    }
}
