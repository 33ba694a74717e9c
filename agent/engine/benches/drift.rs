//! Drift checks of 10,000 managed files (goal: the fast check ≤ 10 ms per
//! poll; the full check ≤ the time to hash the bytes once):
//!
//! - `fast`: what a reconcile does without the agent's watch
//!   (`Engine::find_drift`): `lstat` each file and compare with what the
//!   last check recorded;
//! - `watched`: what a reconcile does when the running agent's inotify
//!   watch saw no change since the last full check (every poll of an idle
//!   agent between full checks);
//! - `full`: `ferry verify` (every file read and hashed), with the files
//!   split over the cores (`--rate 0`) and on one thread (a `--rate`);
//! - `hash once`: the baseline, reading and hashing the same bytes.
//!
//! Reading the generation's resources (`Engine::actual`, which a reconcile
//! does anyway) is measured on its own.
//!
//!     cargo bench -p ferry-engine --bench drift

use std::io::Read;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_core::RepoPath;
use ferry_engine::render::facts::Facts;
use ferry_engine::{Config, Engine};
use ferry_source::dir::DirSource;

const FILES: usize = 10_000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("files")).expect("mkdir");
    let mut manifest = String::from("{\"apiVersion\": \"ferry.dev/v1\", \"resources\": [");
    for i in 0..FILES {
        // About 2 KiB each, like a gateway's configuration files.
        std::fs::write(
            repo.join(format!("files/{i}")),
            format!("setting_{i} = {}\n", "x".repeat(2000)),
        )
        .expect("file");
        if i > 0 {
            manifest.push(',');
        }
        manifest.push_str(&format!(
            "{{\"kind\": \"file\", \"path\": \"/etc/app/{}/{i}.conf\", \"source\": \"files/{i}\"}}",
            i % 100
        ));
    }
    manifest.push_str("]}");
    std::fs::write(repo.join("ferry.yaml"), manifest).expect("manifest");
    let mut config = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    config.files.root = dir.path().join("root");
    let src = DirSource::new(&repo, RepoPath::new("ferry.yaml").expect("path"));
    let mut engine = Engine::open(config.clone()).expect("open");
    engine.apply(&src, &Facts::default()).expect("apply");
    drop(engine);
    let engine = Engine::open_read_only(config.clone())
        .expect("open")
        .expect("state");
    let actual = engine.actual().expect("actual");
    assert!(engine.find_drift(&actual, None).expect("check").is_empty());

    let mut watched = Engine::open_read_only(config.clone())
        .expect("open")
        .expect("state");
    watched.assume_files_unchanged();

    let mut group = c.benchmark_group("drift, 10,000 files");
    group.sample_size(10);
    group.bench_function("reading the generation's resources", |b| {
        b.iter(|| std::hint::black_box(engine.actual().expect("actual")))
    });
    group.bench_function("fast check (stat pass)", |b| {
        b.iter(|| {
            let found = engine.find_drift(&actual, None).expect("check");
            assert!(found.is_empty());
        })
    });
    group.bench_function("watched check (the agent's watch quiet)", |b| {
        b.iter(|| {
            let found = watched.find_drift(&actual, None).expect("check");
            assert!(found.is_empty());
        })
    });
    group.bench_function(
        "full check (ferry verify --rate 0: files on every core)",
        |b| {
            b.iter(|| {
                let r = engine.verify(false, None).expect("verify");
                assert!(r.problems.is_empty());
            })
        },
    );
    group.bench_function(
        "full check on one thread (ferry verify with a --rate)",
        |b| {
            b.iter(|| {
                let r = engine.verify(false, Some(u64::MAX)).expect("verify");
                assert!(r.problems.is_empty());
            })
        },
    );
    group.bench_function("hash once (baseline)", |b| {
        b.iter(|| {
            let mut buf = Vec::new();
            for i in 0..FILES {
                buf.clear();
                std::fs::File::open(
                    config
                        .files
                        .root
                        .join(format!("etc/app/{}/{i}.conf", i % 100)),
                )
                .and_then(|mut f| f.read_to_end(&mut buf))
                .expect("read");
                std::hint::black_box(ferry_core::Sha256::of(&buf));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
