//! The topics of the fleet channel, below a prefix (`ferry` by default):
//!
//! | topic | who publishes | what |
//! |---|---|---|
//! | `P/nudge/all`, `P/nudge/group/G`, `P/nudge/site/S`, `P/nudge/device/D` | admins, hooks | anything: "poll now" |
//! | `P/device/D/status` | device D, retained | [`crate::message::DeviceStatus`] |
//! | `P/device/D/online` | device D, retained (last will `0`) | `1` or `0` |
//! | `P/device/D/audit/SEQ` | device D, retained, QoS 1 | [`crate::message::ReportedEntry`] |
//!
//! A broker's ACL lets device D write only `P/device/D/#` and read only its
//! nudge topics (docs/fleet.md).

use crate::FleetError;

/// Longest device, group or site name.
const MAX_NAME: usize = 64;

/// Checks a device id, group, site or prefix level: 1–64 of
/// `A-Z a-z 0-9 . _ -` (no MQTT wildcard or separator can slip into a
/// topic, and a name is the same in a broker ACL's `%c`/`%u`).
pub fn check_name(what: &'static str, value: &str) -> Result<(), FleetError> {
    let bad = |message| FleetError::Name {
        what,
        value: value.chars().take(80).collect(),
        message,
    };
    if value.is_empty() || value.len() > MAX_NAME {
        return Err(bad("1 to 64 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad("only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub prefix: String,
    pub device: String,
    pub group: Option<String>,
    pub site: Option<String>,
}

impl Topics {
    /// Topics for `device` (and its group and site) below `prefix`; every
    /// name checked with [`check_name`] (the prefix may have `/` levels).
    pub fn new(
        prefix: &str,
        device: &str,
        group: Option<&str>,
        site: Option<&str>,
    ) -> Result<Topics, FleetError> {
        check_prefix(prefix)?;
        check_name("device id", device)?;
        if let Some(g) = group {
            check_name("group", g)?;
        }
        if let Some(s) = site {
            check_name("site", s)?;
        }
        Ok(Topics {
            prefix: prefix.to_owned(),
            device: device.to_owned(),
            group: group.map(str::to_owned),
            site: site.map(str::to_owned),
        })
    }

    /// The nudge topics this device subscribes to.
    pub fn nudges(&self) -> Vec<String> {
        let p = &self.prefix;
        let mut t = vec![
            format!("{p}/nudge/all"),
            format!("{p}/nudge/device/{}", self.device),
        ];
        if let Some(g) = &self.group {
            t.push(format!("{p}/nudge/group/{g}"));
        }
        if let Some(s) = &self.site {
            t.push(format!("{p}/nudge/site/{s}"));
        }
        t
    }

    pub fn status(&self) -> String {
        status_topic(&self.prefix, &self.device)
    }

    pub fn online(&self) -> String {
        format!("{}/device/{}/online", self.prefix, self.device)
    }

    pub fn audit(&self, seq: u64) -> String {
        format!("{}/device/{}/audit/{seq}", self.prefix, self.device)
    }
}

/// Checks a topic prefix: levels of [`check_name`] separated by `/`.
pub fn check_prefix(prefix: &str) -> Result<(), FleetError> {
    if prefix.len() > 128 {
        return Err(FleetError::Name {
            what: "topic prefix",
            value: prefix.chars().take(80).collect(),
            message: "at most 128 characters",
        });
    }
    prefix
        .split('/')
        .try_for_each(|level| check_name("topic prefix", level))
}

/// `P/device/D/status`.
pub fn status_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/device/{device}/status")
}

/// The filter matching every device's status and online topics (not its
/// audit entries: they are a level deeper).
pub fn all_status(prefix: &str) -> String {
    format!("{prefix}/device/+/+")
}

/// The device and the last level of a `P/device/D/LEAF` topic.
pub fn device_topic<'t>(prefix: &str, topic: &'t str) -> Option<(&'t str, &'t str)> {
    let (device, leaf) = topic
        .strip_prefix(prefix)?
        .strip_prefix("/device/")?
        .split_once('/')?;
    (!device.is_empty() && !leaf.contains('/')).then_some((device, leaf))
}

/// The filter matching one device's reported audit entries.
pub fn audit_filter(prefix: &str, device: &str) -> String {
    format!("{prefix}/device/{device}/audit/+")
}

/// The seq a device's audit topic names (`P/device/D/audit/SEQ`).
pub fn audit_seq(prefix: &str, device: &str, topic: &str) -> Option<u64> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix("/device/")?
        .strip_prefix(device)?
        .strip_prefix("/audit/")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_carry_wildcards_or_levels() {
        for bad in ["", "a/b", "+", "#", "gw 1", "gw\u{0}", &"x".repeat(65)] {
            assert!(check_name("device id", bad).is_err(), "{bad:?}");
        }
        for good in ["gw-a01", "GW_1.site", &"x".repeat(64)] {
            check_name("device id", good).unwrap();
        }
        assert!(check_prefix("fleet/eu").is_ok());
        assert!(check_prefix("fleet//eu").is_err());
        assert!(check_prefix("fleet/#").is_err());
    }

    #[test]
    fn topics_of_a_device() {
        let t = Topics::new("ferry", "gw1", Some("line-3"), None).unwrap();
        assert_eq!(
            t.nudges(),
            [
                "ferry/nudge/all",
                "ferry/nudge/device/gw1",
                "ferry/nudge/group/line-3"
            ]
        );
        assert_eq!(t.audit(42), "ferry/device/gw1/audit/42");
        assert_eq!(audit_seq("ferry", "gw1", &t.audit(42)), Some(42));
        assert_eq!(audit_seq("ferry", "gw", &t.audit(42)), None);
        assert_eq!(audit_seq("ferry", "gw1", "ferry/device/gw1/audit/x"), None);
        let e = Topics::new("ferry", "gw/+", None, None).unwrap_err();
        assert!(e.to_string().contains("device id"), "{e}");
    }
}
