//! A CoAP server (RFC 7252 over UDP) whose POST and PUT requests become
//! rule engine events: topic `coap/<uri-path>`, the payload as it came.
//!
//! One task reads datagrams and answers each before the next, so the work
//! a peer can cause is bounded by what it sends; all state is bounded too:
//!
//! - answers to recent message ids, for duplicates (§4.5): at most
//!   [`MAX_EXCHANGES`], each kept [`EXCHANGE_LIFETIME`];
//! - block-wise uploads in progress (RFC 7959 Block1): at most
//!   [`MAX_UPLOADS`] of at most `max_payload` bytes and [`UPLOAD_BYTES`]
//!   together, dropped after [`UPLOAD_LIFETIME`] without a block;
//! - the event queue is the rule engine's bounded queue: when it is full
//!   the request gets 5.03 with Max-Age 1, it is never queued without
//!   bound.
//!
//! There is no DTLS: the server belongs on loopback or an interface that
//! only trusted devices reach (docs/ingest.md).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coap_lite::block_handler::BlockValue;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use ferry_rules::runtime::{EventSink, SinkError};
use tokio::net::UdpSocket;

use crate::config::CoapPlan;

/// Answers kept for duplicate detection.
pub const MAX_EXCHANGES: usize = 4096;
/// RFC 7252 §4.8.2 EXCHANGE_LIFETIME.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Block-wise uploads assembled at once, and the bytes they may hold
/// together: at most `UPLOAD_BYTES / max_payload` uploads (at least one).
pub const MAX_UPLOADS: usize = 64;
pub const UPLOAD_BYTES: usize = 8 << 20;
/// An upload with no new block for this long is dropped.
pub const UPLOAD_LIFETIME: Duration = Duration::from_secs(60);
/// Uri-Path segments at most, and bytes per segment.
pub const MAX_SEGMENTS: usize = 8;
pub const MAX_SEGMENT_BYTES: usize = 64;

/// Content-Format numbers (RFC 7252 §12.3, RFC 8949).
const TEXT: u64 = 0;
const OCTETS: u64 = 42;
const JSON: u64 = 50;
const CBOR: u64 = 60;

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct CoapStats {
    pub datagrams: AtomicU64,
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    /// Datagrams that are not CoAP messages.
    pub malformed: AtomicU64,
    /// Requests answered 4.xx.
    pub rejected: AtomicU64,
    /// Requests answered 5.03 because the event queue was full.
    pub overloaded: AtomicU64,
    /// 2.31 Continue answers to Block1 uploads.
    pub blocks: AtomicU64,
}

/// An upload being assembled from Block1 blocks.
#[derive(Debug)]
struct Upload {
    body: Vec<u8>,
    last: Instant,
}

/// The protocol logic, without a socket: a datagram in, maybe one out.
/// Time is passed in.
#[derive(Debug)]
pub struct Handler {
    max_payload: usize,
    sink: EventSink,
    stats: Arc<CoapStats>,
    answers: HashMap<(SocketAddr, u16), Option<Vec<u8>>>,
    answered: VecDeque<(Instant, (SocketAddr, u16))>,
    uploads: HashMap<(SocketAddr, String), Upload>,
    next_id: u16,
}

/// How a request ends: the response code, options to add, a diagnostic
/// payload (RFC 7252 §5.5.2).
struct Answer {
    code: ResponseType,
    block1: Option<BlockValue>,
    size1: Option<usize>,
    max_age: Option<u32>,
    diagnostic: String,
}

impl Answer {
    fn new(code: ResponseType) -> Answer {
        Answer {
            code,
            block1: None,
            size1: None,
            max_age: None,
            diagnostic: String::new(),
        }
    }

    fn error(code: ResponseType, diagnostic: impl Into<String>) -> Answer {
        let mut d: String = diagnostic.into();
        d.truncate(d.floor_char_boundary(128));
        Answer {
            diagnostic: d,
            ..Answer::new(code)
        }
    }
}

fn uint(bytes: &[u8]) -> Option<u64> {
    (bytes.len() <= 8).then(|| bytes.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
}

impl Handler {
    pub fn new(max_payload: usize, sink: EventSink, stats: Arc<CoapStats>) -> Handler {
        Handler {
            max_payload,
            sink,
            stats,
            answers: HashMap::new(),
            answered: VecDeque::new(),
            uploads: HashMap::new(),
            next_id: 1,
        }
    }

    /// Handles one datagram from `peer`; returns the datagram to send back.
    pub fn handle(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.stats.datagrams.fetch_add(1, Ordering::Relaxed);
        self.expire(now);
        let packet = match Packet::from_bytes(datagram) {
            Ok(p) if p.header.get_version() == 1 => p,
            _ => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                // §4.2: a Confirmable message that cannot be processed is
                // rejected with a Reset; anything else is dropped.
                return match datagram {
                    [first, _, id0, id1, ..] if first >> 6 == 1 && (first >> 4) & 3 == 0 => {
                        Some(reset(u16::from_be_bytes([*id0, *id1])))
                    }
                    _ => None,
                };
            }
        };
        let kind = packet.header.get_type();
        let id = packet.header.message_id;
        match (kind, packet.header.code) {
            // Answers to messages this server never sends, and Resets.
            (MessageType::Acknowledgement | MessageType::Reset, _) => return None,
            // A CoAP ping (§4.3), or an empty message that should not be.
            (MessageType::Confirmable, MessageClass::Empty) => return Some(reset(id)),
            (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Request(_)) => {}
            (MessageType::Confirmable, _) => return Some(reset(id)),
            _ => return None,
        }
        // §4.5: a duplicate gets the same answer and is not processed again.
        if let Some(answer) = self.answers.get(&(peer, id)) {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return answer.clone();
        }
        let answer = self.request(peer, &packet, now);
        match answer.code {
            ResponseType::Changed => {}
            ResponseType::Continue => {
                self.stats.blocks.fetch_add(1, Ordering::Relaxed);
            }
            ResponseType::ServiceUnavailable => {
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        let reply = self.reply(&packet, answer, datagram.len());
        self.remember(peer, id, reply.clone(), now);
        reply
    }

    fn request(&mut self, peer: SocketAddr, packet: &Packet, now: Instant) -> Answer {
        let MessageClass::Request(method) = packet.header.code else {
            return Answer::error(ResponseType::BadRequest, "not a request");
        };
        if !matches!(method, RequestType::Post | RequestType::Put) {
            return Answer::error(
                ResponseType::MethodNotAllowed,
                "only POST and PUT are accepted",
            );
        }
        let mut segments = Vec::new();
        let mut format = None;
        let mut block1 = None;
        let mut size1 = None;
        for (&number, values) in packet.options() {
            match number {
                // Uri-Path
                11 => {
                    for v in values {
                        let Ok(s) = std::str::from_utf8(v) else {
                            return Answer::error(
                                ResponseType::BadRequest,
                                "Uri-Path is not UTF-8",
                            );
                        };
                        segments.push(s.to_owned());
                    }
                }
                12 => format = values.front().and_then(|v| uint(v)),
                27 => {
                    block1 = match packet.get_first_option_as::<BlockValue>(CoapOption::Block1) {
                        Some(Ok(b)) => Some(b),
                        _ => return Answer::error(ResponseType::BadOption, "bad Block1 option"),
                    }
                }
                60 => size1 = values.front().and_then(|v| uint(v)),
                // Understood and not needed: Uri-Host, Uri-Port, Block2
                // (a size hint for the response, which has no body).
                3 | 7 | 23 => {}
                // §5.4.1: an unrecognised critical (odd) option.
                n if n % 2 == 1 => {
                    return Answer::error(
                        ResponseType::BadOption,
                        format!("option {n} is not supported"),
                    );
                }
                _ => {}
            }
        }
        let topic = match topic(&segments) {
            Ok(t) => t,
            Err(why) => return Answer::error(ResponseType::BadRequest, why),
        };
        let format = match format {
            None => None,
            Some(f @ (TEXT | OCTETS | JSON | CBOR)) => Some(f),
            Some(f) => {
                return Answer::error(
                    ResponseType::UnsupportedContentFormat,
                    format!("Content-Format {f} (accepted: 0 text, 42 octets, 50 JSON, 60 CBOR)"),
                );
            }
        };
        let too_large = |max: usize| Answer {
            size1: Some(max),
            ..Answer::error(
                ResponseType::RequestEntityTooLarge,
                format!("the payload limit is {max} bytes"),
            )
        };
        if size1.is_some_and(|s| s > self.max_payload as u64) {
            self.uploads.remove(&(peer, topic.clone()));
            return too_large(self.max_payload);
        }
        let (body, done_block) = match block1 {
            None => {
                if packet.payload.len() > self.max_payload {
                    return too_large(self.max_payload);
                }
                (packet.payload.clone(), None)
            }
            Some(block) => {
                let key = (peer, topic.clone());
                if block.size_exponent > 6 {
                    self.uploads.remove(&key);
                    return Answer::error(
                        ResponseType::BadRequest,
                        "BERT blocks (SZX 7) are not supported",
                    );
                }
                let size = block.size();
                if block.num == 0 {
                    let most = (UPLOAD_BYTES / self.max_payload).clamp(1, MAX_UPLOADS);
                    if self.uploads.len() >= most && !self.uploads.contains_key(&key) {
                        self.evict_oldest_upload();
                    }
                    self.uploads.insert(
                        key.clone(),
                        Upload {
                            body: Vec::new(),
                            last: now,
                        },
                    );
                }
                let Some(upload) = self.uploads.get_mut(&key) else {
                    return Answer::error(
                        ResponseType::RequestEntityIncomplete,
                        "no upload in progress for this block",
                    );
                };
                let offset = usize::from(block.num) * size;
                // Blocks arrive in order (the server answers each before the
                // client sends the next); every block but the last is full.
                if offset != upload.body.len() || (block.more && packet.payload.len() != size) {
                    self.uploads.remove(&key);
                    return Answer::error(
                        ResponseType::RequestEntityIncomplete,
                        format!("block {} is out of order or short", block.num),
                    );
                }
                if upload.body.len() + packet.payload.len() > self.max_payload {
                    self.uploads.remove(&key);
                    return too_large(self.max_payload);
                }
                upload.body.extend_from_slice(&packet.payload);
                upload.last = now;
                if block.more {
                    return Answer {
                        block1: Some(block),
                        ..Answer::new(ResponseType::Continue)
                    };
                }
                let body = self
                    .uploads
                    .remove(&key)
                    .map(|u| u.body)
                    .unwrap_or_default();
                (body, Some(block))
            }
        };
        let fields = match format {
            Some(JSON) => {
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                    return Answer::error(
                        ResponseType::BadRequest,
                        format!("payload is not JSON: {e}"),
                    );
                }
                None
            }
            Some(CBOR) => match crate::cbor::to_json(&body) {
                Ok(json) => Some(json),
                Err(e) => return Answer::error(ResponseType::BadRequest, e.to_string()),
            },
            _ => None,
        };
        match self.sink.try_send(&topic, body, fields) {
            Ok(()) => {
                self.stats.events.fetch_add(1, Ordering::Relaxed);
                Answer {
                    block1: done_block,
                    ..Answer::new(ResponseType::Changed)
                }
            }
            Err(SinkError::Full | SinkError::Closed) => Answer {
                max_age: Some(1),
                ..Answer::error(ResponseType::ServiceUnavailable, "event queue full")
            },
        }
    }

    /// The answer to `request` (`len` bytes), never larger than the request:
    /// the peer is not authenticated and its address may be spoofed, so
    /// ferry must not amplify. A non-confirmable request's answer carries
    /// no diagnostic text; a confirmable one's is cut to fit. An answer
    /// that does not fit even so is not sent.
    fn reply(&mut self, request: &Packet, mut answer: Answer, len: usize) -> Option<Vec<u8>> {
        if request.header.get_type() != MessageType::Confirmable {
            answer.diagnostic.clear();
        }
        let mut p = Packet::new();
        match request.header.get_type() {
            MessageType::Confirmable => {
                p.header.set_type(MessageType::Acknowledgement);
                p.header.message_id = request.header.message_id;
            }
            _ => {
                p.header.set_type(MessageType::NonConfirmable);
                p.header.message_id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
            }
        }
        p.header.code = MessageClass::Response(answer.code);
        p.set_token(request.get_token().to_vec());
        if let Some(age) = answer.max_age {
            p.add_option(CoapOption::MaxAge, minimal(u64::from(age)));
        }
        if let Some(b) = answer.block1 {
            p.add_option_as(CoapOption::Block1, b);
        }
        if let Some(s) = answer.size1 {
            p.add_option(CoapOption::Size1, minimal(s as u64));
        }
        let bare = p.to_bytes().ok()?;
        if bare.len() > len {
            return None;
        }
        // The payload marker (one byte) and as much of the text as fits.
        let room = len - bare.len();
        if room > 1 && !answer.diagnostic.is_empty() {
            let mut d = answer.diagnostic;
            d.truncate(d.floor_char_boundary(room - 1));
            p.payload = d.into_bytes();
            return p.to_bytes().ok();
        }
        Some(bare)
    }

    fn remember(&mut self, peer: SocketAddr, id: u16, reply: Option<Vec<u8>>, now: Instant) {
        if self.answered.len() >= MAX_EXCHANGES
            && let Some((_, key)) = self.answered.pop_front()
        {
            self.answers.remove(&key);
        }
        self.answers.insert((peer, id), reply);
        self.answered.push_back((now, (peer, id)));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.answered.front() {
            if now.duration_since(*at) < EXCHANGE_LIFETIME {
                break;
            }
            self.answers.remove(key);
            self.answered.pop_front();
        }
        if !self.uploads.is_empty() {
            self.uploads
                .retain(|_, u| now.duration_since(u.last) < UPLOAD_LIFETIME);
        }
    }

    fn evict_oldest_upload(&mut self) {
        if let Some(key) = self
            .uploads
            .iter()
            .min_by_key(|(_, u)| u.last)
            .map(|(k, _)| k.clone())
        {
            self.uploads.remove(&key);
        }
    }

    /// Answers and uploads held (for tests of the bounds).
    pub fn held(&self) -> (usize, usize) {
        (self.answers.len(), self.uploads.len())
    }
}

/// The event topic of a Uri-Path: `coap/a/b`. Every segment must be a
/// usable MQTT topic level.
fn topic(segments: &[String]) -> Result<String, String> {
    if segments.is_empty() {
        return Err("a Uri-Path is needed (it becomes the topic coap/<path>)".into());
    }
    if segments.len() > MAX_SEGMENTS {
        return Err(format!("at most {MAX_SEGMENTS} Uri-Path segments"));
    }
    let mut topic = String::from("coap");
    for s in segments {
        if s.is_empty()
            || s.len() > MAX_SEGMENT_BYTES
            || s.chars()
                .any(|c| matches!(c, '+' | '#' | '/' | '\0') || c.is_control())
        {
            return Err(format!(
                "Uri-Path segment {:?} must be 1 to {MAX_SEGMENT_BYTES} bytes without + # / or control characters",
                s.chars().take(80).collect::<String>()
            ));
        }
        topic.push('/');
        topic.push_str(s);
    }
    Ok(topic)
}

/// An unsigned option value in as few bytes as it takes (§3.2).
fn minimal(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

fn reset(id: u16) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    // Version 1, type Reset (3), no token, code 0.00.
    vec![0x70, 0x00, a, b]
}

/// A running server.
#[derive(Debug)]
pub struct CoapServer {
    pub local: SocketAddr,
    pub stats: Arc<CoapStats>,
    task: tokio::task::JoinHandle<()>,
}

impl CoapServer {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(plan: &CoapPlan, sink: EventSink) -> std::io::Result<CoapServer> {
        let socket = UdpSocket::bind(plan.bind).await?;
        let local = socket.local_addr()?;
        let stats = Arc::new(CoapStats::default());
        let mut handler = Handler::new(plan.max_payload, sink, stats.clone());
        let task = tokio::spawn(async move {
            // The largest UDP payload: nothing is ever cut off.
            let mut buf = vec![0u8; 65_536];
            loop {
                let (n, peer) = match socket.recv_from(&mut buf).await {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors for earlier replies surface here on
                        // Linux; the socket itself is fine.
                        tracing::debug!(error = %e, "coap: receive failed");
                        continue;
                    }
                };
                if let Some(reply) = handler.handle(peer, &buf[..n], Instant::now()) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        tracing::info!(bind = %local, max_payload = plan.max_payload, "coap: listening");
        Ok(CoapServer { local, stats, task })
    }
}

impl Drop for CoapServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_rules::runtime::EventReceiver;

    fn handler(queue: usize, max: usize) -> (Handler, EventReceiver) {
        let (sink, rx) = EventSink::channel(queue);
        (Handler::new(max, sink, Arc::default()), rx)
    }

    fn post(id: u16, path: &[&str], format: Option<u64>, payload: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = id;
        p.set_token(vec![0xab, id as u8]);
        for s in path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        if let Some(f) = format {
            p.add_option(CoapOption::ContentFormat, minimal(f));
        }
        p.payload = payload.to_vec();
        p
    }

    fn code(reply: &[u8]) -> ResponseType {
        match Packet::from_bytes(reply).unwrap().header.code {
            MessageClass::Response(r) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    #[tokio::test]
    async fn json_and_cbor_posts_queue_events() {
        let (mut h, mut rx) = handler(8, 1024);
        let now = Instant::now();
        let bytes = post(1, &["plant", "t1"], Some(JSON), br#"{"temperature": 90}"#);
        let reply = h.handle(peer(), &bytes.to_bytes().unwrap(), now).unwrap();
        let p = Packet::from_bytes(&reply).unwrap();
        assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(p.header.message_id, 1);
        assert_eq!(p.get_token(), &[0xab, 1]);
        assert_eq!(code(&reply), ResponseType::Changed);
        let e = rx.recv().await.unwrap();
        assert_eq!(e.topic, "coap/plant/t1");
        assert_eq!(e.fields, None);

        let mut cbor = Vec::new();
        ciborium::ser::into_writer(
            &ciborium::Value::Map(vec![(
                ciborium::Value::Text("temperature".into()),
                ciborium::Value::Integer(91.into()),
            )]),
            &mut cbor,
        )
        .unwrap();
        let bytes = post(2, &["plant", "t2"], Some(CBOR), &cbor);
        let reply = h.handle(peer(), &bytes.to_bytes().unwrap(), now).unwrap();
        assert_eq!(code(&reply), ResponseType::Changed);
        let e = rx.recv().await.unwrap();
        assert_eq!(e.payload, cbor);
        assert_eq!(e.fields.as_deref(), Some(&br#"{"temperature":91}"#[..]));
    }

    #[test]
    fn bad_requests_get_4xx_and_queue_nothing() {
        let (mut h, _rx) = handler(8, 64);
        let now = Instant::now();
        let mut get = post(1, &["a"], None, b"");
        get.header.code = MessageClass::Request(RequestType::Get);
        let cases = [
            (
                post(1, &["a"], Some(JSON), b"{nope"),
                ResponseType::BadRequest,
            ),
            (
                post(2, &["a"], Some(CBOR), b"\xff\xff"),
                ResponseType::BadRequest,
            ),
            (
                post(3, &["a"], Some(11050), b"x"),
                ResponseType::UnsupportedContentFormat,
            ),
            (post(4, &[], None, b"x"), ResponseType::BadRequest),
            (post(5, &["a+b"], None, b"x"), ResponseType::BadRequest),
            (
                post(6, &["a"], None, &[b'x'; 65]),
                ResponseType::RequestEntityTooLarge,
            ),
            (
                {
                    let mut g = get;
                    g.header.message_id = 7;
                    g
                },
                ResponseType::MethodNotAllowed,
            ),
            (
                {
                    let mut p = post(8, &["a"], None, b"x");
                    p.add_option(CoapOption::IfMatch, vec![1]);
                    p
                },
                ResponseType::BadOption,
            ),
        ];
        for (packet, want) in cases {
            let reply = h.handle(peer(), &packet.to_bytes().unwrap(), now).unwrap();
            assert_eq!(code(&reply), want, "message {}", packet.header.message_id);
        }
        assert_eq!(h.stats.events.load(Ordering::Relaxed), 0);
        assert_eq!(h.stats.rejected.load(Ordering::Relaxed), 8);
    }

    /// The peer is unauthenticated and may be spoofed: no answer is larger
    /// than its request, and a non-confirmable request's carries no text.
    #[test]
    fn error_answers_never_outweigh_the_request() {
        let (mut h, _rx) = handler(8, 64);
        let now = Instant::now();
        // 6 bytes: a NON GET of /a, no token.
        let tiny = [0x50, 0x01, 0x00, 0x09, 0xb1, b'a'];
        let reply = h.handle(peer(), &tiny, now).unwrap();
        assert!(reply.len() <= tiny.len(), "{} bytes out", reply.len());
        assert_eq!(code(&reply), ResponseType::MethodNotAllowed);
        assert!(Packet::from_bytes(&reply).unwrap().payload.is_empty());
        let mut id = 100;
        for kind in [MessageType::NonConfirmable, MessageType::Confirmable] {
            for (path, format, body) in [
                (&["a"][..], Some(JSON), &b"{"[..]),
                (&[][..], None, &b"x"[..]),
                (&["a+b"][..], None, &b"x"[..]),
                (&["a"][..], Some(11050), &b"x"[..]),
            ] {
                id += 1;
                let mut p = post(id, path, format, body);
                p.header.set_type(kind);
                p.set_token(Vec::new());
                let bytes = p.to_bytes().unwrap();
                if let Some(reply) = h.handle(peer(), &bytes, now) {
                    assert!(
                        reply.len() <= bytes.len(),
                        "{kind:?} {path:?}: {} bytes in, {} out",
                        bytes.len(),
                        reply.len()
                    );
                    let answer = Packet::from_bytes(&reply).unwrap();
                    if kind == MessageType::NonConfirmable {
                        assert!(answer.payload.is_empty(), "{kind:?} {path:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_datagrams_get_a_reset_or_nothing() {
        let (mut h, _rx) = handler(8, 64);
        let now = Instant::now();
        // A CON header with a token length of 9 (reserved): Reset.
        assert_eq!(
            h.handle(peer(), &[0x49, 0x02, 0x12, 0x34], now),
            Some(vec![0x70, 0, 0x12, 0x34])
        );
        // Too short, version 2, a NON: dropped.
        assert_eq!(h.handle(peer(), &[0x40], now), None);
        assert_eq!(h.handle(peer(), &[0x80, 0x02, 0, 1], now), None);
        assert_eq!(h.handle(peer(), &[0x59, 0x02, 0, 1], now), None);
        // A ping: Reset.
        assert_eq!(
            h.handle(peer(), &[0x40, 0x00, 0, 9], now),
            Some(vec![0x70, 0, 0, 9])
        );
        assert_eq!(h.stats.malformed.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_duplicate_is_answered_again_and_not_queued_again() {
        let (mut h, mut rx) = handler(8, 64);
        let now = Instant::now();
        let bytes = post(9, &["a"], None, b"1").to_bytes().unwrap();
        let first = h.handle(peer(), &bytes, now).unwrap();
        let again = h
            .handle(peer(), &bytes, now + Duration::from_secs(2))
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(h.stats.duplicates.load(Ordering::Relaxed), 1);
        assert!(rx.recv().await.is_some());
        assert!(rx.try_recv().is_none());
        // After the exchange lifetime the same id is a new message.
        h.handle(
            peer(),
            &bytes,
            now + EXCHANGE_LIFETIME + Duration::from_secs(3),
        )
        .unwrap();
        assert!(rx.recv().await.is_some());
    }

    #[test]
    fn a_full_queue_answers_503_with_max_age() {
        let (mut h, _rx) = handler(1, 64);
        let now = Instant::now();
        let a = h
            .handle(
                peer(),
                &post(1, &["a"], None, b"1").to_bytes().unwrap(),
                now,
            )
            .unwrap();
        let b = h
            .handle(
                peer(),
                &post(2, &["a"], None, b"2").to_bytes().unwrap(),
                now,
            )
            .unwrap();
        assert_eq!(code(&a), ResponseType::Changed);
        assert_eq!(code(&b), ResponseType::ServiceUnavailable);
        let p = Packet::from_bytes(&b).unwrap();
        assert_eq!(p.get_first_option(CoapOption::MaxAge), Some(&vec![1]));
    }

    fn block(id: u16, num: usize, more: bool, chunk: &[u8], size: usize) -> Vec<u8> {
        let mut p = post(id, &["big"], Some(OCTETS), chunk);
        p.add_option_as(
            CoapOption::Block1,
            BlockValue::new(num, more, size).unwrap(),
        );
        p.to_bytes().unwrap()
    }

    #[tokio::test]
    async fn block_wise_uploads_assemble_within_bounds() {
        let (mut h, mut rx) = handler(8, 100);
        let now = Instant::now();
        let body: Vec<u8> = (0..80u8).collect();
        let chunks: Vec<&[u8]> = body.chunks(32).collect();
        for (i, c) in chunks.iter().enumerate() {
            let more = i + 1 < chunks.len();
            let reply = h
                .handle(peer(), &block(10 + i as u16, i, more, c, 32), now)
                .unwrap();
            let want = if more {
                ResponseType::Continue
            } else {
                ResponseType::Changed
            };
            assert_eq!(code(&reply), want);
            let b = Packet::from_bytes(&reply)
                .unwrap()
                .get_first_option_as::<BlockValue>(CoapOption::Block1)
                .unwrap()
                .unwrap();
            assert_eq!((usize::from(b.num), b.more), (i, more));
        }
        assert_eq!(rx.recv().await.unwrap().payload, body);
        // Past the limit: 4.13 with Size1, and the upload is dropped.
        for i in 0..3 {
            let reply = h
                .handle(peer(), &block(20 + i, i as usize, true, &[0; 32], 32), now)
                .unwrap();
            assert_eq!(code(&reply), ResponseType::Continue);
        }
        let reply = h
            .handle(peer(), &block(23, 3, true, &[0; 32], 32), now)
            .unwrap();
        assert_eq!(code(&reply), ResponseType::RequestEntityTooLarge);
        let p = Packet::from_bytes(&reply).unwrap();
        assert_eq!(p.get_first_option(CoapOption::Size1), Some(&vec![100]));
        assert_eq!(h.held().1, 0);
        // A block out of order, or without a start: 4.08.
        let reply = h
            .handle(peer(), &block(30, 2, true, &[0; 32], 32), now)
            .unwrap();
        assert_eq!(code(&reply), ResponseType::RequestEntityIncomplete);
    }

    #[test]
    fn held_state_stays_bounded_under_a_flood() {
        let (mut h, _rx) = handler(1, 1 << 16);
        let now = Instant::now();
        for i in 0..(MAX_EXCHANGES as u32 + 500) {
            let peer: SocketAddr = format!("127.0.0.{}:{}", 1 + i % 200, 1000 + i / 200)
                .parse()
                .unwrap();
            let mut p = post(i as u16, &["up", &i.to_string()], None, &[0; 16]);
            p.add_option_as(CoapOption::Block1, BlockValue::new(0, true, 16).unwrap());
            h.handle(peer, &p.to_bytes().unwrap(), now);
        }
        let (answers, uploads) = h.held();
        assert!(answers <= MAX_EXCHANGES, "{answers}");
        assert!(uploads <= MAX_UPLOADS, "{uploads}");
    }

    #[test]
    fn large_uploads_are_fewer_at_once() {
        let (mut h, _rx) = handler(1, 1 << 20);
        let now = Instant::now();
        for i in 0..20u16 {
            let mut p = post(i, &["up", &i.to_string()], None, &[0; 1024]);
            p.add_option_as(CoapOption::Block1, BlockValue::new(0, true, 1024).unwrap());
            h.handle(peer(), &p.to_bytes().unwrap(), now);
        }
        assert_eq!(h.held().1, UPLOAD_BYTES / (1 << 20));
    }
}
