//! Modbus TCP polling: each configured device gets one task that reads its
//! register blocks every `period` and queues an event per read, and
//! performs the register writes rules ask for, one at a time on the same
//! connection (Modbus TCP servers often serve one connection at a time).
//!
//! Every request has the device's timeout. A failed read drops the
//! connection (its transaction state is unknown) and the task reconnects
//! with backoff (100 ms doubling to 5 s). After `retries` failures in a row
//! the device counts as down and one alert is raised; the first good read
//! after that counts it up again. Nothing here needs the agent restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_rules::runtime::{EventSink, WriteDone};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_modbus::Request;
pub use tokio_modbus::Response;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{Slave, client::tcp};

use crate::config::{BlockPlan, DevicePlan, FieldSpec, FieldType, PayloadForm, Table, WordOrder};

/// Writes waiting for a device at most; more are refused at once.
pub const MAX_PENDING_WRITES: usize = 64;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Raises an alert on behalf of a source: (source, message).
pub type AlertFn = Arc<dyn Fn(&str, String) + Send + Sync>;

/// Counters of one device, for metrics.
#[derive(Debug, Default)]
pub struct DeviceStats {
    pub reads: AtomicU64,
    pub failures: AtomicU64,
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    /// Answers that were not what the request asked for (another function,
    /// too few items, a wrong echo): each also counts as a failure.
    pub bad_answers: AtomicU64,
    /// Times the device went down (each raised one alert).
    pub outages: AtomicU64,
    pub up: AtomicBool,
}

pub(crate) struct WriteRequest {
    pub register: u16,
    pub value: u16,
    pub done: WriteDone,
}

/// A polled device. Dropping it stops its task.
pub struct Device {
    pub plan: DevicePlan,
    pub stats: Arc<DeviceStats>,
    pub(crate) writes: mpsc::Sender<WriteRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.plan.name)
            .finish()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Device {
    /// Starts polling on the current tokio runtime.
    pub fn start(plan: DevicePlan, sink: EventSink, alert: AlertFn) -> Device {
        let stats = Arc::new(DeviceStats::default());
        let (writes, rx) = mpsc::channel(MAX_PENDING_WRITES);
        let task = tokio::spawn(
            Poller {
                plan: Arc::new(plan.clone()),
                sink,
                alert,
                stats: stats.clone(),
                failures: 0,
                down: false,
            }
            .run(rx),
        );
        Device {
            plan,
            stats,
            writes,
            task,
        }
    }
}

struct Poller {
    /// Shared, so a poll can walk the blocks while it changes the poller.
    plan: Arc<DevicePlan>,
    sink: EventSink,
    alert: AlertFn,
    stats: Arc<DeviceStats>,
    failures: u32,
    down: bool,
}

/// Why a request failed, and whether the connection survives it.
struct Failure {
    message: String,
    reconnect: bool,
}

impl Poller {
    async fn run(mut self, mut writes: mpsc::Receiver<WriteRequest>) {
        let mut due: Vec<Instant> = vec![Instant::now(); self.plan.blocks.len()];
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected = timeout(
                self.plan.timeout,
                tcp::connect_slave(self.plan.address, Slave(self.plan.unit)),
            )
            .await;
            let failure = match connected {
                Ok(Ok(ctx)) => Ok(ctx),
                Ok(Err(e)) => Err(format!("connecting: {e}")),
                Err(_) => Err("connecting: timed out".to_owned()),
            };
            let mut ctx = match failure {
                Ok(ctx) => ctx,
                Err(message) => {
                    self.failed(&message);
                    self.wait(backoff, &mut writes).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            tracing::debug!(device = %self.plan.name, address = %self.plan.address, "modbus: connected");
            loop {
                let next = due.iter().min().copied();
                let failure = tokio::select! {
                    () = sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))) => {
                        self.poll_due(&mut ctx, &mut due).await
                    }
                    w = writes.recv() => match w {
                        Some(w) => self.write(&mut ctx, w).await,
                        None => return,
                    },
                };
                if let Some(f) = failure {
                    self.failed(&f.message);
                    if f.reconnect {
                        break;
                    }
                } else {
                    backoff = Duration::from_millis(100);
                }
            }
            let _ = timeout(Duration::from_millis(100), ctx.disconnect()).await;
            self.wait(backoff, &mut writes).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Sleeps `d`, refusing the writes that arrive meanwhile.
    async fn wait(&self, d: Duration, writes: &mut mpsc::Receiver<WriteRequest>) {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                () = sleep_until(until) => return,
                w = writes.recv() => match w {
                    Some(w) => {
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        (w.done)(Err(format!("device {} is not connected", self.plan.name)));
                    }
                    None => { sleep_until(until).await; return; }
                },
            }
        }
    }

    fn failed(&mut self, message: &str) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.failures = self.failures.saturating_add(1);
        tracing::debug!(device = %self.plan.name, error = %message, "modbus: request failed");
        if self.failures >= self.plan.retries && !self.down {
            self.down = true;
            self.stats.up.store(false, Ordering::Relaxed);
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            let text = format!(
                "modbus device {} at {} is not answering ({} failures in a row; last: {message})",
                self.plan.name, self.plan.address, self.failures
            );
            tracing::warn!(device = %self.plan.name, "{text}");
            (self.alert)(&format!("modbus:{}", self.plan.name), text);
        }
    }

    fn answered(&mut self) {
        self.failures = 0;
        self.stats.up.store(true, Ordering::Relaxed);
        if std::mem::replace(&mut self.down, false) {
            tracing::info!(device = %self.plan.name, "modbus: device answers again");
        }
    }

    async fn poll_due(&mut self, ctx: &mut Context, due: &mut [Instant]) -> Option<Failure> {
        let now = Instant::now();
        let plan = self.plan.clone();
        for (i, block) in plan.blocks.iter().enumerate() {
            if due[i] > now {
                continue;
            }
            // A missed period is skipped, not caught up in a burst.
            due[i] += block.period;
            if due[i] <= now {
                due[i] = now + block.period;
            }
            let read = self.read(ctx, block).await;
            let data = match read {
                Ok(d) => d,
                Err(f) => return Some(f),
            };
            self.stats.reads.fetch_add(1, Ordering::Relaxed);
            self.answered();
            let (payload, fields) = event(&self.plan, block, &data);
            if self.sink.send(&block.topic, payload, fields).await.is_err() {
                return None;
            }
        }
        None
    }

    async fn read(&self, ctx: &mut Context, block: &BlockPlan) -> Result<Data, Failure> {
        let t = self.plan.timeout;
        let (start, count) = (block.start, block.count);
        let request = match block.table {
            Table::Holding => Request::ReadHoldingRegisters(start, count),
            Table::Input => Request::ReadInputRegisters(start, count),
            Table::Coils => Request::ReadCoils(start, count),
            Table::Discrete => Request::ReadDiscreteInputs(start, count),
        };
        // Through `call`, checked here: the typed readers only assert the
        // answer's length in debug builds (a wrong answer would end the
        // poll task) and pass a short one on in release builds.
        let result = timeout(t, ctx.call(request)).await;
        let what = format!("reading {} ({:?} {start}+{count})", block.name, block.table);
        match result {
            Err(_) => Err(Failure {
                message: format!("{what}: timed out after {} ms", t.as_millis()),
                reconnect: true,
            }),
            Ok(Err(e)) => Err(Failure {
                message: format!("{what}: {e}"),
                reconnect: true,
            }),
            Ok(Ok(Err(exception))) => Err(Failure {
                message: format!("{what}: the device answered {exception}"),
                reconnect: false,
            }),
            Ok(Ok(Ok(response))) => read_answer(block.table, count, response).map_err(|why| {
                self.stats.bad_answers.fetch_add(1, Ordering::Relaxed);
                Failure {
                    message: format!("{what}: {why}"),
                    reconnect: true,
                }
            }),
        }
    }

    async fn write(&mut self, ctx: &mut Context, w: WriteRequest) -> Option<Failure> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let what = format!(
            "writing {} to register {} of {}",
            w.value, w.register, self.plan.name
        );
        let (result, failure) = match timeout(
            self.plan.timeout,
            ctx.call(Request::WriteSingleRegister(w.register, w.value)),
        )
        .await
        {
            Ok(Ok(Ok(response))) => match write_echo(w.register, w.value, &response) {
                Ok(()) => (Ok(()), None),
                Err(why) => {
                    self.stats.bad_answers.fetch_add(1, Ordering::Relaxed);
                    let m = format!("{what}: {why}");
                    (
                        Err(m.clone()),
                        Some(Failure {
                            message: m,
                            reconnect: true,
                        }),
                    )
                }
            },
            Ok(Ok(Err(exception))) => (
                Err(format!("{what}: the device answered {exception}")),
                None,
            ),
            Ok(Err(e)) => {
                let m = format!("{what}: {e}");
                (
                    Err(m.clone()),
                    Some(Failure {
                        message: m,
                        reconnect: true,
                    }),
                )
            }
            Err(_) => {
                let m = format!("{what}: timed out");
                (
                    Err(m.clone()),
                    Some(Failure {
                        message: m,
                        reconnect: true,
                    }),
                )
            }
        };
        if result.is_err() {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::info!(device = %self.plan.name, register = w.register, value = w.value, "modbus: register written");
        }
        (w.done)(result);
        failure
    }
}

/// The data of a device's `response` to reading `count` items of `table`,
/// checked: the function the request asked for, and at least `count` coils
/// or inputs (their answer is padded to whole bytes) or exactly `count`
/// registers.
pub fn read_answer(table: Table, count: u16, response: Response) -> Result<Data, String> {
    let count = usize::from(count);
    match (table, response) {
        (Table::Coils, Response::ReadCoils(mut b))
        | (Table::Discrete, Response::ReadDiscreteInputs(mut b)) => {
            if b.len() < count {
                return Err(format!("{} of {count} bits came back", b.len()));
            }
            b.truncate(count);
            Ok(Data::Bits(b))
        }
        (Table::Holding, Response::ReadHoldingRegisters(w))
        | (Table::Input, Response::ReadInputRegisters(w)) => {
            if w.len() != count {
                return Err(format!("{} of {count} registers came back", w.len()));
            }
            Ok(Data::Words(w))
        }
        (_, other) => Err(format!(
            "the device answered another function ({:?})",
            other.function_code()
        )),
    }
}

/// A response PDU as tokio-modbus decodes it off the wire (`None`: it does
/// not decode).
pub fn decode_response(pdu: &[u8]) -> Option<Response> {
    Response::try_from(tokio_modbus::bytes::Bytes::copy_from_slice(pdu)).ok()
}

/// Checks a device's `response` to writing `value` to `register`: a
/// single-register write is answered by its echo.
pub fn write_echo(register: u16, value: u16, response: &Response) -> Result<(), String> {
    match response {
        Response::WriteSingleRegister(r, v) if (*r, *v) == (register, value) => Ok(()),
        Response::WriteSingleRegister(r, v) => Err(format!(
            "the device echoed {v} to register {r}, not {value} to {register}: the write is not confirmed"
        )),
        other => Err(format!(
            "the device answered another function ({:?})",
            other.function_code()
        )),
    }
}

/// What one read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// The event of one read: its payload and, for `frame` payloads, the JSON
/// the fields are decoded from.
pub fn event(device: &DevicePlan, block: &BlockPlan, data: &Data) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut obj = Map::new();
    obj.insert("device".into(), json!(device.name));
    obj.insert("block".into(), json!(block.name));
    obj.insert("unit".into(), json!(device.unit));
    obj.insert("start".into(), json!(block.start));
    match data {
        Data::Words(words) => {
            obj.insert("registers".into(), json!(words));
            for f in &block.fields {
                obj.insert(f.name.clone(), decode(f, words));
            }
        }
        Data::Bits(bits) => {
            obj.insert("bits".into(), json!(bits));
        }
    }
    let json = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
    match block.payload {
        PayloadForm::Json => (json, None),
        PayloadForm::Frame => (frame(device.unit, block.table.function(), data), Some(json)),
    }
}

/// One field's value from a block's registers (the offsets were checked
/// against the block's size when the configuration was planned).
pub fn decode(f: &FieldSpec, words: &[u16]) -> Value {
    let at = usize::from(f.offset);
    let word = |i: usize| words.get(at + i).copied().unwrap_or(0);
    let pair = || {
        let (hi, lo) = match f.order {
            WordOrder::Big => (word(0), word(1)),
            WordOrder::Little => (word(1), word(0)),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    let raw: f64 = match f.ty {
        FieldType::U16 => f64::from(word(0)),
        FieldType::I16 => f64::from(word(0) as i16),
        FieldType::U32 => f64::from(pair()),
        FieldType::I32 => f64::from(pair() as i32),
        FieldType::F32 => f64::from(f32::from_bits(pair())),
    };
    let v = raw * f.scale;
    // Rounded to what an f32 or a scaled integer can mean, so 215 * 0.1
    // is 21.5 and not 21.500000000000004.
    let v = if f.ty == FieldType::F32 {
        v
    } else {
        (v * 1e9).round() / 1e9
    };
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// The read response as it travels in a Modbus PDU, with the unit id in
/// front: unit, function, byte count, data (registers big-endian, bits
/// packed from the lowest).
pub fn frame(unit: u8, function: u8, data: &Data) -> Vec<u8> {
    let mut out = vec![unit, function, 0];
    match data {
        Data::Words(w) => {
            for x in w {
                out.extend_from_slice(&x.to_be_bytes());
            }
        }
        Data::Bits(b) => {
            for chunk in b.chunks(8) {
                out.push(
                    chunk
                        .iter()
                        .enumerate()
                        .fold(0u8, |acc, (i, bit)| acc | (u8::from(*bit) << i)),
                );
            }
        }
    }
    out[2] = (out.len() - 3).min(255) as u8;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Modbus TCP device that answers wrongly: 8 coils when asked for 16,
    /// and a write's echo with another value.
    async fn lying_device() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut mbap = [0u8; 7];
                    while conn.read_exact(&mut mbap).await.is_ok() {
                        let len = usize::from(u16::from_be_bytes([mbap[4], mbap[5]]));
                        let mut pdu = vec![0u8; len.saturating_sub(1)];
                        if conn.read_exact(&mut pdu).await.is_err() {
                            return;
                        }
                        let answer = match pdu[0] {
                            0x01 => vec![0x01, 0x01, 0xaa],
                            0x06 => vec![0x06, pdu[1], pdu[2], pdu[3], pdu[4] ^ 1],
                            fc => vec![fc | 0x80, 0x01],
                        };
                        let mut frame = mbap[..4].to_vec();
                        frame.extend_from_slice(&(answer.len() as u16 + 1).to_be_bytes());
                        frame.push(mbap[6]);
                        frame.extend_from_slice(&answer);
                        if conn.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_answers_and_wrong_echoes_are_failures_not_events() {
        let address = lying_device().await;
        let plan = DevicePlan {
            name: "liar".into(),
            address,
            unit: 1,
            timeout: Duration::from_millis(500),
            retries: 2,
            writable: [7].into(),
            blocks: vec![BlockPlan {
                name: "coils".into(),
                table: Table::Coils,
                start: 0,
                count: 16,
                period: Duration::from_millis(50),
                topic: "plant/liar".into(),
                payload: PayloadForm::Json,
                fields: Vec::new(),
            }],
        };
        let (sink, mut events) = EventSink::channel(16);
        let alerts = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = alerts.clone();
        let alert: AlertFn = Arc::new(move |_, m| seen.lock().unwrap().push(m));
        let writer_plan = DevicePlan {
            name: "liar-w".into(),
            blocks: Vec::new(),
            ..plan.clone()
        };
        let device = Device::start(plan, sink.clone(), alert.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        while alerts.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no alert");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = alerts.lock().unwrap()[0].clone();
        assert!(first.contains("8 of 16 bits came back"), "{first}");
        assert!(device.stats.bad_answers.load(Ordering::Relaxed) >= 2);
        assert_eq!(device.stats.reads.load(Ordering::Relaxed), 0);
        assert!(
            events.try_recv().is_none(),
            "a short answer became an event"
        );
        // A device polled for nothing: connected, waiting for writes.
        let writer = Device::start(writer_plan, sink, alert);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        writer
            .writes
            .send(WriteRequest {
                register: 7,
                value: 100,
                done: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            })
            .await
            .unwrap();
        let e = rx.await.unwrap().unwrap_err();
        assert!(e.contains("echoed 101 to register 7, not 100"), "{e}");
        assert_eq!(writer.stats.bad_answers.load(Ordering::Relaxed), 1);
        // The poll tasks live on.
        assert!(!device.task.is_finished() && !writer.task.is_finished());
    }

    #[test]
    fn answers_of_another_function_are_refused() {
        assert!(read_answer(Table::Holding, 2, Response::ReadInputRegisters(vec![1, 2])).is_err());
        assert!(
            read_answer(
                Table::Holding,
                2,
                Response::ReadHoldingRegisters(vec![1, 2, 3])
            )
            .is_err()
        );
        assert_eq!(
            read_answer(Table::Coils, 3, Response::ReadCoils(vec![true; 8])),
            Ok(Data::Bits(vec![true; 3]))
        );
        assert!(write_echo(1, 2, &Response::WriteSingleCoil(1, true)).is_err());
        assert_eq!(
            write_echo(1, 2, &Response::WriteSingleRegister(1, 2)),
            Ok(())
        );
    }

    fn field(ty: FieldType, order: WordOrder, offset: u16, scale: f64) -> FieldSpec {
        FieldSpec {
            name: "x".into(),
            offset,
            ty,
            order,
            scale,
        }
    }

    #[test]
    fn fields_decode_in_either_word_order() {
        let words = [0x0001, 0x0002, 0xfff6, 0x4148, 0x0000];
        let d = |ty, order, offset, scale| decode(&field(ty, order, offset, scale), &words);
        assert_eq!(d(FieldType::U16, WordOrder::Big, 1, 1.0), json!(2.0));
        assert_eq!(d(FieldType::I16, WordOrder::Big, 2, 0.1), json!(-1.0));
        assert_eq!(d(FieldType::U32, WordOrder::Big, 0, 1.0), json!(65538.0));
        assert_eq!(
            d(FieldType::U32, WordOrder::Little, 0, 1.0),
            json!(131073.0)
        );
        assert_eq!(d(FieldType::I32, WordOrder::Big, 1, 1.0), json!(196598.0));
        assert_eq!(d(FieldType::F32, WordOrder::Big, 3, 1.0), json!(12.5));
        assert_eq!(
            decode(
                &field(FieldType::F32, WordOrder::Little, 0, 1.0),
                &[0x0000, 0x4148]
            ),
            json!(12.5)
        );
        assert_eq!(d(FieldType::I16, WordOrder::Big, 2, 1.0), json!(-10.0));
        assert_eq!(
            decode(&field(FieldType::I16, WordOrder::Big, 0, 0.1), &[215]),
            json!(21.5)
        );
    }

    #[test]
    fn frames_look_like_read_responses() {
        assert_eq!(
            frame(7, 3, &Data::Words(vec![0x0102, 0x0304])),
            vec![7, 3, 4, 1, 2, 3, 4]
        );
        let bits = Data::Bits(vec![
            true, false, true, false, false, false, false, false, true,
        ]);
        assert_eq!(frame(1, 1, &bits), vec![1, 1, 2, 0b101, 1]);
    }
}
