//! `plan` over 10,000 resources (goal < 20 ms).

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_core::{ContentRef, Kind, Resource, ResourceSet, plan};

fn set(n: usize, changed_every: usize) -> ResourceSet {
    ResourceSet::from_resources((0..n).map(|i| {
        let body = if changed_every > 0 && i % changed_every == 0 {
            format!("changed {i}")
        } else {
            format!("body {i}")
        };
        Resource {
            kind: Kind::File,
            name: format!("/etc/app/conf.d/{i:05}.conf"),
            content: ContentRef::of(body.as_bytes()),
            settings: BTreeMap::from([("mode".to_owned(), serde_json::json!("0644"))]),
            secret: false,
        }
    }))
    .expect("unique names")
}

fn bench(c: &mut Criterion) {
    let actual = set(10_000, 0);
    let same = set(10_000, 0);
    let changed = set(10_000, 10);
    c.bench_function("plan 10k unchanged", |b| b.iter(|| plan(&same, &actual)));
    c.bench_function("plan 10k with 1k changes", |b| {
        b.iter(|| plan(&changed, &actual))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
