//! The ferry side of `integration/bench/rules.sh` (which runs the LuaJIT
//! side in the same run and prints the ratios).
//!
//! ```text
//! rules_bench throughput DIR predecoded|pipeline   # DIR from gen.py
//! rules_bench swap DIR                              # compile, swap, hand-over costs
//! rules_bench latency PORT COUNT                    # MQTT round trip through `ferry rules run`
//! ```
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_rules::runtime::{Loaded, Runtime};
use ferry_rules::{Event, compile_source};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("throughput") => throughput(&args[2], &args[3]),
        Some("swap") => swap(&args[2]),
        Some("latency") => latency(args[2].parse().unwrap(), args[3].parse().unwrap()),
        _ => {
            eprintln!(
                "usage: rules_bench throughput DIR predecoded|pipeline | swap DIR | latency PORT COUNT"
            );
            std::process::exit(2);
        }
    }
}

fn throughput(dir: &str, mode: &str) {
    let set =
        compile_source(&std::fs::read_to_string(format!("{dir}/bench.rules")).unwrap()).unwrap();
    let text = std::fs::read(format!("{dir}/events.jsonl")).unwrap();
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut state = set.new_state();
    let mut out = Vec::new();
    let mut fired = 0usize;
    let seconds = if mode == "predecoded" {
        let events: Vec<Event> = lines
            .iter()
            .map(|l| set.decode("bench", 0, l).unwrap())
            .collect();
        let t0 = Instant::now();
        for e in &events {
            fired += set.eval(&mut state, e, &mut out);
            out.clear();
        }
        t0.elapsed().as_secs_f64()
    } else {
        // JSON in → actions out: decode, evaluate, and collect each
        // action's message bytes (what would go to MQTT or the journal).
        let mut event = Event::default();
        let mut sink: Vec<u8> = Vec::with_capacity(1 << 16);
        let t0 = Instant::now();
        for l in &lines {
            set.decode_into(l, &mut event).unwrap();
            fired += set.eval(&mut state, &event, &mut out);
            for a in out.drain(..) {
                if let ferry_rules::Output::Alert { message, .. } = a {
                    sink.extend_from_slice(message.as_bytes());
                }
            }
            if sink.len() > 1 << 15 {
                sink.clear();
            }
        }
        t0.elapsed().as_secs_f64()
    };
    println!(
        "{{\"events\": {}, \"rules\": {}, \"fired\": {fired}, \"seconds\": {seconds:.6}}}",
        lines.len(),
        set.rule_count()
    );
}

/// Compile time of the set, the swap itself (one atomic store, measured
/// over many), and the state hand-over the evaluator does once per swap.
fn swap(dir: &str) {
    let src = std::fs::read_to_string(format!("{dir}/bench.rules")).unwrap();
    let t0 = Instant::now();
    let a = Arc::new(compile_source(&src).unwrap());
    let compile = t0.elapsed();
    let b = Arc::new(compile_source(&src).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, handover) = rt.block_on(async {
        let runtime = Runtime::start(Default::default(), Loaded::default(), None).unwrap();
        let n = 10_000u32;
        let mut loads: Vec<Loaded> = (0..n)
            .map(|i| Loaded {
                label: String::new(),
                sets: vec![(
                    "bench".into(),
                    if i % 2 == 0 { a.clone() } else { b.clone() },
                )],
            })
            .collect();
        let t0 = Instant::now();
        for l in loads.drain(..) {
            runtime.swap(l);
        }
        let store = t0.elapsed() / n;
        let state = a.new_state();
        let t0 = Instant::now();
        let mut s = state;
        for _ in 0..n {
            s = b.migrate_state(&a, s);
        }
        (store, t0.elapsed() / n)
    });
    println!(
        "{{\"rules\": {}, \"compile_us\": {:.1}, \"swap_us\": {:.3}, \"handover_us\": {:.3}}}",
        a.rule_count(),
        compile.as_secs_f64() * 1e6,
        store.as_secs_f64() * 1e6,
        handover.as_secs_f64() * 1e6
    );
}

/// Publishes `count` events `{"seq": i}` to `bench/in`, one every 2 ms, and
/// times each until `ferry rules run` (with the rule
/// `ON exists(seq) THEN publish("bench/out", "{seq}")`) answers on
/// `bench/out`.
fn latency(port: u16, count: usize) {
    use rumqttc::{AsyncClient, Event as E, MqttOptions, Packet, QoS};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (client, mut el) = AsyncClient::new(MqttOptions::new("bench-latency", "127.0.0.1", port), 1000);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        client.subscribe("bench/out", QoS::AtMostOnce).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        tokio::spawn(async move {
            loop {
                if let Ok(E::Incoming(Packet::Publish(p))) = el.poll().await
                    && let Ok(seq) = std::str::from_utf8(&p.payload).unwrap_or("").parse::<usize>()
                {
                    let _ = tx.send((seq, Instant::now()));
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Warm up until the engine answers.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(Instant::now() < deadline, "no answer from the rule engine on bench/out");
            client.publish("bench/in", QoS::AtMostOnce, false, r#"{"seq": 999999999}"#).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_ok() {
                break;
            }
        }
        while tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_ok() {}
        let mut sent = vec![None; count];
        let mut lat = Vec::with_capacity(count);
        for i in 0..count {
            sent[i] = Some(Instant::now());
            client.publish("bench/in", QoS::AtMostOnce, false, format!(r#"{{"seq": {i}}}"#)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            while let Ok((seq, at)) = rx.try_recv() {
                if let Some(Some(t)) = sent.get(seq) {
                    lat.push(at.duration_since(*t));
                }
            }
        }
        while lat.len() < count {
            match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                Ok(Some((seq, at))) => {
                    if let Some(Some(t)) = sent.get(seq) {
                        lat.push(at.duration_since(*t));
                    }
                }
                _ => break,
            }
        }
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
        let avg = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len() as f64 * 1e3;
        println!(
            "{{\"received\": {}, \"sent\": {count}, \"avg_ms\": {avg:.3}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
            lat.len(),
            pct(0.50),
            pct(0.99)
        );
    });
}
