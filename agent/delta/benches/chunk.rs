//! Chunking throughput (FastCDC + sha256 per chunk), the device's cost of
//! indexing a running slot that has no cached index.

#![allow(clippy::unwrap_used)] // benchmark code: a panic is the failure report

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_delta::{Params, for_each_chunk};

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn chunking(c: &mut Criterion) {
    let input = data(64 << 20);
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc_64MiB", |b| {
        b.iter(|| {
            for_each_chunk::<()>(&input[..], &Params::default(), u64::MAX, |_, _| Ok(())).unwrap()
        })
    });
    g.bench_function("fastcdc_sha256_64MiB", |b| {
        b.iter(|| {
            for_each_chunk::<()>(&input[..], &Params::default(), u64::MAX, |_, c| {
                std::hint::black_box(ferry_core::Sha256::of(c));
                Ok(())
            })
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
