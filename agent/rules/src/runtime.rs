//! The rule engine at run time: events in from MQTT and a local JSON-lines
//! socket, evaluated by the current rule sets, actions out to MQTT and the
//! journal.
//!
//! ```text
//!  MQTT (rumqttc) ─┐                      ┌─► publisher task ─► MQTT
//!  socket lines ───┼─► events (bounded) ─►│ evaluator ─► alerts ─► journal
//!  EventSink ──────┘                      ├─► call hook (WASM)
//!  (CoAP, Modbus)                         └─► write hook (Modbus)
//! ```
//!
//! Other sources (ferry-ingest's CoAP server and Modbus pollers) feed the
//! same bounded queue through an [`EventSink`]; a source that must answer at
//! once (CoAP) uses [`EventSink::try_send`] and tells its client when the
//! queue is full, instead of queueing without bound.
//!
//! One evaluator task takes events in arrival order and, for each event,
//! loads the current sets from an `ArcSwap` once: the event is evaluated
//! completely by the sets that were current when it was taken, and the next
//! event by whatever is current then. A swap therefore never loses or
//! repeats an event, and costs the swapping side one pointer store. When the
//! evaluator first sees new sets it hands each set's state (windows,
//! variables, rate limits) over by set name.
//!
//! The evaluator never waits for MQTT: actions go to the publisher task
//! through a queue it never blocks on, so a full MQTT request channel
//! cannot stall the event loop that feeds the evaluator (no wait cycle).
//! That queue is bounded in bytes instead: past [`BUSY_ACTION_BYTES`]
//! waiting, sources that can say "busy" (CoAP's 5.03) are refused new
//! events; past [`MAX_ACTION_BYTES`] actions are dropped and counted.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::compile::Compiled;
use crate::decode::{Envelope, MAX_EVENT_BYTES};
use crate::eval::State;
use crate::value::{Event, Output};

/// The rule sets that are running, and what they came from (e.g.
/// `generation 7`).
#[derive(Debug, Default)]
pub struct Loaded {
    pub label: String,
    pub sets: Vec<(Arc<str>, Arc<Compiled>)>,
}

pub use crate::target::{MqttTarget, UrlError};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub mqtt: Option<MqttTarget>,
    pub client_id: String,
    /// A UNIX socket that accepts JSON-lines events (see [`Envelope`]).
    pub socket: Option<PathBuf>,
    /// Alerts are also published here (as JSON), besides the journal.
    pub alert_topic: Option<String>,
    /// Print every action as a JSON line on stdout (`ferry rules run`).
    pub print_actions: bool,
    /// Events waiting for the evaluator at most; 0 means [`DEFAULT_QUEUE`].
    pub queue: usize,
}

/// The event queue's default capacity.
pub const DEFAULT_QUEUE: usize = 4096;

/// Actions waiting for the publisher (approximate bytes) beyond which
/// [`EventSink::try_send`] answers `Full`.
pub const BUSY_ACTION_BYTES: usize = 4 << 20;
/// Actions waiting beyond this are dropped (counted in `dropped_actions`).
pub const MAX_ACTION_BYTES: usize = 64 << 20;

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub struct Stats {
    pub events: AtomicU64,
    pub bad_events: AtomicU64,
    pub fired: AtomicU64,
    pub actions: AtomicU64,
    pub action_errors: AtomicU64,
    pub swaps: AtomicU64,
    /// Actions dropped because MAX_ACTION_BYTES were already waiting.
    pub dropped_actions: AtomicU64,
}

/// The queue from the evaluator (and sources' alerts) to the publisher:
/// never blocks its sender, bounded by the bytes waiting.
#[derive(Debug, Clone)]
struct ActionQueue {
    tx: mpsc::UnboundedSender<Output>,
    waiting: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

impl ActionQueue {
    fn send(&self, action: Output) {
        let size = action.approx_bytes();
        if self.waiting.fetch_add(size, Ordering::Relaxed) + size > MAX_ACTION_BYTES {
            self.waiting.fetch_sub(size, Ordering::Relaxed);
            if self
                .stats
                .dropped_actions
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                tracing::warn!(rule = %action.rule(), "rules: actions are produced faster than they are published; dropping (ferry_rules_dropped_actions_total)");
            }
            return;
        }
        let _ = self.tx.send(action);
    }

    /// The publisher took `action`.
    fn taken(&self, action: &Output) {
        self.waiting
            .fetch_sub(action.approx_bytes(), Ordering::Relaxed);
    }
}

/// What a finished call hands back: the messages the module emitted, as
/// (topic, payload), which the engine publishes; or what went wrong.
pub type CallDone = Box<dyn FnOnce(Result<Vec<(String, Vec<u8>)>, String>) + Send>;

/// Receives `call(module, export, payload)` actions. The WASM module host
/// implements it; without one, calls are counted as action errors.
pub trait CallHook: Send + Sync + 'static {
    /// Starts the call; `done` may run later and on another thread. Calls
    /// must run in the order they are started.
    fn call(&self, module: &str, export: &str, payload: Vec<u8>, done: CallDone);
}

/// What a finished register write hands back.
pub type WriteDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Receives `modbus_write(device, register, value)` actions (ferry-ingest's
/// Modbus pollers); without one, writes are counted as action errors.
pub trait WriteHook: Send + Sync + 'static {
    /// Starts the write; `done` may run later and on another thread.
    fn write(&self, device: &str, register: u16, value: u16, done: WriteDone);
}

struct Incoming {
    topic: Arc<str>,
    time_ms: Option<u64>,
    payload: Arc<[u8]>,
    /// A JSON object to decode the event's fields from, when the payload
    /// itself is not one (CBOR over CoAP, registers read over Modbus).
    fields: Option<Arc<[u8]>>,
}

/// Why [`EventSink::try_send`] did not queue an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    #[error("the rule engine's event queue is full")]
    Full,
    #[error("the rule engine has stopped")]
    Closed,
}

/// A handle other event sources use to feed the rule engine's queue.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Incoming>,
    /// The engine's waiting actions, when the sink belongs to one.
    backlog: Option<Arc<AtomicUsize>>,
}

impl EventSink {
    /// A sink whose events go to `capacity`-bounded queue read by the
    /// returned receiver's owner; for sources tested without an evaluator.
    pub fn channel(capacity: usize) -> (EventSink, EventReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (EventSink { tx, backlog: None }, EventReceiver { rx })
    }

    fn incoming(topic: &str, payload: Vec<u8>, fields: Option<Vec<u8>>) -> Incoming {
        Incoming {
            topic: topic.into(),
            time_ms: None,
            payload: payload.into(),
            fields: fields.map(Into::into),
        }
    }

    /// Queues an event if there is room now (in the event queue, and the
    /// actions already produced are not piling up). `fields`, when given,
    /// is the JSON object the event's fields are decoded from (the payload
    /// is still what `publish` forwards and `call` passes).
    pub fn try_send(
        &self,
        topic: &str,
        payload: Vec<u8>,
        fields: Option<Vec<u8>>,
    ) -> Result<(), SinkError> {
        if self
            .backlog
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Relaxed) > BUSY_ACTION_BYTES)
        {
            return Err(SinkError::Full);
        }
        self.tx
            .try_send(Self::incoming(topic, payload, fields))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SinkError::Full,
                mpsc::error::TrySendError::Closed(_) => SinkError::Closed,
            })
    }

    /// Queues an event, waiting for room.
    pub async fn send(
        &self,
        topic: &str,
        payload: Vec<u8>,
        fields: Option<Vec<u8>>,
    ) -> Result<(), SinkError> {
        self.tx
            .send(Self::incoming(topic, payload, fields))
            .await
            .map_err(|_| SinkError::Closed)
    }
}

/// The reading end of [`EventSink::channel`].
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::Receiver<Incoming>,
}

/// An event as a source queued it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub topic: String,
    pub payload: Vec<u8>,
    pub fields: Option<Vec<u8>>,
}

impl EventReceiver {
    pub async fn recv(&mut self) -> Option<Queued> {
        self.rx.recv().await.map(queued)
    }

    /// The next event if one is queued now.
    pub fn try_recv(&mut self) -> Option<Queued> {
        self.rx.try_recv().ok().map(queued)
    }
}

fn queued(i: Incoming) -> Queued {
    Queued {
        topic: i.topic.to_string(),
        payload: i.payload.to_vec(),
        fields: i.fields.map(|f| f.to_vec()),
    }
}

/// A running rule engine. Dropping it does not stop the tasks; they end
/// with the tokio runtime.
#[derive(Clone)]
pub struct Runtime {
    current: Arc<ArcSwap<Loaded>>,
    stats: Arc<Stats>,
    mqtt: Option<AsyncClient>,
    subscribed: Arc<Mutex<BTreeSet<String>>>,
    events: mpsc::Sender<Incoming>,
    actions: ActionQueue,
    writer: Arc<arc_swap::ArcSwapOption<Box<dyn WriteHook>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("label", &self.current.load().label)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("event socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Runtime {
    /// Starts the engine's tasks on the current tokio runtime.
    pub fn start(
        options: Options,
        initial: Loaded,
        hook: Option<Arc<dyn CallHook>>,
    ) -> Result<Runtime, RuntimeError> {
        let current = Arc::new(ArcSwap::from_pointee(initial));
        let stats = Arc::new(Stats::default());
        let subscribed = Arc::new(Mutex::new(BTreeSet::new()));
        let capacity = if options.queue == 0 {
            DEFAULT_QUEUE
        } else {
            options.queue
        };
        let (events_tx, events_rx) = mpsc::channel::<Incoming>(capacity);
        let writer = Arc::new(arc_swap::ArcSwapOption::empty());
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Output>();
        let out_tx = ActionQueue {
            tx: out_tx,
            waiting: Arc::default(),
            stats: stats.clone(),
        };

        let mqtt = match &options.mqtt {
            Some(target) => {
                let mut opts =
                    MqttOptions::new(options.client_id.clone(), target.host.clone(), target.port);
                opts.set_keep_alive(Duration::from_secs(30));
                opts.set_max_packet_size(MAX_EVENT_BYTES + 4096, MAX_EVENT_BYTES + 4096);
                opts.set_clean_session(true);
                let (client, mut eventloop) = AsyncClient::new(opts, 1024);
                // Actions are small and latency matters more than packing:
                // without this, Nagle's algorithm and delayed ACKs add ~40 ms.
                let mut net = rumqttc::NetworkOptions::new();
                net.set_tcp_nodelay(true);
                eventloop.set_network_options(net);
                tokio::spawn(mqtt_loop(
                    eventloop,
                    client.clone(),
                    current.clone(),
                    subscribed.clone(),
                    events_tx.clone(),
                ));
                Some(client)
            }
            None => None,
        };
        if let Some(path) = &options.socket {
            let _ = std::fs::remove_file(path);
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| RuntimeError::Socket {
                    path: path.clone(),
                    source,
                })?;
            // Events are accepted from local processes of the same user only
            // (the agent's directory and this mode keep others out).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            tokio::spawn(socket_loop(listener, events_tx.clone(), stats.clone()));
        }
        tokio::spawn(evaluator(
            events_rx,
            current.clone(),
            stats.clone(),
            out_tx.clone(),
        ));
        tokio::spawn(publisher(
            out_rx,
            out_tx.clone(),
            Sinks {
                mqtt: mqtt.clone(),
                alert_topic: options.alert_topic.clone(),
                print: options.print_actions,
                hook,
                writer: writer.clone(),
            },
            stats.clone(),
        ));
        Ok(Runtime {
            current,
            stats,
            mqtt,
            subscribed,
            events: events_tx,
            actions: out_tx,
            writer,
        })
    }

    /// A handle for another event source to feed this engine.
    pub fn sink(&self) -> EventSink {
        EventSink {
            tx: self.events.clone(),
            backlog: Some(self.actions.waiting.clone()),
        }
    }

    /// Raises an alert on behalf of an event source (`source` stands where
    /// a rule's name would): journal, and the alert topic when configured.
    pub fn alert(&self, source: &str, message: String) {
        self.actions.send(Output::Alert {
            rule: source.into(),
            message,
        });
    }

    /// Where `modbus_write` actions go from now on.
    pub fn set_write_hook(&self, hook: Box<dyn WriteHook>) {
        self.writer.store(Some(Arc::new(hook)));
    }

    /// Makes `loaded` the running sets. Events already taken finish on the
    /// old sets; every later event sees the new ones.
    pub fn swap(&self, loaded: Loaded) {
        self.current.store(Arc::new(loaded));
        self.stats.swaps.fetch_add(1, Ordering::Relaxed);
        if let Some(client) = &self.mqtt {
            resubscribe(client, &self.current.load(), &self.subscribed, false);
        }
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Brings the broker's subscriptions in line with the current sets'
/// filters (all of them after a reconnect, when the broker forgot them).
fn resubscribe(
    client: &AsyncClient,
    loaded: &Loaded,
    subscribed: &Mutex<BTreeSet<String>>,
    all: bool,
) {
    let want: BTreeSet<String> = loaded
        .sets
        .iter()
        .flat_map(|(_, c)| c.subscriptions().iter().map(|f| f.as_str().to_owned()))
        .collect();
    let mut have = subscribed.lock().unwrap_or_else(|p| p.into_inner());
    if all {
        have.clear();
    }
    for f in want.difference(&have) {
        if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
            tracing::warn!(filter = %f, error = %e, "rules: subscribing failed");
        }
    }
    for f in have.difference(&want) {
        let _ = client.try_unsubscribe(f.clone());
    }
    *have = want;
}

async fn mqtt_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    current: Arc<ArcSwap<Loaded>>,
    subscribed: Arc<Mutex<BTreeSet<String>>>,
    events: mpsc::Sender<Incoming>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                tracing::info!("rules: connected to the MQTT broker");
                resubscribe(&client, &current.load(), &subscribed, true);
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                let incoming = Incoming {
                    topic: p.topic.as_str().into(),
                    time_ms: None,
                    payload: Arc::from(&p.payload[..]),
                    fields: None,
                };
                if events.send(incoming).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "rules: MQTT connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn socket_loop(
    listener: tokio::net::UnixListener,
    events: mpsc::Sender<Incoming>,
    stats: Arc<Stats>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let events = events.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                // Bounded: a line longer than an event may be is cut off and
                // the connection dropped.
                let mut limited = (&mut reader).take(MAX_EVENT_BYTES as u64 + 1);
                match limited.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.len() > MAX_EVENT_BYTES => {
                        stats.bad_events.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "rules: event socket line over {MAX_EVENT_BYTES} bytes; closing"
                        );
                        return;
                    }
                    Ok(_) => {}
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match Envelope::parse(&line) {
                    Ok(env) => {
                        let incoming = Incoming {
                            topic: env.topic.into(),
                            time_ms: env.time_ms,
                            payload: env.payload.into(),
                            fields: None,
                        };
                        if events.send(incoming).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        stats.bad_events.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "rules: bad line on the event socket");
                    }
                }
            }
        });
    }
}

use tokio::io::AsyncReadExt as _;

async fn evaluator(
    mut events: mpsc::Receiver<Incoming>,
    current: Arc<ArcSwap<Loaded>>,
    stats: Arc<Stats>,
    out: ActionQueue,
) {
    let mut seen: Arc<Loaded> = current.load_full();
    let mut states: Vec<State> = seen.sets.iter().map(|(_, c)| c.new_state()).collect();
    let mut event = Event::default();
    let mut actions = Vec::new();
    while let Some(incoming) = events.recv().await {
        let loaded = current.load_full();
        if !Arc::ptr_eq(&loaded, &seen) {
            states = hand_over(&seen, std::mem::take(&mut states), &loaded);
            seen = loaded;
        }
        stats.events.fetch_add(1, Ordering::Relaxed);
        event.topic = incoming.topic;
        event.time_ms = incoming.time_ms.unwrap_or_else(now_ms);
        event.payload = incoming.payload;
        let fields = incoming.fields.unwrap_or_else(|| event.payload.clone());
        for ((name, set), state) in seen.sets.iter().zip(states.iter_mut()) {
            if let Err(e) = set.decode_into(&fields, &mut event) {
                // Evaluated anyway, with every field missing: only rules
                // over the topic can fire.
                stats.bad_events.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(ruleset = %name, topic = %event.topic, error = %e, "rules: payload is not a JSON object");
            }
            let fired = set.eval(state, &event, &mut actions);
            stats.fired.fetch_add(fired as u64, Ordering::Relaxed);
        }
        for a in actions.drain(..) {
            out.send(a);
        }
    }
}

/// The states for `new`'s sets: a set with the same name as one in `old`
/// takes over that set's state.
fn hand_over(old: &Loaded, states: Vec<State>, new: &Loaded) -> Vec<State> {
    let mut by_name: HashMap<&str, (&Compiled, State)> = old
        .sets
        .iter()
        .zip(states)
        .map(|((n, c), s)| (&**n, (&**c, s)))
        .collect();
    new.sets
        .iter()
        .map(|(name, c)| match by_name.remove(&**name) {
            Some((old_set, state)) => c.migrate_state(old_set, state),
            None => c.new_state(),
        })
        .collect()
}

/// Where the publisher task sends actions.
struct Sinks {
    mqtt: Option<AsyncClient>,
    alert_topic: Option<String>,
    print: bool,
    hook: Option<Arc<dyn CallHook>>,
    writer: Arc<arc_swap::ArcSwapOption<Box<dyn WriteHook>>>,
}

async fn publisher(
    mut out: mpsc::UnboundedReceiver<Output>,
    again: ActionQueue,
    sinks: Sinks,
    stats: Arc<Stats>,
) {
    let Sinks {
        mqtt,
        alert_topic,
        print,
        hook,
        writer,
    } = sinks;
    while let Some(action) = out.recv().await {
        again.taken(&action);
        stats.actions.fetch_add(1, Ordering::Relaxed);
        if print {
            println!("{}", action.to_json());
        }
        let failed = match &action {
            Output::Alert { rule, message } => {
                tracing::warn!(target: "ferry::rules", rule = %rule, "alert: {message}");
                match (&mqtt, &alert_topic) {
                    (Some(c), Some(t)) => c
                        .publish(
                            t.clone(),
                            QoS::AtLeastOnce,
                            false,
                            action.to_json().to_string(),
                        )
                        .await
                        .err()
                        .map(|e| e.to_string()),
                    _ => None,
                }
            }
            Output::Publish { topic, payload, .. } => match &mqtt {
                Some(c) => c
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .err()
                    .map(|e| e.to_string()),
                None => Some("no MQTT broker is configured ([rules] mqtt)".to_owned()),
            },
            Output::Call {
                rule,
                module,
                export,
                payload,
            } => match &hook {
                Some(h) => {
                    // What the module emits is published like any other
                    // action of the rule.
                    let (again, stats, rule, what) = (
                        again.clone(),
                        stats.clone(),
                        rule.clone(),
                        format!("{module}.{export}"),
                    );
                    h.call(
                        module,
                        export,
                        payload.clone(),
                        Box::new(move |result| match result {
                            Ok(messages) => {
                                for (topic, payload) in messages {
                                    again.send(Output::Publish {
                                        rule: rule.clone(),
                                        topic,
                                        payload,
                                    });
                                }
                            }
                            Err(error) => {
                                stats.action_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(rule = %rule, call = %what, error = %error, "rules: action failed");
                            }
                        }),
                    );
                    None
                }
                None => Some(format!("no WASM module host for {module}.{export}")),
            },
            Output::ModbusWrite {
                rule,
                device,
                register,
                value,
            } => match (value.to_register(), writer.load_full()) {
                (Err(e), _) => Some(format!("modbus_write({device}, {register}): {e}")),
                (Ok(_), None) => Some(format!(
                    "modbus_write({device}, {register}): no Modbus devices are configured"
                )),
                (Ok(word), Some(w)) => {
                    let (stats, rule, what) = (
                        stats.clone(),
                        rule.clone(),
                        format!("modbus_write({device}, {register}, {word})"),
                    );
                    w.write(
                        device,
                        *register,
                        word,
                        Box::new(move |result| {
                            if let Err(error) = result {
                                stats.action_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(rule = %rule, action = %what, error = %error, "rules: action failed");
                            }
                        }),
                    );
                    None
                }
            },
        };
        if let Some(error) = failed {
            stats.action_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(rule = %action.rule(), error = %error, "rules: action failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_broker_url_is_refused_without_being_echoed() {
        let e = MqttTarget::parse("mqtt://admin:hunter2@broker:1883")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("admin:***@broker"),
            "{e}"
        );
    }

    fn publish(bytes: usize) -> Output {
        Output::Publish {
            rule: "r".into(),
            topic: "t".into(),
            payload: vec![0; bytes],
        }
    }

    #[test]
    fn waiting_actions_are_bounded_in_bytes_and_sources_are_told_busy() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let q = ActionQueue {
            tx,
            waiting: Arc::default(),
            stats: stats.clone(),
        };
        let (events, _events_rx) = mpsc::channel(8);
        let sink = EventSink {
            tx: events,
            backlog: Some(q.waiting.clone()),
        };
        assert_eq!(sink.try_send("a", vec![], None), Ok(()));
        // Nobody publishes: 1 MiB actions pile up to the limit, then drop.
        for _ in 0..100 {
            q.send(publish(1 << 20));
        }
        let waiting = q.waiting.load(Ordering::Relaxed);
        assert!(waiting <= MAX_ACTION_BYTES, "{waiting}");
        assert!(stats.dropped_actions.load(Ordering::Relaxed) >= 36);
        assert_eq!(sink.try_send("a", vec![], None), Err(SinkError::Full));
        // The publisher catches up: room again.
        while let Ok(a) = rx.try_recv() {
            q.taken(&a);
        }
        assert_eq!(q.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(sink.try_send("a", vec![], None), Ok(()));
    }
}
