//! The device's side of the fleet channel, a task on the agent's tokio
//! runtime.
//!
//! Each connection is a fresh MQTT session (clean session, a new client):
//! nothing one connection had in flight leaks into the next. On connect the
//! device subscribes to its nudge topics and publishes `online = 1` (its
//! last will says `0`). Then, after every reconcile, every report interval
//! and on connect, it reads its state ([`Host::read`], a blocking call the
//! agent answers from a child process) and publishes the retained status
//! and the audit entries after the cursor — the newest entry the broker
//! acknowledged, kept in a file — at most a page at a time; the cursor
//! moves when every entry of the page is acknowledged, and the next page
//! follows at once. An entry the broker received but did not acknowledge
//! before a disconnect is sent again on the same retained topic (MQTT's
//! at-least-once), so the fleet's record holds each entry once.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::FleetError;
use crate::broker::{self, Broker, TlsFiles};
use crate::limiter::{Limiter, Nudge};
use crate::message::{DeviceStatus, Health, ReportPage, ReportedEntry};
use crate::topics::Topics;

/// Largest page of audit entries (and the default).
pub const MAX_PAGE: usize = 200;
pub const DEFAULT_PAGE: usize = 100;
/// Longest wait for the broker's CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Reconnect backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A session that lasted this long was a working connection.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// How the channel is set up (`[fleet]` in ferry.toml).
#[derive(Debug, Clone)]
pub struct Options {
    pub broker: Broker,
    pub tls: TlsFiles,
    pub topics: Topics,
    /// At most one nudged poll per interval.
    pub nudge_interval: Duration,
    /// Status (and audit) at least this often while connected.
    pub report_interval: Duration,
    /// Audit entries per page (1..=[`MAX_PAGE`]).
    pub page: usize,
    /// The file keeping the newest acknowledged seq.
    pub cursor: PathBuf,
}

/// The agent's own view of the device, merged into the status.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub state: String,
    pub health: Health,
    pub last_error: Option<String>,
}

/// What the channel needs from the agent.
pub trait Host: Send + Sync + 'static {
    /// Schedule a reconcile now.
    fn poll_now(&self);
    /// The state's view and the audit entries after `after` (at most
    /// `limit`). Blocking; called off the runtime's thread.
    fn read(&self, after: u64, limit: usize) -> Result<ReportPage, String>;
    /// The agent's own view.
    fn agent(&self) -> AgentView;
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    pub connection_failures: AtomicU64,
    /// Nudges that polled at once / scheduled one poll / added nothing.
    pub nudges_polled: AtomicU64,
    pub nudges_deferred: AtomicU64,
    pub nudges_coalesced: AtomicU64,
    /// Polls that deferred nudges caused.
    pub deferred_polls: AtomicU64,
    pub statuses: AtomicU64,
    /// Audit entries the broker acknowledged, and the newest one's seq.
    pub entries_reported: AtomicU64,
    pub reported_seq: AtomicU64,
}

/// A running channel.
#[derive(Debug, Clone)]
pub struct Channel {
    stats: Arc<Stats>,
    changed: Arc<Notify>,
}

impl Channel {
    /// Checks the options (the TLS files are read now) and starts the
    /// channel's task on the current tokio runtime.
    pub fn start(options: Options, host: Arc<dyn Host>) -> Result<Channel, FleetError> {
        if !(1..=MAX_PAGE).contains(&options.page) {
            return Err(FleetError::Name {
                what: "audit page",
                value: options.page.to_string(),
                message: "1 to 200 entries",
            });
        }
        let mut mqtt = broker::options(&options.broker, &options.tls, &options.topics.device)?;
        mqtt.set_last_will(LastWill::new(
            options.topics.online(),
            "0",
            QoS::AtLeastOnce,
            true,
        ));
        let stats = Arc::new(Stats::default());
        stats
            .reported_seq
            .store(read_cursor(&options.cursor), Relaxed);
        let changed = Arc::new(Notify::new());
        let task = Task {
            options,
            mqtt,
            host,
            stats: stats.clone(),
            changed: changed.clone(),
            limiter: Limiter::new(Duration::ZERO),
        };
        tokio::spawn(task.run());
        Ok(Channel { stats, changed })
    }

    /// Tell the channel the device's state changed (a reconcile ended):
    /// it reports at once.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// The newest acknowledged seq (0 when the file is missing or unreadable:
/// everything is reported again, on the same retained topics). A symlink
/// or anything but a regular file there is not followed.
pub fn read_cursor(path: &Path) -> u64 {
    use std::io::Read as _;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return 0;
    };
    let Ok(Some((file, _))) = ferry_fs::Dir::open(dir).and_then(|d| d.open_file(name)) else {
        return 0;
    };
    let mut text = String::new();
    let _ = file.take(32).read_to_string(&mut text);
    text.trim().parse().unwrap_or(0)
}

fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    ferry_fs::write_atomic(path, 0o600, &mut format!("{seq}\n").as_bytes()).map(|_| ())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What each QoS 1 publish of a session was, in the order sent.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Other,
    Entry,
}

/// The page being acknowledged.
#[derive(Debug)]
struct Page {
    last: u64,
    unacked: usize,
    full: bool,
}

struct Task {
    options: Options,
    mqtt: MqttOptions,
    host: Arc<dyn Host>,
    stats: Arc<Stats>,
    changed: Arc<Notify>,
    limiter: Limiter,
}

/// Aborts the event-loop task of a session when the session ends.
struct Pump(tokio::task::JoinHandle<()>);

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Task {
    async fn run(mut self) {
        self.limiter = Limiter::new(self.options.nudge_interval);
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let e = self.session().await;
            self.stats.connected.store(false, Relaxed);
            self.stats.connection_failures.fetch_add(1, Relaxed);
            // Only a session that lasted resets the backoff: one the broker
            // ends within seconds (a retained message over the size limit
            // brought at every subscription, a client id taken over) must
            // not make the device reconnect twice a second forever.
            if started.elapsed() >= STABLE_SESSION {
                backoff = BACKOFF_MIN;
            }
            tracing::warn!(
                broker = %self.options.broker.url(),
                error = %e,
                retry_in_ms = backoff.as_millis() as u64,
                "fleet: disconnected"
            );
            // A deferred nudged poll still happens while disconnected.
            let end = Instant::now() + backoff;
            loop {
                match self.limiter.due().map(Instant::from_std) {
                    Some(at) if at < end => {
                        tokio::time::sleep_until(at).await;
                        self.fire_deferred();
                    }
                    _ => break,
                }
            }
            tokio::time::sleep_until(end).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn fire_deferred(&mut self) {
        if self.limiter.fire(std::time::Instant::now()) {
            self.stats.deferred_polls.fetch_add(1, Relaxed);
            self.host.poll_now();
        }
    }

    fn nudge(&mut self, topic: &str) {
        match self.limiter.nudge(std::time::Instant::now()) {
            Nudge::Poll => {
                self.stats.nudges_polled.fetch_add(1, Relaxed);
                tracing::info!(topic, "fleet: nudged; polling now");
                self.host.poll_now();
            }
            Nudge::Deferred(_) => {
                self.stats.nudges_deferred.fetch_add(1, Relaxed);
                tracing::info!(
                    topic,
                    "fleet: nudged; polling when the nudge interval is over"
                );
            }
            Nudge::Coalesced => {
                self.stats.nudges_coalesced.fetch_add(1, Relaxed);
            }
        }
    }

    /// One connection, until it fails.
    async fn session(&mut self) -> String {
        let (client, mut eventloop) = AsyncClient::new(self.mqtt.clone(), 2 * MAX_PAGE + 16);
        eventloop.set_network_options(broker::network_options());
        let (tx, mut rx) = mpsc::channel(256);
        let _pump = Pump(tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let end = ev.is_err();
                if tx.send(ev).await.is_err() || end {
                    break;
                }
            }
        }));
        match tokio::time::timeout(CONNECT_TIMEOUT, rx.recv()).await {
            Err(_) => return "no answer from the broker".into(),
            Ok(None) => return "the connection ended".into(),
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(Some(Ok(Event::Incoming(Packet::ConnAck(ack))))) => {
                if ack.code != ConnectReturnCode::Success {
                    return format!("the broker refused the connection: {:?}", ack.code);
                }
            }
            Ok(Some(Ok(ev))) => return format!("unexpected first event {ev:?}"),
        }
        self.stats.connected.store(true, Relaxed);
        self.stats.connections.fetch_add(1, Relaxed);
        tracing::info!(broker = %self.options.broker.url(), device = %self.options.topics.device, "fleet: connected");

        let nudges = self.options.topics.nudges();
        let mut order: VecDeque<Sent> = VecDeque::new();
        let mut by_pkid: HashMap<u16, Sent> = HashMap::new();
        if let Err(e) = client
            .subscribe_many(
                nudges
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtMostOnce)),
            )
            .await
        {
            return e.to_string();
        }
        if let Err(e) = client
            .publish(self.options.topics.online(), QoS::AtLeastOnce, true, "1")
            .await
        {
            return e.to_string();
        }
        order.push_back(Sent::Other);

        let mut cursor = read_cursor(&self.options.cursor);
        let mut page: Option<Page> = None;
        let mut reading: Option<tokio::task::JoinHandle<Result<ReportPage, String>>> = None;
        let mut report_due = true;
        let period = self.options.report_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            if report_due && page.is_none() && reading.is_none() {
                report_due = false;
                let (host, after, limit) = (self.host.clone(), cursor, self.options.page);
                reading = Some(tokio::task::spawn_blocking(move || host.read(after, limit)));
            }
            let deferred = self.limiter.due().map(Instant::from_std);
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => return "the connection ended".into(),
                    Some(Err(e)) => return e.to_string(),
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        if nudges.contains(&p.topic) {
                            self.nudge(&p.topic);
                        }
                    }
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(s) = order.pop_front() {
                            by_pkid.insert(pkid, s);
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        if let Some(Sent::Entry) = by_pkid.remove(&ack.pkid)
                            && let Some(p) = page.as_mut()
                        {
                            p.unacked = p.unacked.saturating_sub(1);
                            if p.unacked == 0 {
                                let acked = p.last - cursor;
                                cursor = p.last;
                                if let Err(e) = write_cursor(&self.options.cursor, cursor) {
                                    tracing::warn!(path = %self.options.cursor.display(), error = %e, "fleet: cannot keep the reported cursor");
                                }
                                self.stats.entries_reported.fetch_add(acked, Relaxed);
                                self.stats.reported_seq.store(cursor, Relaxed);
                                report_due |= p.full;
                                page = None;
                            }
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::Disconnect))) => {
                        return "the broker disconnected".into();
                    }
                    Some(Ok(_)) => {}
                },
                read = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                    reading = None;
                    let read = match read {
                        Ok(r) => r,
                        Err(e) => Err(e.to_string()),
                    };
                    match read {
                        Ok(p) => {
                            if p.state.audit_head < cursor {
                                tracing::warn!(cursor, head = p.state.audit_head, "fleet: the audit journal is behind the reported cursor (state restored?); reporting from its head");
                                cursor = p.state.audit_head;
                                let _ = write_cursor(&self.options.cursor, cursor);
                            }
                            match self.publish(&client, p, cursor, &mut order).await {
                                Ok(next) => page = next,
                                Err(e) => return e,
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "fleet: cannot read the device's state to report"),
                    }
                }
                _ = tick.tick() => report_due = true,
                _ = self.changed.notified() => report_due = true,
                _ = tokio::time::sleep_until(deferred.unwrap_or_else(Instant::now)), if deferred.is_some() => {
                    self.fire_deferred();
                }
            }
        }
    }

    /// Publishes the status and the page's entries; returns the page to
    /// wait for.
    async fn publish(
        &self,
        client: &AsyncClient,
        read: ReportPage,
        cursor: u64,
        order: &mut VecDeque<Sent>,
    ) -> Result<Option<Page>, String> {
        let agent = self.host.agent();
        let t = &self.options.topics;
        let status = DeviceStatus {
            device: t.device.clone(),
            group: t.group.clone(),
            site: t.site.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            last_seen: unix_now(),
            state: agent.state,
            health: agent.health,
            generation: read.state.generation,
            revision: read.state.revision,
            generation_time_ms: read.state.generation_time_ms,
            last_error: agent.last_error,
            firmware: read.state.firmware,
            audit_head: read.state.audit_head,
            audit_reported: cursor,
            rejected: read.state.rejected,
            drifted: read.state.drifted,
        };
        let body = serde_json::to_vec(&status).map_err(|e| e.to_string())?;
        client
            .publish(t.status(), QoS::AtLeastOnce, true, body)
            .await
            .map_err(|e| e.to_string())?;
        order.push_back(Sent::Other);
        self.stats.statuses.fetch_add(1, Relaxed);
        let entries: Vec<ReportedEntry> = read
            .entries
            .into_iter()
            .filter(|e| e.entry.seq > cursor)
            .take(self.options.page)
            .collect();
        let Some(last) = entries.last().map(|e| e.entry.seq) else {
            return Ok(None);
        };
        let n = entries.len();
        for mut e in entries {
            let seq = e.entry.seq;
            let mut body = serde_json::to_vec(&e).map_err(|e| e.to_string())?;
            if body.len() > broker::MAX_PACKET - 1024 {
                // Never larger than a packet: the details are replaced
                // (its hash then no longer matches; `fleet audit` names it).
                e.entry.details = serde_json::json!({"omitted_bytes": body.len()});
                body = serde_json::to_vec(&e).map_err(|e| e.to_string())?;
            }
            client
                .publish(t.audit(seq), QoS::AtLeastOnce, true, body)
                .await
                .map_err(|e| e.to_string())?;
            order.push_back(Sent::Entry);
        }
        Ok(Some(Page {
            last,
            unacked: n,
            full: n == self.options.page,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_survives_garbage_and_does_not_follow_symlinks() {
        let dir = std::env::temp_dir().join(format!("ferry-fleet-cursor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cursor = dir.join("fleet-reported");
        assert_eq!(read_cursor(&cursor), 0, "absent");
        write_cursor(&cursor, 41).unwrap();
        assert_eq!(read_cursor(&cursor), 41);
        std::fs::write(&cursor, "x".repeat(1 << 20)).unwrap();
        assert_eq!(read_cursor(&cursor), 0, "garbage");
        // A planted symlink to another number is not followed…
        let other = dir.join("other");
        std::fs::write(&other, "999\n").unwrap();
        std::fs::remove_file(&cursor).unwrap();
        std::os::unix::fs::symlink(&other, &cursor).unwrap();
        assert_eq!(read_cursor(&cursor), 0);
        // …and is replaced, not written through.
        write_cursor(&cursor, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "999\n");
        assert_eq!(read_cursor(&cursor), 42);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
