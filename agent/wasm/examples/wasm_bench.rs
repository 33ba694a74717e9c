//! The measurements of `integration/bench/wasm.sh` that need percentiles or
//! resident memory (criterion covers the means: `cargo bench -p ferry-wasm`).
//!
//! ```text
//! wasm_bench instantiate N     # P50/P95 of instantiation from a cached, pre-linked module
//! wasm_bench idle N            # resident memory per idle instance, N instances
//! wasm_bench call N            # mean cost of N calls: trivial handler, Modbus decode
//! wasm_bench fixtures DIR N    # N distinct decoder modules (DIR/decoder-I.wasm)
//! ```
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_wasm::{Host, HostConfig, ModuleSpec};

#[path = "../../../integration/wasm/fixtures.rs"]
mod fixtures;

use fixtures::decoder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("instantiate") => instantiate(args[2].parse().unwrap()),
        Some("idle") => idle(args[2].parse().unwrap()),
        Some("call") => call(args[2].parse().unwrap()),
        Some("fixtures") => fixtures(&args[2], args[3].parse().unwrap()),
        _ => {
            eprintln!("usage: wasm_bench instantiate N | idle N | fixtures DIR N");
            std::process::exit(2);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

/// Compile from scratch, load from the sealed cache (read + verify +
/// deserialize + pre-link + first instance), and instantiate from the
/// pre-linked module (what serving does after a fault, and what a fresh
/// instance per event would cost). JSON on stdout, times in µs.
fn instantiate(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(&HostConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..HostConfig::default()
    })
    .unwrap();
    let bytes = decoder(1);
    let mut compile = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        host.compile_only(&bytes).unwrap();
        compile.push(t.elapsed());
    }
    host.load("decoder", ModuleSpec::default(), &bytes).unwrap();
    let mut load = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let m = host.load("decoder", ModuleSpec::default(), &bytes).unwrap();
        load.push(t.elapsed());
        assert_eq!(m.cache, ferry_wasm::CacheOutcome::Hit);
    }
    let module = host.load("decoder", ModuleSpec::default(), &bytes).unwrap();
    let mut inst = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let i = module.instantiate().unwrap();
        inst.push(t.elapsed());
        drop(i);
    }
    for v in [&mut compile, &mut load, &mut inst] {
        v.sort();
    }
    println!(
        "{}",
        serde_json::json!({
            "compile_p50_us": percentile(&compile, 0.5),
            "load_cached_p50_us": percentile(&load, 0.5),
            "load_cached_p95_us": percentile(&load, 0.95),
            "instantiate_p50_us": percentile(&inst, 0.5),
            "instantiate_p95_us": percentile(&inst, 0.95),
            "instantiate_p99_us": percentile(&inst, 0.99),
            "samples": n,
        })
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resident memory per idle instance: N live instances of the decoder, each
/// having handled one event (so its memory and state are touched).
fn idle(n: usize) {
    let host = Host::new(&HostConfig {
        max_instances: (n + 2) as u32,
        ..HostConfig::default()
    })
    .unwrap();
    let module = host
        .load("decoder", ModuleSpec::default(), &decoder(1))
        .unwrap();
    let frame = fixtures::frame(1, 200, 256, false);
    // Warm the allocator and code pages first.
    let mut warm = module.instantiate().unwrap();
    warm.call("decode", &frame).unwrap();
    let before = rss_kib();
    let mut live = Vec::with_capacity(n);
    for _ in 0..n {
        let mut i = module.instantiate().unwrap();
        i.call("decode", &frame).unwrap();
        live.push(i);
    }
    let after = rss_kib();
    println!(
        "{}",
        serde_json::json!({
            "instances": n,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "per_instance_kib": (after.saturating_sub(before)) as f64 / n as f64,
        })
    );
    drop(live);
}

/// Mean per-call cost on a live instance: the smallest handler (input
/// copied in, nothing emitted) and the decoder (input in, JSON emitted).
fn call(n: u32) {
    let host = Host::new(&HostConfig::default()).unwrap();
    let trivial = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "ferry_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "noop") (param i32 i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let frame = fixtures::frame(1, 200, 256, false);
    let mut t = host
        .load("trivial", ModuleSpec::default(), &trivial)
        .unwrap()
        .take_instance()
        .unwrap();
    let mut d = host
        .load("decoder", ModuleSpec::default(), &decoder(1))
        .unwrap()
        .take_instance()
        .unwrap();
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..n / 10 {
            f();
        }
        let t0 = Instant::now();
        for _ in 0..n {
            f();
        }
        t0.elapsed().as_secs_f64() * 1e9 / f64::from(n)
    };
    let empty = time(&mut || {
        t.call("noop", &[]).unwrap();
    });
    let input = time(&mut || {
        t.call("noop", &frame).unwrap();
    });
    let decode = time(&mut || {
        d.call("decode", &frame).unwrap();
    });
    println!(
        "{}",
        serde_json::json!({"trivial_empty_ns": empty, "trivial_13b_ns": input, "decode_ns": decode, "calls": n})
    );
}

fn fixtures(dir: &str, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 1..=n {
        std::fs::write(format!("{dir}/decoder-{i}.wasm"), decoder(i)).unwrap();
    }
}
