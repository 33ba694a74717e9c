//! The admin's side: what the broker retains about the fleet. Devices'
//! status messages become a table with the devices that need attention
//! first; a device's audit entries are put in order and their chain
//! verified.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Packet, QoS};
use serde::Serialize;

use crate::FleetError;
use crate::broker::{self, Broker, TlsFiles};
use crate::message::{DeviceStatus, Health, ReportedEntry, verify_reported};
use crate::topics;

/// How long the broker may take to connect and answer the subscription.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The retained state may take this long to arrive in all (10,000 devices
/// take a second or two); a broker still sending after it is an error.
const MAX_COLLECT: Duration = Duration::from_secs(120);
/// Retained messages collected at most.
pub const MAX_MESSAGES: usize = 1_000_000;
/// The largest status or audit entry read (a status is well under 1 KiB,
/// an audit entry a few KiB); a larger one is listed as unreadable.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The largest packet the admin tool reads (one at a time; what it keeps
/// of it is bounded by [`MAX_MESSAGE_BYTES`]).
pub const MAX_INCOMING_PACKET: usize = 16 << 20;
/// What one collection keeps, in payload bytes, at most.
pub const MAX_KEPT_BYTES: usize = 256 << 20;
/// Unreadable messages listed at most (the rest are counted).
pub const MAX_UNREADABLE: usize = 1000;

/// The retained messages on `filter`, each handed to `take` as it arrives
/// (nothing is kept here): subscribes, then collects until no retained
/// message came for `quiet` (the broker sends them right after the
/// subscription's acknowledgement). Live messages (a device reporting
/// while this runs) are not retained copies: they are skipped and do not
/// hold the collection open.
pub async fn collect(
    broker: &Broker,
    tls: &TlsFiles,
    client_id: &str,
    filter: &str,
    quiet: Duration,
    take: &mut Take<'_>,
) -> Result<(), FleetError> {
    let fail = |message: String| FleetError::Broker {
        broker: broker.url(),
        message,
    };
    let mut opts = broker::options(broker, tls, client_id)?;
    // A device can retain a message larger than any ferry sends (if its
    // broker allows it): read it and list it as unreadable rather than let
    // it end the whole collection.
    opts.set_max_packet_size(MAX_INCOMING_PACKET, broker::MAX_PACKET);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    eventloop.set_network_options(broker::network_options());
    let mut count = 0usize;
    // When the subscription was acknowledged, and the last retained
    // message came.
    let mut subscribed: Option<(Instant, Instant)> = None;
    loop {
        let wait = match subscribed {
            Some((since, last)) => {
                if since.elapsed() > MAX_COLLECT {
                    return Err(fail(format!(
                        "retained messages on {filter} still arriving after {} s",
                        MAX_COLLECT.as_secs()
                    )));
                }
                quiet.saturating_sub(last.elapsed())
            }
            None => ANSWER_TIMEOUT,
        };
        let ev = match tokio::time::timeout(wait, eventloop.poll()).await {
            Err(_) if subscribed.is_some() => break,
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
                let now = Instant::now();
                subscribed = Some((now, now));
            }
            Event::Incoming(Packet::Publish(p)) if p.retain => {
                count += 1;
                if count > MAX_MESSAGES {
                    return Err(fail(format!(
                        "more than {MAX_MESSAGES} messages on {filter}"
                    )));
                }
                if let Some((_, last)) = &mut subscribed {
                    *last = Instant::now();
                }
                take(&p.topic, &p.payload)?;
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    Ok(())
}

/// What [`collect`] hands each retained message (topic, payload) to.
pub type Take<'a> = dyn FnMut(&str, &[u8]) -> Result<(), FleetError> + 'a;

/// Counts what a collection keeps, and refuses to keep more than
/// [`MAX_KEPT_BYTES`].
#[derive(Debug, Default)]
struct Kept(usize);

impl Kept {
    fn add(&mut self, bytes: usize, what: &str) -> Result<(), FleetError> {
        self.0 += bytes;
        if self.0 > MAX_KEPT_BYTES {
            return Err(FleetError::Message {
                topic: what.to_owned(),
                message: format!(
                    "the messages collected pass {} MiB; narrow the topic prefix",
                    MAX_KEPT_BYTES >> 20
                ),
            });
        }
        Ok(())
    }
}

/// `error` cut to a length a table can show.
fn short(error: impl std::fmt::Display) -> String {
    let e = error.to_string();
    if e.chars().count() > 200 {
        e.chars().take(200).chain("…".chars()).collect()
    } else {
        e
    }
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
    /// The revision devices are measured against (`--revision`, or the
    /// signed repository's newest): never taken from what devices report,
    /// or one device could make every other one look behind. `None`: no
    /// device is lagging.
    pub target: Option<String>,
    pub devices: Vec<Row>,
    pub unreadable: Vec<Unreadable>,
    /// Unreadable messages beyond the [`MAX_UNREADABLE`] listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub unreadable_more: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The fleet's status messages, read one at a time as they arrive: only
/// what the table shows is kept, bounded in bytes.
#[derive(Debug)]
pub struct StatusCollector {
    prefix: String,
    statuses: std::collections::BTreeMap<String, DeviceStatus>,
    online: std::collections::BTreeMap<String, bool>,
    unreadable: Vec<Unreadable>,
    unreadable_more: u64,
    kept: Kept,
}

impl StatusCollector {
    pub fn new(prefix: &str) -> StatusCollector {
        StatusCollector {
            prefix: prefix.to_owned(),
            statuses: Default::default(),
            online: Default::default(),
            unreadable: Vec::new(),
            unreadable_more: 0,
            kept: Kept::default(),
        }
    }

    fn unreadable(&mut self, topic: &str, error: impl std::fmt::Display) -> Result<(), FleetError> {
        if self.unreadable.len() >= MAX_UNREADABLE {
            self.unreadable_more += 1;
            return Ok(());
        }
        let error = short(error);
        self.kept.add(topic.len() + error.len(), topic)?;
        self.unreadable.push(Unreadable {
            topic: topic.to_owned(),
            error,
        });
        Ok(())
    }

    /// Takes one retained message. A status is listed under the device its
    /// topic names (the broker's ACL ties that to the device's identity);
    /// one that names another device is unreadable.
    pub fn add(&mut self, topic: &str, payload: &[u8]) -> Result<(), FleetError> {
        if payload.is_empty() {
            return Ok(()); // a cleared retained message
        }
        let Some((device, leaf)) = topics::device_topic(&self.prefix, topic) else {
            return Ok(());
        };
        match leaf {
            "online" => {
                self.kept.add(device.len(), topic)?;
                self.online.insert(device.to_owned(), payload == b"1");
            }
            "status" if payload.len() > MAX_MESSAGE_BYTES => self.unreadable(
                topic,
                format_args!(
                    "{} bytes; a status is at most {MAX_MESSAGE_BYTES}",
                    payload.len()
                ),
            )?,
            "status" => match serde_json::from_slice::<DeviceStatus>(payload) {
                Ok(s) if s.device != device => self.unreadable(
                    topic,
                    format_args!(
                        "names device {:?}, not {device:?} whose topic it came on",
                        s.device
                    ),
                )?,
                Ok(s) => {
                    self.kept.add(payload.len(), topic)?;
                    self.statuses.insert(device.to_owned(), s);
                }
                Err(e) => self.unreadable(topic, e)?,
            },
            _ => {}
        }
        Ok(())
    }

    /// The table: failing, lagging (not on `target`), stale, then the
    /// rest; within each, the longest unseen first, then by device.
    pub fn finish(self, target: Option<&str>, stale_after: Duration, now: u64) -> FleetStatus {
        let target = target.map(str::to_owned);
        let online = self.online;
        let mut devices: Vec<Row> = self
            .statuses
            .into_values()
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
            unreadable: self.unreadable,
            unreadable_more: self.unreadable_more,
        }
    }
}

/// [`StatusCollector`] over messages at hand.
pub fn fleet_status(
    prefix: &str,
    messages: Vec<(String, Vec<u8>)>,
    target: Option<&str>,
    stale_after: Duration,
    now: u64,
) -> Result<FleetStatus, FleetError> {
    let mut c = StatusCollector::new(prefix);
    for (topic, payload) in messages {
        c.add(&topic, &payload)?;
    }
    Ok(c.finish(target, stale_after, now))
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

/// A device's reported audit entries, read one at a time as they arrive
/// (each parsed and checked, bounded in bytes).
#[derive(Debug)]
pub struct AuditCollector {
    prefix: String,
    device: String,
    entries: Vec<ReportedEntry>,
    kept: Kept,
}

impl AuditCollector {
    pub fn new(prefix: &str, device: &str) -> AuditCollector {
        AuditCollector {
            prefix: prefix.to_owned(),
            device: device.to_owned(),
            entries: Vec::new(),
            kept: Kept::default(),
        }
    }

    /// Takes one retained message: an entry on a topic that does not name
    /// its seq, or over [`MAX_MESSAGE_BYTES`], is an error.
    pub fn add(&mut self, topic: &str, payload: &[u8]) -> Result<(), FleetError> {
        if payload.is_empty() {
            return Ok(());
        }
        let bad = |message: String| FleetError::Message {
            topic: topic.to_owned(),
            message,
        };
        let seq = topics::audit_seq(&self.prefix, &self.device, topic)
            .ok_or_else(|| bad("not an audit entry topic".into()))?;
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(bad(format!(
                "{} bytes; an audit entry is at most {MAX_MESSAGE_BYTES}",
                payload.len()
            )));
        }
        let e: ReportedEntry = serde_json::from_slice(payload).map_err(|e| bad(short(e)))?;
        if e.entry.seq != seq {
            return Err(bad(format!("the entry says seq {}", e.entry.seq)));
        }
        self.kept.add(payload.len(), topic)?;
        self.entries.push(e);
        Ok(())
    }

    /// The entries in order, their chain verified.
    pub fn finish(mut self) -> DeviceAudit {
        self.entries.sort_by_key(|e| e.entry.seq);
        let (verified, error) = match verify_reported(&self.entries) {
            Ok(_) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        DeviceAudit {
            device: self.device,
            entries: self.entries,
            verified,
            error,
        }
    }
}

/// [`AuditCollector`] over messages at hand.
pub fn device_audit(
    prefix: &str,
    device: &str,
    messages: Vec<(String, Vec<u8>)>,
) -> Result<DeviceAudit, FleetError> {
    let mut c = AuditCollector::new(prefix, device);
    for (topic, payload) in messages {
        c.add(&topic, &payload)?;
    }
    Ok(c.finish())
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
        let s = fleet_status("ferry", msgs, Some("r2"), Duration::from_secs(300), now).unwrap();
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
            "ferry",
            vec![
                status("a", "r2", 2, now, Health::Ok),
                status("b", "r1", 1, now, Health::Ok),
            ],
            Some("r1"),
            Duration::from_secs(300),
            now,
        )
        .unwrap();
        assert_eq!(s.devices[0].status.device, "a");
        assert_eq!(s.devices[0].standing, Standing::Lagging);
    }

    #[test]
    fn a_status_naming_another_device_is_unreadable_not_listed_as_it() {
        let now = 10_000;
        let (_, victim_says) = status("gw-victim", "r1", 1, now, Health::Ok);
        let msgs = vec![
            status("gw-victim", "r1", 1, now, Health::Failing),
            ("ferry/device/gw-rogue/status".into(), victim_says),
        ];
        let s = fleet_status("ferry", msgs, None, Duration::from_secs(300), now).unwrap();
        assert_eq!(s.devices.len(), 1);
        assert_eq!(s.devices[0].status.device, "gw-victim");
        assert_eq!(s.devices[0].standing, Standing::Failing);
        assert_eq!(s.unreadable.len(), 1);
        assert_eq!(s.unreadable[0].topic, "ferry/device/gw-rogue/status");
        assert!(
            s.unreadable[0].error.contains("names device \"gw-victim\""),
            "{:?}",
            s.unreadable
        );
    }

    #[test]
    fn a_generation_time_in_the_future_does_not_set_the_target() {
        let now = 10_000;
        let msgs = vec![
            status("a", "r2", 2, now, Health::Ok),
            status("b", "r2", 2, now, Health::Ok),
            status("rogue", "evil", i64::MAX, now, Health::Ok),
        ];
        let s = fleet_status("ferry", msgs, None, Duration::from_secs(300), now).unwrap();
        assert_eq!(s.target, None);
        assert!(s.devices.iter().all(|r| r.standing == Standing::Ok));
    }

    #[test]
    fn junk_messages_are_not_kept() {
        let now = 10_000;
        let mut c = StatusCollector::new("ferry");
        // One device's 2,000 messages of 200 KiB on topics the table does
        // not show, and as its status.
        let junk = vec![b'x'; 200 * 1024];
        for i in 0..2000 {
            c.add(&format!("ferry/device/gw-rogue/junk{i}"), &junk)
                .unwrap();
            c.add("ferry/device/gw-rogue/status", &junk).unwrap();
        }
        let (topic, payload) = status("gw-1", "r1", 1, now, Health::Ok);
        c.add(&topic, &payload).unwrap();
        assert!(c.kept.0 < 1 << 20, "kept {} bytes", c.kept.0);
        let s = c.finish(None, Duration::from_secs(300), now);
        assert_eq!(s.devices.len(), 1);
        assert_eq!(s.unreadable.len(), MAX_UNREADABLE);
        assert_eq!(s.unreadable_more, 2000 - MAX_UNREADABLE as u64);
        assert!(s.unreadable[0].error.contains("204800 bytes"));
        // What is kept is bounded, whatever the fleet sends.
        let mut c = StatusCollector::new("ferry");
        let revision = "r".repeat(60_000);
        let e = (0..)
            .find_map(|i| {
                let (topic, payload) = status(&format!("gw{i}"), &revision, 1, now, Health::Ok);
                c.add(&topic, &payload).err()
            })
            .unwrap();
        assert!(e.to_string().contains("pass 256 MiB"), "{e}");
    }

    #[test]
    fn an_oversized_audit_entry_is_refused() {
        let mut c = AuditCollector::new("ferry", "gw");
        let e = c
            .add(
                "ferry/device/gw/audit/1",
                &vec![b' '; MAX_MESSAGE_BYTES + 1],
            )
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
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
