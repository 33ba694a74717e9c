//! `[fleet]` of `ferry.toml`, owned by the fleet channel: the engine keeps
//! the section as it was written and this crate reads and checks it, so a
//! ferry built without the channel depends on none of it (docs/fleet.md).

use std::path::PathBuf;

use serde::Deserialize;

use crate::FleetError;
use crate::broker::Broker;
use crate::topics;

/// A `[fleet]` setting ferry cannot use: the key (`fleet.broker`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {key}: {message}")]
pub struct SettingsError {
    pub key: &'static str,
    pub message: String,
}

/// `[fleet]`: the fleet channel over MQTT (docs/fleet.md): nudges that
/// schedule a poll, the retained device status and the audit journal
/// reported in order. Off unless `broker` is set. Content is still pulled
/// from the source and verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSettings {
    /// `mqtts://host[:port]` (TLS, port 8883 by default) or
    /// `mqtt://host[:port]` (plain TCP: a broker on the gateway or a
    /// trusted link).
    pub broker: Option<String>,
    /// CA certificates (PEM) the broker's certificate must chain to
    /// (required with `mqtts://`).
    pub ca: Option<PathBuf>,
    /// This device's client certificate chain and key (PEM); brokers map
    /// the certificate to the device id for their ACLs.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The device id in topics and the MQTT client id; default: the
    /// device's hostname (facts).
    pub device_id: Option<String>,
    /// Nudge group and site; default: the facts labels `group` and `site`.
    pub group: Option<String>,
    pub site: Option<String>,
    /// The first topic levels (`ferry/nudge/…`, `ferry/device/…`).
    pub topic_prefix: String,
    /// At most one nudged poll per this interval (more nudges are
    /// coalesced into one poll at its end).
    pub nudge_interval: String,
    /// The status is published at least this often (and after every
    /// reconcile); new audit entries (a USB import, a rollback by hand)
    /// are found as often.
    pub report_interval: String,
    /// Audit entries sent per page (1–200).
    pub audit_page: usize,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            broker: None,
            ca: None,
            cert: None,
            key: None,
            device_id: None,
            group: None,
            site: None,
            topic_prefix: "ferry".into(),
            nudge_interval: "10s".into(),
            report_interval: "1m".into(),
            audit_page: 100,
        }
    }
}

/// The fleet channel's durations, parsed.
#[derive(Debug, Clone, Copy)]
pub struct FleetTimes {
    pub nudge_interval: std::time::Duration,
    pub report_interval: std::time::Duration,
}

impl FleetSettings {
    /// Reads the `[fleet]` table (empty when the configuration has none)
    /// and checks it.
    pub fn from_table(table: &toml::Table) -> Result<FleetSettings, SettingsError> {
        let settings: FleetSettings =
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| SettingsError {
                    key: "fleet",
                    message: e.message().trim_end().to_owned(),
                })?;
        settings.validate()?;
        Ok(settings)
    }

    /// The nudge and report intervals, parsed.
    pub fn times(&self) -> Result<FleetTimes, SettingsError> {
        let d = |key: &'static str, v: &str, min: std::time::Duration| {
            ferry_core::duration::parse(v)
                .filter(|d| *d >= min)
                .ok_or_else(|| SettingsError {
                    key,
                    message: format!(
                        "{v:?} is not a duration of at least {} ms (e.g. 10s, 1m)",
                        min.as_millis()
                    ),
                })
        };
        Ok(FleetTimes {
            nudge_interval: d(
                "fleet.nudge_interval",
                &self.nudge_interval,
                std::time::Duration::ZERO,
            )?,
            report_interval: d(
                "fleet.report_interval",
                &self.report_interval,
                std::time::Duration::from_secs(1),
            )?,
        })
    }

    /// Checks what `from_table` read: the broker URL, TLS files that go
    /// together, names usable in topics, the page size and durations.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key: &'static str, e: FleetError| SettingsError {
            key,
            message: e.to_string(),
        };
        let Some(url) = &self.broker else {
            return Ok(());
        };
        let broker = Broker::parse(url).map_err(|e| invalid("fleet.broker", e))?;
        self.times()?;
        if broker.tls && self.ca.is_none() {
            return Err(SettingsError {
                key: "fleet.ca",
                message: "an mqtts:// broker needs the CA file its certificate chains to".into(),
            });
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(SettingsError {
                key: "fleet.cert",
                message: "fleet.cert and fleet.key go together".into(),
            });
        }
        if !broker.tls && self.cert.is_some() {
            return Err(SettingsError {
                key: "fleet.cert",
                message: "a client certificate needs an mqtts:// broker".into(),
            });
        }
        topics::check_prefix(&self.topic_prefix).map_err(|e| invalid("fleet.topic_prefix", e))?;
        for (key, v) in [
            ("fleet.device_id", &self.device_id),
            ("fleet.group", &self.group),
            ("fleet.site", &self.site),
        ] {
            if let Some(v) = v {
                topics::check_name("name", v).map_err(|e| invalid(key, e))?;
            }
        }
        if !(1..=crate::channel::MAX_PAGE).contains(&self.audit_page) {
            return Err(SettingsError {
                key: "fleet.audit_page",
                message: format!("{}: 1 to 200 entries", self.audit_page),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<FleetSettings, SettingsError> {
        FleetSettings::from_table(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn no_section_is_the_channel_off_with_its_defaults() {
        let s = read("").unwrap();
        assert_eq!(s.broker, None);
        assert_eq!((s.topic_prefix.as_str(), s.audit_page), ("ferry", 100));
        let t = s.times().unwrap();
        assert_eq!(t.report_interval, std::time::Duration::from_secs(60));
    }

    #[test]
    fn each_bad_setting_is_refused_naming_its_key() {
        for (text, key) in [
            ("brokr = \"mqtt://b\"", "fleet"),
            ("broker = \"http://b\"", "fleet.broker"),
            ("broker = \"mqtts://b\"", "fleet.ca"),
            (
                "broker = \"mqtt://b\"\ncert = \"c.pem\"\nkey = \"k.pem\"",
                "fleet.cert",
            ),
            (
                "broker = \"mqtts://b\"\nca = \"ca.pem\"\ncert = \"c.pem\"",
                "fleet.cert",
            ),
            (
                "broker = \"mqtt://b\"\ntopic_prefix = \"a/+/b\"",
                "fleet.topic_prefix",
            ),
            (
                "broker = \"mqtt://b\"\ndevice_id = \"gw#1\"",
                "fleet.device_id",
            ),
            ("broker = \"mqtt://b\"\naudit_page = 0", "fleet.audit_page"),
            (
                "broker = \"mqtt://b\"\naudit_page = 201",
                "fleet.audit_page",
            ),
            (
                "broker = \"mqtt://b\"\nreport_interval = \"100ms\"",
                "fleet.report_interval",
            ),
            (
                "broker = \"mqtt://b\"\nnudge_interval = \"soon\"",
                "fleet.nudge_interval",
            ),
        ] {
            let e = read(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("config: {key}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_password_in_the_broker_url_is_not_echoed() {
        let e = read("broker = \"mqtt://admin:hunter2@b\"").unwrap_err();
        assert_eq!(e.key, "fleet.broker");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
