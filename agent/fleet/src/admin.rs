//! The admin's side: what the broker retains about the fleet. Devices'
//! status messages become a table with the devices that need attention
//! first; a device's audit entries are put in order and their chain
//! verified.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Packet, QoS};
use serde::Serialize;

use crate::FleetError;
use crate::broker::{self, Broker, TlsFiles};
use crate::message::{DeviceStatus, Health, ReportedEntry, verify_reported};
use crate::topics;

/// How long the broker may take to connect and answer the subscription.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Retained messages collected at most.
pub const MAX_MESSAGES: usize = 1_000_000;

/// The retained messages on `filter`: subscribes, then collects until no
/// message came for `quiet` (the broker sends retained messages right
/// after the subscription's acknowledgement).
pub async fn collect(
    broker: &Broker,
    tls: &TlsFiles,
    client_id: &str,
    filter: &str,
    quiet: Duration,
) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
    let fail = |message: String| FleetError::Broker {
        broker: broker.url(),
        message,
    };
    let opts = broker::options(broker, tls, client_id)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    eventloop.set_network_options(broker::network_options());
    let mut out = Vec::new();
    let mut subscribed = false;
    loop {
        let wait = if subscribed { quiet } else { ANSWER_TIMEOUT };
        let ev = match tokio::time::timeout(wait, eventloop.poll()).await {
            Err(_) if subscribed => break,
            Err(_) => return Err(fail("no answer in 15 s".into())),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(fail(format!("connection refused: {:?}", ack.code)));
                }
                client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    return Err(fail(format!("subscription to {filter} refused (ACL?)")));
                }
                subscribed = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                if out.len() >= MAX_MESSAGES {
                    return Err(fail(format!(
                        "more than {MAX_MESSAGES} messages on {filter}"
                    )));
                }
                out.push((p.topic, p.payload.to_vec()));
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    Ok(out)
}

/// Why a device is listed where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// Its last reconcile failed or rolled back.
    Failing,
    /// Not on the fleet's newest revision.
    Lagging,
    /// Not heard from within the stale time.
    Stale,
    Ok,
}

/// One row of `ferry fleet status`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub standing: Standing,
    /// The device's `online` topic: connected now (its last will clears
    /// it), if it says.
    pub online: Option<bool>,
    #[serde(flatten)]
    pub status: DeviceStatus,
}

/// A message that is not a status.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub topic: String,
    pub error: String,
}

/// The fleet's status.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// The revision devices are measured against: the one asked for, or
    /// the revision of the most recently made generation any device reports.
    pub target: Option<String>,
    pub devices: Vec<Row>,
    pub unreadable: Vec<Unreadable>,
}

/// Sorts statuses into the table: failing, lagging, stale, then the rest;
/// within each, the longest unseen first, then by device.
pub fn fleet_status(
    messages: Vec<(String, Vec<u8>)>,
    target: Option<&str>,
    stale_after: Duration,
    now: u64,
) -> FleetStatus {
    let mut statuses = Vec::new();
    let mut unreadable = Vec::new();
    let mut online = std::collections::BTreeMap::new();
    for (topic, payload) in messages {
        if payload.is_empty() {
            continue; // a cleared retained message
        }
        if let Some(device) = topic
            .strip_suffix("/online")
            .and_then(|t| t.rsplit('/').next())
        {
            online.insert(device.to_owned(), payload == b"1");
            continue;
        }
        if !topic.ends_with("/status") {
            continue;
        }
        match serde_json::from_slice::<DeviceStatus>(&payload) {
            Ok(s) => statuses.push(s),
            Err(e) => unreadable.push(Unreadable {
                topic,
                error: e.to_string(),
            }),
        }
    }
    let target = target.map(str::to_owned).or_else(|| {
        statuses
            .iter()
            .filter(|s| s.revision.is_some())
            .max_by_key(|s| s.generation_time_ms.unwrap_or(i64::MIN))
            .and_then(|s| s.revision.clone())
    });
    let mut devices: Vec<Row> = statuses
        .into_iter()
        .map(|status| {
            let standing = if matches!(status.health, Health::Failing | Health::RolledBack) {
                Standing::Failing
            } else if target.is_some() && status.revision != target {
                Standing::Lagging
            } else if now.saturating_sub(status.last_seen) > stale_after.as_secs() {
                Standing::Stale
            } else {
                Standing::Ok
            };
            Row {
                standing,
                online: online.get(&status.device).copied(),
                status,
            }
        })
        .collect();
    devices.sort_by(|a, b| {
        (a.standing, a.status.last_seen, &a.status.device).cmp(&(
            b.standing,
            b.status.last_seen,
            &b.status.device,
        ))
    });
    FleetStatus {
        target,
        devices,
        unreadable,
    }
}

/// A device's reported audit, verified.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceAudit {
    pub device: String,
    pub entries: Vec<ReportedEntry>,
    /// The chain links from the first entry to the last.
    pub verified: bool,
    /// Why not.
    pub error: Option<String>,
}

/// Puts a device's reported entries in order and verifies their chain.
/// A message whose topic does not name its entry's seq is an error.
pub fn device_audit(
    prefix: &str,
    device: &str,
    messages: Vec<(String, Vec<u8>)>,
) -> Result<DeviceAudit, FleetError> {
    let mut entries = Vec::new();
    for (topic, payload) in messages {
        if payload.is_empty() {
            continue;
        }
        let seq = topics::audit_seq(prefix, device, &topic).ok_or_else(|| FleetError::Message {
            topic: topic.clone(),
            message: "not an audit entry topic".into(),
        })?;
        let e: ReportedEntry =
            serde_json::from_slice(&payload).map_err(|e| FleetError::Message {
                topic: topic.clone(),
                message: e.to_string(),
            })?;
        if e.entry.seq != seq {
            return Err(FleetError::Message {
                topic,
                message: format!("the entry says seq {}", e.entry.seq),
            });
        }
        entries.push(e);
    }
    entries.sort_by_key(|e| e.entry.seq);
    let (verified, error) = match verify_reported(&entries) {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    Ok(DeviceAudit {
        device: device.to_owned(),
        entries,
        verified,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(device: &str, rev: &str, t: i64, seen: u64, health: Health) -> (String, Vec<u8>) {
        let s = DeviceStatus {
            device: device.into(),
            group: None,
            site: None,
            agent_version: "0.1.0".into(),
            last_seen: seen,
            state: "idle".into(),
            health,
            generation: Some(1),
            revision: Some(rev.into()),
            generation_time_ms: Some(t),
            last_error: None,
            firmware: None,
            audit_head: 0,
            audit_reported: 0,
            rejected: Vec::new(),
            drifted: 0,
        };
        (
            topics::status_topic("ferry", device),
            serde_json::to_vec(&s).unwrap(),
        )
    }

    #[test]
    fn devices_needing_attention_come_first() {
        let now = 10_000;
        let msgs = vec![
            status("a-ok", "r2", 2, now, Health::Ok),
            status("b-lag", "r1", 1, now, Health::Ok),
            status("c-fail", "r2", 2, now, Health::Failing),
            status("d-stale", "r2", 2, now - 3600, Health::Ok),
            ("ferry/device/x/status".into(), b"{not json".to_vec()),
            ("ferry/device/y/status".into(), Vec::new()),
            ("ferry/device/a-ok/online".into(), b"1".to_vec()),
            ("ferry/device/d-stale/online".into(), b"0".to_vec()),
            ("ferry/device/a-ok/other".into(), b"{not json".to_vec()),
        ];
        let s = fleet_status(msgs, None, Duration::from_secs(300), now);
        assert_eq!(s.target.as_deref(), Some("r2"));
        let order: Vec<_> = s
            .devices
            .iter()
            .map(|r| (r.status.device.as_str(), r.standing))
            .collect();
        assert_eq!(
            order,
            [
                ("c-fail", Standing::Failing),
                ("b-lag", Standing::Lagging),
                ("d-stale", Standing::Stale),
                ("a-ok", Standing::Ok)
            ]
        );
        assert_eq!(s.unreadable.len(), 1);
        let online: Vec<_> = s.devices.iter().map(|r| r.online).collect();
        assert_eq!(online, [None, None, Some(false), Some(true)]);
        assert_eq!(s.unreadable[0].topic, "ferry/device/x/status");
        // Asked for r1: the others lag.
        let s = fleet_status(
            vec![
                status("a", "r2", 2, now, Health::Ok),
                status("b", "r1", 1, now, Health::Ok),
            ],
            Some("r1"),
            Duration::from_secs(300),
            now,
        );
        assert_eq!(s.devices[0].status.device, "a");
        assert_eq!(s.devices[0].standing, Standing::Lagging);
    }

    #[test]
    fn an_entry_on_another_seq_topic_is_refused() {
        let c = crate::message::tests_support::chain(2);
        let msgs = vec![(
            "ferry/device/gw/audit/2".into(),
            serde_json::to_vec(&c[0]).unwrap(),
        )];
        let e = device_audit("ferry", "gw", msgs).unwrap_err().to_string();
        assert!(
            e.contains("ferry/device/gw/audit/2") && e.contains("seq 1"),
            "{e}"
        );
        let msgs = vec![
            (
                "ferry/device/gw/audit/2".into(),
                serde_json::to_vec(&c[1]).unwrap(),
            ),
            (
                "ferry/device/gw/audit/1".into(),
                serde_json::to_vec(&c[0]).unwrap(),
            ),
        ];
        let a = device_audit("ferry", "gw", msgs).unwrap();
        assert!(a.verified, "{:?}", a.error);
        assert_eq!(a.entries[0].entry.seq, 1);
    }
}
