//! The secure time floor: the newest clock reading at which a signed source
//! verified, never decreasing, so a device whose clock fell back (to 1970,
//! or by an attacker's hand) cannot be fed metadata or keys that expired
//! since. Shared by every signed source.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The system clock in Unix seconds.
pub fn clock_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The floor's file in the TUF source's directory (`state_dir/tuf`).
pub const FLOOR_FILE: &str = "time-floor";

/// How far the clock must have moved before the stored floor is rewritten.
pub const FLOOR_STEP_SECS: i64 = 3600;

/// The secure time floor, kept in one small file outside the metadata dir.
///
/// It fails closed: a floor file that cannot be read or parsed is an error
/// (`FloorError`), never a floor of 0, since 0 would let a device whose
/// clock fell back accept metadata that expired long ago. Only the operator
/// repairs it (`ferry time-floor repair`, audited), from the image's floor
/// or a time they give.
#[derive(Debug, Clone)]
pub struct TimeFloor {
    path: PathBuf,
    /// From configuration (the image's build time), if any.
    baked: Option<i64>,
}

/// The stored floor is unreadable or corrupt.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "secure time floor {}: {problem}; expiry cannot be judged until the operator repairs it (`ferry time-floor repair`)",
    path.display()
)]
pub struct FloorError {
    pub path: PathBuf,
    pub problem: String,
}

impl ferry_core::Classify for FloorError {
    fn class(&self) -> ferry_core::ErrorClass {
        ferry_core::ErrorClass::Corrupt
    }
}

/// Largest floor file read (a decimal Unix time and a newline).
const MAX_FLOOR_BYTES: u64 = 64;

/// When this binary was built (Unix seconds; 0 when the build could not
/// tell): no clock reading before it is true, so the floor never starts
/// below it.
pub const BUILD_TIME: i64 = parse_epoch(env!("FERRY_BUILD_EPOCH"));

const fn parse_epoch(s: &str) -> i64 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: i64 = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            return 0;
        }
        n = n * 10 + (b[i] - b'0') as i64;
        i += 1;
    }
    n
}

impl TimeFloor {
    /// The floor kept at `path`, never below `baked` (the image's
    /// `time_floor`) nor below [`BUILD_TIME`].
    pub fn new(path: PathBuf, baked: Option<i64>) -> Self {
        let baked = match (baked, BUILD_TIME) {
            (b, 0) => b,
            (Some(b), built) => Some(b.max(built)),
            (None, built) => Some(built),
        };
        TimeFloor { path, baked }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's floor: the later of `time_floor` from configuration and
    /// the binary's build time.
    pub fn baked(&self) -> Option<i64> {
        self.baked
    }

    /// The floor stored on the device: `None` when there is none yet.
    pub fn stored(&self) -> Result<Option<i64>, FloorError> {
        let bad = |problem: String| FloorError {
            path: self.path.clone(),
            problem,
        };
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(format!("unreadable: {e}"))),
        };
        let mut bytes = Vec::new();
        f.take(MAX_FLOOR_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("unreadable: {e}")))?;
        if bytes.len() as u64 > MAX_FLOOR_BYTES {
            return Err(bad(format!("corrupt: longer than {MAX_FLOOR_BYTES} bytes")));
        }
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|t| *t >= 0)
            .map(Some)
            .ok_or_else(|| bad("corrupt: not a Unix time in seconds".to_owned()))
    }

    /// The floor: the stored one, at least the image's.
    pub fn get(&self) -> Result<i64, FloorError> {
        Ok(self.stored()?.unwrap_or(0).max(self.baked.unwrap_or(0)))
    }

    /// `max(clock, floor)`: the reference time for expiry checks.
    pub fn now(&self) -> Result<i64, FloorError> {
        Ok(clock_now().max(self.get()?))
    }

    /// Raises the floor from `current` (what `get` said) to `t`; never
    /// lowers it. The file is rewritten only when the floor moves by at
    /// least `FLOOR_STEP_SECS`, so a poll every few minutes does not cost a
    /// durable write each time; the floor then lags the clock by at most
    /// that step.
    pub fn raise(&self, current: i64, t: i64) -> std::io::Result<()> {
        // The first floor a device verifies is stored, even within a step
        // of the image's: the device then keeps its own.
        let first = matches!(self.stored(), Ok(None));
        if t <= current || (!first && current > 0 && t - current < FLOOR_STEP_SECS) {
            return Ok(());
        }
        self.write(t)
    }

    /// Replaces the stored floor with `t`, whatever was there: the
    /// operator's repair of a corrupt floor.
    pub fn write(&self, t: i64) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        ferry_fs::write_atomic(&self.path, 0o644, &mut t.to_string().as_bytes()).map(drop)
    }
}
