//! Switch latency: replacing the `current` link (goal < 1 ms without the
//! fsync), and the same with the fsync that makes it durable.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_core::{ContentRef, Kind, Resource, ResourceSet};
use ferry_engine::store::generations::{GenerationManifest, Generations};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gens = Generations::open(dir.path()).expect("generations");
    for n in 1..=2 {
        let resources = ResourceSet::from_resources((0..100).map(|i| Resource {
            kind: Kind::File,
            name: format!("/etc/app/{i}.conf"),
            content: ContentRef::of(format!("{n}-{i}").as_bytes()),
            settings: BTreeMap::new(),
            secret: false,
        }))
        .expect("unique");
        gens.build(&GenerationManifest {
            generation: n,
            revision: format!("r{n}"),
            source: "bench".into(),
            resources,
        })
        .expect("build");
    }
    let mut next = 1;
    c.bench_function("switch current (no fsync)", |b| {
        b.iter(|| {
            next = 3 - next;
            gens.switch_unsynced(Some(next)).expect("switch");
        })
    });
    c.bench_function("switch current (with fsync)", |b| {
        b.iter(|| {
            next = 3 - next;
            gens.switch(Some(next)).expect("switch");
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
