//! The measuring side of `integration/bench/ingest.sh` (see there):
//!
//! ingest_bench coap-latency ADDR MQTT_PORT COUNT
//!     confirmable POSTs of {"seq": i} to /bench/in, one at a time; the
//!     time from sending each to receiving the rule's MQTT publish of it.
//! ingest_bench coap-throughput ADDR MQTT_PORT CLIENTS SECONDS
//!     CLIENTS sockets, each posting as fast as its ACKs come back (one
//!     exchange in flight per client, as RFC 7252 NSTART=1 asks).
//! ingest_bench modbus TRACE MQTT_PORT SECONDS REGISTERS
//!     counts the rule's publishes of Modbus reads for SECONDS; matches
//!     each with the time sim.py answered that read (TRACE: "seq time").
//!
//! Each prints one JSON object.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("coap-latency") => coap_latency(&a[2], a[3].parse().unwrap(), a[4].parse().unwrap()),
        Some("coap-throughput") => coap_throughput(
            &a[2],
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            a[5].parse().unwrap(),
        ),
        Some("modbus") => modbus(
            &a[2],
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            a[5].parse().unwrap(),
        ),
        _ => {
            eprintln!("usage: see the source");
            std::process::exit(2);
        }
    }
}

/// Messages on `topic` as (payload, arrival): wall-clock arrival for
/// comparing with another process's clock, monotonic for our own.
fn subscribe(port: u16, topic: &str) -> mpsc::Receiver<(String, Instant, f64)> {
    let mut opts =
        rumqttc::MqttOptions::new(format!("bench-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = rumqttc::Client::new(opts, 100_000);
    client.subscribe(topic, rumqttc::QoS::AtMostOnce).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _client = client;
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let wall = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64();
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((text, Instant::now(), wall)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    rx
}

/// A confirmable POST of JSON to /bench/in.
fn post(id: u16, payload: &str) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    // ver 1, CON, token length 2; POST; id; token; Uri-Path "bench" (11),
    // Uri-Path "in" (delta 0); Content-Format 50 (delta 1); payload.
    let mut d = vec![0x42, 0x02, a, b, a, b, 0xb5];
    d.extend_from_slice(b"bench");
    d.push(0x02);
    d.extend_from_slice(b"in");
    d.extend_from_slice(&[0x11, 50, 0xff]);
    d.extend_from_slice(payload.as_bytes());
    d
}

/// Sends and waits for the matching ACK; its response code.
fn exchange(sock: &UdpSocket, id: u16, payload: &str) -> Option<u8> {
    let d = post(id, payload);
    let mut buf = [0u8; 512];
    for _ in 0..4 {
        sock.send(&d).unwrap();
        loop {
            match sock.recv(&mut buf) {
                Ok(n) if n >= 4 && u16::from_be_bytes([buf[2], buf[3]]) == id => {
                    return Some(buf[1]);
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    None
}

fn stats(mut lat: Vec<Duration>) -> (f64, f64, f64) {
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let avg = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len() as f64 * 1e3;
    (avg, pct(0.5), pct(0.99))
}

fn coap_latency(addr: &str, mqtt: u16, count: usize) {
    let rx = subscribe(mqtt, "bench/out");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Warm up: until a publish comes back.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "no publish on bench/out");
        exchange(&sock, 1, r#"{"seq": 999999999}"#);
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
    }
    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
    let (mut lat, mut ack) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for i in 0..count {
        let t0 = Instant::now();
        let code = exchange(
            &sock,
            (i % 60_000) as u16 + 2,
            &format!(r#"{{"seq": {i}}}"#),
        );
        assert_eq!(code, Some(0x44), "request {i}: not 2.04");
        ack.push(t0.elapsed());
        loop {
            let (text, at, _) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("publish lost");
            if text == i.to_string() {
                lat.push(at.duration_since(t0));
                break;
            }
        }
    }
    let (avg, p50, p99) = stats(lat);
    let (aavg, _, ap99) = stats(ack);
    println!(
        "{{\"count\": {count}, \"avg_ms\": {avg:.3}, \"p50_ms\": {p50:.3}, \"p99_ms\": {p99:.3}, \"ack_avg_ms\": {aavg:.3}, \"ack_p99_ms\": {ap99:.3}}}"
    );
}

fn coap_throughput(addr: &str, mqtt: u16, clients: usize, seconds: u64) {
    let rx = subscribe(mqtt, "bench/out");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, busy, lost) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, ok, busy, lost, addr) = (
                stop.clone(),
                ok.clone(),
                busy.clone(),
                lost.clone(),
                addr.to_owned(),
            );
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                sock.connect(&addr).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut id: u16 = 1;
                while !stop.load(Ordering::Relaxed) {
                    match exchange(&sock, id, &format!(r#"{{"seq": {c}}}"#)) {
                        Some(0x44) => ok.fetch_add(1, Ordering::Relaxed),
                        Some(_) => busy.fetch_add(1, Ordering::Relaxed),
                        None => lost.fetch_add(1, Ordering::Relaxed),
                    };
                    id = id.wrapping_add(1).max(1);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut published = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            published += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    for t in threads {
        t.join().unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{{\"clients\": {clients}, \"seconds\": {secs:.2}, \"acked\": {ok}, \"events_per_s\": {:.0}, \"published_per_s\": {:.0}, \"overloaded\": {}, \"lost\": {}}}",
        ok as f64 / secs,
        published as f64 / secs,
        busy.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed)
    );
}

fn modbus(trace: &str, mqtt: u16, seconds: u64, registers: u64) {
    let rx = subscribe(mqtt, "bench/modbus");
    // Publishes that arrived while subscribing are not in the window.
    while rx.try_recv().is_ok() {}
    let t0 = Instant::now();
    let mut got: HashMap<u64, f64> = HashMap::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        if let Ok((text, _, wall)) = rx.recv_timeout(Duration::from_millis(50))
            && let Ok(seq) = text.parse::<f64>()
        {
            got.insert(seq as u64, wall);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(trace).unwrap();
    let mut lat = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(seq), Some(at)) = (it.next(), it.next())
            && let (Ok(seq), Ok(at)) = (seq.parse::<u64>(), at.parse::<f64>())
            && let Some(wall) = got.get(&seq)
        {
            lat.push(Duration::from_secs_f64((wall - at).max(0.0)));
        }
    }
    assert!(!lat.is_empty(), "no read was matched with a publish");
    let (avg, p50, p99) = stats(lat);
    println!(
        "{{\"reads\": {}, \"reads_per_s\": {:.0}, \"registers_per_s\": {:.0}, \"avg_ms\": {avg:.3}, \"p50_ms\": {p50:.3}, \"p99_ms\": {p99:.3}}}",
        got.len(),
        got.len() as f64 / secs,
        got.len() as f64 * registers as f64 / secs
    );
}
