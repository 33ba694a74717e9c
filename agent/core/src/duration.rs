//! Durations as ferry's configuration and command line write them: a whole
//! number and a unit, `500ms`, `30s`, `5m`, `2h`, `7d`, `2w`. One parser,
//! so `ferry.toml` and `--since` accept the same things.

use std::time::Duration;

/// The units, with their length in milliseconds.
pub const UNITS: [(&str, u64); 6] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Parses `<digits><unit>` (surrounding spaces allowed); `None` for
/// anything else, or a duration that does not fit in `u64` milliseconds.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    if n.is_empty() {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    let scale = UNITS.iter().find(|(u, _)| *u == unit)?.1;
    Some(Duration::from_millis(n.checked_mul(scale)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_and_the_bad_forms() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse(" 30s "), Some(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("2w"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            "5M",
            "-5s",
            "5y",
            "1.5h",
            "99999999999999999999s",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("18446744073709551615d"), None);
    }
}
