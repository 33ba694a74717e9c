//! Per-call and per-instance costs of the module host (criterion). The
//! percentiles and resident memory are in `examples/wasm_bench.rs`, and
//! `integration/bench/wasm.sh` prints everything next to the seed's figures.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_wasm::{Host, HostConfig, ModuleSpec, Modules, Service};

#[path = "../../../integration/wasm/fixtures.rs"]
mod fixtures;

/// The smallest event handler: takes its input, emits nothing, returns 0.
const TRIVIAL: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "ferry_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "noop") (param i32 i32) (result i32) (i32.const 0)))"#;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(&HostConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..HostConfig::default()
    })
    .unwrap();
    let decoder = fixtures::decoder(1);
    let trivial = wat::parse_str(TRIVIAL).unwrap();
    let frame = fixtures::frame(1, 200, 256, false);

    c.bench_function("compile decoder (no cache)", |b| {
        b.iter(|| host.compile_only(&decoder).unwrap())
    });
    host.load("decoder", ModuleSpec::default(), &decoder)
        .unwrap();
    c.bench_function("load decoder from the sealed cache", |b| {
        b.iter(|| {
            host.load("decoder", ModuleSpec::default(), &decoder)
                .unwrap()
        })
    });
    let module = host
        .load("decoder", ModuleSpec::default(), &decoder)
        .unwrap();
    c.bench_function("instantiate (pre-linked, pooled)", |b| {
        b.iter(|| module.instantiate().unwrap())
    });

    let t = host
        .load("trivial", ModuleSpec::default(), &trivial)
        .unwrap();
    let mut ti = t.take_instance().unwrap();
    c.bench_function("call trivial export, empty input", |b| {
        b.iter(|| ti.call("noop", &[]).unwrap())
    });
    c.bench_function("call trivial export, 13-byte input", |b| {
        b.iter(|| ti.call("noop", &frame).unwrap())
    });
    let mut di = module.take_instance().unwrap();
    c.bench_function("decode one Modbus frame to JSON", |b| {
        b.iter(|| di.call("decode", &frame).unwrap())
    });
    let service = Service::start(Modules::from([("trivial".to_owned(), t.clone())]), None);
    c.bench_function("service round trip (worker thread), trivial", |b| {
        b.iter(|| service.call("trivial", "noop", frame.to_vec()).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
