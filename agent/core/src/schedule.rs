//! When the agent polls and when it may act: poll delay with jitter and
//! exponential backoff, cron-like maintenance windows, rollout waves. Pure:
//! callers pass the time and the random draw, so tests run on virtual time.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The delay before the next poll.
///
/// After `failures` consecutive failed polls (0 = the last one worked) the
/// delay is `min(backoff_base · 2^(failures-1), backoff_cap)`, else the poll
/// interval. `jitter · r` is added either way, `r` a uniform draw in
/// `[0, 1)`, so a fleet started together spreads out.
pub fn poll_delay(
    interval: Duration,
    jitter: Duration,
    failures: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    r: f64,
) -> Duration {
    let base = if failures == 0 {
        interval
    } else {
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        backoff_base.saturating_mul(factor).min(backoff_cap)
    };
    base + jitter.mul_f64(r.clamp(0.0, 1.0))
}

/// A point in device-local civil time, as cron sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub minute: u8,
    pub hour: u8,
    /// 1–31
    pub day: u8,
    /// 1–12
    pub month: u8,
    /// 0 = Sunday … 6 = Saturday
    pub weekday: u8,
}

/// A cron expression (`minute hour day-of-month month day-of-week`) read as
/// a window: open during every minute it matches. Fields take `*`, numbers,
/// ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, and three-letter
/// month and day names. As in cron, when both day fields are restricted a
/// day matching either is in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronWindow {
    text: String,
    minute: u64,
    hour: u64,
    day: u64,
    month: u64,
    weekday: u64,
    day_star: bool,
    weekday_star: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {text:?}: {field}: {message}")]
pub struct CronError {
    pub text: String,
    pub field: &'static str,
    pub message: String,
}

const FIELDS: [(&str, u8, u8); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, field: usize) -> Option<u8> {
    if let Ok(n) = s.parse::<u8>() {
        return Some(n);
    }
    let lower = s.to_ascii_lowercase();
    match field {
        3 => MONTHS.iter().position(|m| *m == lower).map(|i| i as u8 + 1),
        4 => DAYS.iter().position(|d| *d == lower).map(|i| i as u8),
        _ => None,
    }
}

fn parse_field(spec: &str, field: usize) -> Result<u64, String> {
    let (_, lo, hi) = FIELDS[field];
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u8>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step {s:?}"))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, field).ok_or_else(|| format!("bad value {a:?}"))?;
            let b = value(b, field).ok_or_else(|| format!("bad value {b:?}"))?;
            (a, b)
        } else {
            let a = value(range, field).ok_or_else(|| format!("bad value {range:?}"))?;
            // `5/15` means from 5 to the end, every 15.
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{a}-{b} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v = match v.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
    }
    Ok(bits)
}

impl FromStr for CronWindow {
    type Err = CronError;
    fn from_str(text: &str) -> Result<Self, CronError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let err = |field: &'static str, message: String| CronError {
            text: text.to_owned(),
            field,
            message,
        };
        if parts.len() != 5 {
            return Err(err(
                "expression",
                format!(
                    "want 5 fields (minute hour day month weekday), got {}",
                    parts.len()
                ),
            ));
        }
        let mut bits = [0u64; 5];
        for (i, p) in parts.iter().enumerate() {
            bits[i] = parse_field(p, i).map_err(|m| err(FIELDS[i].0, m))?;
        }
        // Sunday may be written 7.
        if bits[4] & (1 << 7) != 0 {
            bits[4] |= 1;
        }
        Ok(CronWindow {
            text: text.to_owned(),
            minute: bits[0],
            hour: bits[1],
            day: bits[2],
            month: bits[3],
            weekday: bits[4],
            day_star: parts[2] == "*",
            weekday_star: parts[4] == "*",
        })
    }
}

impl fmt::Display for CronWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl CronWindow {
    pub fn contains(&self, t: &Civil) -> bool {
        let has = |bits: u64, v: u8| v < 64 && bits & (1 << v) != 0;
        let day_ok = has(self.day, t.day);
        let weekday_ok = has(self.weekday, t.weekday);
        let day_match = match (self.day_star, self.weekday_star) {
            (true, true) => true,
            (false, true) => day_ok,
            (true, false) => weekday_ok,
            (false, false) => day_ok || weekday_ok,
        };
        has(self.minute, t.minute)
            && has(self.hour, t.hour)
            && has(self.month, t.month)
            && day_match
    }
}

/// A device's rollout bucket, 0–99: the first two bytes (big-endian) of
/// `sha256("ferry-rollout\0" || machine_id)` modulo 100. A revision released
/// to `p` percent reaches the devices whose bucket is below `p`; raising
/// `p` only adds devices.
pub fn rollout_bucket(machine_id: &str) -> u8 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"ferry-rollout\0");
    h.update(machine_id.trim().as_bytes());
    let d = h.finalize();
    (u16::from_be_bytes([d[0], d[1]]) % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u8, hour: u8, day: u8, month: u8, weekday: u8) -> Civil {
        Civil {
            minute,
            hour,
            day,
            month,
            weekday,
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_adds_at_most_jitter() {
        let s = Duration::from_secs;
        let d = |f, r| poll_delay(s(300), s(60), f, s(10), s(600), r);
        assert_eq!(d(0, 0.0), s(300));
        assert_eq!(d(0, 0.5), s(330));
        assert_eq!(d(1, 0.0), s(10));
        assert_eq!(d(2, 0.0), s(20));
        assert_eq!(d(4, 0.0), s(80));
        assert_eq!(d(7, 0.0), s(600));
        assert_eq!(d(200, 0.0), s(600));
        assert!(d(3, 0.999) < s(40 + 60));
    }

    #[test]
    fn windows_follow_cron_semantics() {
        let w: CronWindow = "* 2-4 * * sun".parse().unwrap();
        assert!(w.contains(&at(0, 2, 6, 12, 0)));
        assert!(w.contains(&at(59, 4, 6, 12, 0)));
        assert!(!w.contains(&at(0, 5, 6, 12, 0)));
        assert!(!w.contains(&at(0, 3, 7, 12, 1)));
        let w: CronWindow = "*/15 * 1 * 1".parse().unwrap();
        // Day 1 or any Monday.
        assert!(w.contains(&at(30, 9, 1, 3, 4)));
        assert!(w.contains(&at(45, 9, 9, 3, 1)));
        assert!(!w.contains(&at(44, 9, 9, 3, 1)));
        assert!(!w.contains(&at(0, 9, 10, 3, 2)));
        let w: CronWindow = "0 0 * jan-mar 7".parse().unwrap();
        assert!(w.contains(&at(0, 0, 5, 2, 0)));
        assert!(!w.contains(&at(0, 0, 5, 4, 0)));
    }

    #[test]
    fn bad_windows_name_the_field() {
        let e = "* 25 * * *".parse::<CronWindow>().unwrap_err();
        assert_eq!(e.field, "hour");
        let e = "* * *".parse::<CronWindow>().unwrap_err();
        assert!(e.to_string().contains("5 fields"), "{e}");
        let e = "*/0 * * * *".parse::<CronWindow>().unwrap_err();
        assert_eq!(e.field, "minute");
        let e = "* * * foo *".parse::<CronWindow>().unwrap_err();
        assert_eq!(e.field, "month");
    }

    #[test]
    fn rollout_buckets_are_stable_and_spread() {
        // Pinned: changing the hash would move devices between waves.
        assert_eq!(
            rollout_bucket("0123456789abcdef0123456789abcdef"),
            rollout_bucket("0123456789abcdef0123456789abcdef\n")
        );
        let expected = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(b"ferry-rollout\0gw-1");
            (u16::from_be_bytes([d[0], d[1]]) % 100) as u8
        };
        assert_eq!(rollout_bucket("gw-1"), expected);
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[rollout_bucket(&format!("machine-{i}")) as usize / 25] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
