//! What the running agent's event path (rules engine and module host)
//! loaded: written by `ferry run` after each load into `running.json` in
//! the state directory, so that a reconcile in another process can compare
//! it with the current generation (drift of kind `running`).

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::{Dir, FileMode};

/// The record's file name in the state directory.
pub const FILE: &str = "running.json";

/// Reads stop here: the record is a few hundred bytes.
const MAX_BYTES: u64 = 64 * 1024;

/// Errors are kept this short in the record (they name a rule set or
/// module and what failed, never content).
const MAX_ERROR_CHARS: usize = 500;

/// What the agent's event path runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The agent's process: a record whose process is gone is stale.
    pub pid: u32,
    /// The generation whose rule sets and modules run (`None`: none).
    pub generation: Option<u64>,
    /// The last load that failed, if the last load failed.
    pub failed: Option<FailedLoad>,
}

/// A load of a generation's rule sets and modules that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedLoad {
    pub generation: Option<u64>,
    pub error: String,
}

impl Running {
    /// The record of this process running `generation`, after a load of
    /// `failed` (its generation and error) failed, if one did.
    pub fn now(generation: Option<u64>, failed: Option<(Option<u64>, String)>) -> Running {
        Running {
            pid: std::process::id(),
            generation,
            failed: failed.map(|(generation, error)| FailedLoad {
                generation,
                error: error.chars().take(MAX_ERROR_CHARS).collect(),
            }),
        }
    }

    /// Replaces the record in `state_dir` (atomically: a reader sees the
    /// old or the new one).
    pub fn write(&self, state_dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        Dir::open(state_dir)?
            .write_atomic(
                OsStr::new(FILE),
                FileMode::perm(0o600),
                &mut json.as_slice(),
            )
            .map(drop)
    }

    /// Removes the record (the agent stops running anything).
    pub fn remove(state_dir: &Path) -> io::Result<()> {
        Dir::open(state_dir)?.remove(OsStr::new(FILE)).map(drop)
    }

    /// The record of a running agent in `state_dir`: `None` when there is
    /// none, it cannot be read (bounded, never through a symlink), or its
    /// process is gone.
    pub fn read(state_dir: &Path) -> Option<Running> {
        let (file, _) = Dir::open(state_dir)
            .ok()?
            .open_file(OsStr::new(FILE))
            .ok()??;
        let mut bytes = Vec::new();
        file.take(MAX_BYTES).read_to_end(&mut bytes).ok()?;
        let r: Running = serde_json::from_slice(&bytes).ok()?;
        Path::new("/proc")
            .join(r.pid.to_string())
            .exists()
            .then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_back_and_stale_without_its_process() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Running::read(dir.path()), None);
        let r = Running::now(Some(3), Some((Some(4), "x".repeat(2000))));
        r.write(dir.path()).unwrap();
        let back = Running::read(dir.path()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.failed.unwrap().error.len(), MAX_ERROR_CHARS);
        // A process that is gone (pid_max is below 2^22 on Linux).
        let stale = Running { pid: 1 << 23, ..r };
        stale.write(dir.path()).unwrap();
        assert_eq!(Running::read(dir.path()), None);
        Running::remove(dir.path()).unwrap();
        Running::remove(dir.path()).unwrap();
    }

    #[test]
    fn junk_or_a_symlink_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        assert_eq!(Running::read(dir.path()), None);
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        Running::now(Some(1), None).write(dir.path()).unwrap();
        std::fs::rename(dir.path().join(FILE), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(FILE)).unwrap();
        assert_eq!(Running::read(dir.path()), None);
    }
}
