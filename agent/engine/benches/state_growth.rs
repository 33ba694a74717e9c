//! Whether opening the state and `status` stay flat as a device ages:
//! applies N revisions (one changed file each, then gc, as the agent does
//! after every settled reconcile) and, at checkpoints, times a read-only
//! open + `status` and a locked open (with recovery), and reports the size
//! of `state.db`.
//!
//!     cargo bench -p ferry-engine --bench state_growth -- [APPLIES]
//!
//! (default 100,000; pass a smaller number for a quick look). Prints one
//! row per checkpoint; the figures are in integration/bench/README.md.

use std::time::{Duration, Instant};

use ferry_core::RepoPath;
use ferry_engine::render::facts::Facts;
use ferry_engine::{Config, Engine};
use ferry_source::dir::DirSource;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let applies: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    // /dev/shm when present: the figure of interest is the database's own
    // work, not the disk's fsync latency (which would dominate the run).
    let base = ["/dev/shm", "/tmp"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_dir())
        .unwrap_or("/tmp");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("files")).expect("mkdir");
    std::fs::write(
        repo.join("ferry.yaml"),
        "apiVersion: ferry.dev/v1\nresources:\n  - kind: file\n    path: /etc/app.conf\n    source: files/app.conf\n",
    )
    .expect("manifest");
    let mut config = Config {
        state_dir: dir.path().join("state"),
        ..Config::default()
    };
    config.files.root = dir.path().join("root");
    let src = DirSource::new(&repo, RepoPath::new("ferry.yaml").expect("path"));
    let facts = Facts::default();
    let measure = |config: &Config| {
        let status = median(
            (0..21)
                .map(|_| {
                    let t = Instant::now();
                    let e = Engine::open_read_only(config.clone())
                        .expect("open")
                        .expect("state");
                    e.status().expect("status");
                    t.elapsed()
                })
                .collect(),
        );
        let open = median(
            (0..21)
                .map(|_| {
                    let t = Instant::now();
                    drop(Engine::open(config.clone()).expect("open"));
                    t.elapsed()
                })
                .collect(),
        );
        let size = std::fs::metadata(config.state_dir.join("state.db")).map_or(0, |m| m.len())
            + std::fs::metadata(config.state_dir.join("state.db-wal")).map_or(0, |m| m.len());
        (status, open, size)
    };
    println!(
        "{:>9} {:>14} {:>14} {:>14}",
        "applies", "open+status", "open (locked)", "state.db+wal"
    );
    let mut engine = Engine::open(config.clone()).expect("open");
    let mut next_report = 1;
    for i in 1..=applies {
        std::fs::write(repo.join("files/app.conf"), format!("revision {i}\n")).expect("write");
        engine.apply(&src, &facts).expect("apply");
        engine.gc().expect("gc");
        if i == next_report || i == applies {
            drop(engine);
            let (status, open, size) = measure(&config);
            println!(
                "{i:>9} {:>11.2} ms {:>11.2} ms {:>11} KiB",
                status.as_secs_f64() * 1e3,
                open.as_secs_f64() * 1e3,
                size / 1024
            );
            engine = Engine::open(config.clone()).expect("open");
            next_report *= 10;
        }
    }
}
