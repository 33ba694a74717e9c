//! A no-change poll of the `tuf` source inside a running agent (goal < 5 ms
//! CPU): root probe + timestamp over loopback HTTP, manifest from the
//! verified cache, render, validate, plan.
//!
//! The repository (20 file targets and a manifest) is built with python-tuf
//! by `integration/tuf/repo.py`, using the venv `integration/run-tests`
//! creates (or `FERRY_TEST_PYTHON`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_engine::render::facts::Facts;
use ferry_engine::{ApplyOutcome, Config, Engine, fetch};

fn python() -> PathBuf {
    std::env::var_os("FERRY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fixture-venv/bin/python")
        })
}

fn repo_tool(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration/tuf/repo.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("python-tuf venv (run integration/run-tests once)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serves `root` on loopback, one thread per connection.
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let mut conn = conn;
                match std::fs::read(root.join(path.trim_start_matches('/'))) {
                    Ok(body) => {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = conn.write_all(&body);
                    }
                    Err(_) => {
                        let _ = conn.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                }
            });
        }
    });
    url
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let repo = d.join("tuf");
    repo_tool(&["init", repo.to_str().expect("utf-8")]);
    let mut manifest = String::from("apiVersion: ferry.dev/v1\nresources:\n");
    for i in 0..20 {
        let f = d.join(format!("f{i}"));
        std::fs::write(&f, format!("value = {i}\n")).expect("write");
        repo_tool(&[
            "target",
            repo.to_str().expect("utf-8"),
            &format!("files/{i}"),
            f.to_str().expect("utf-8"),
        ]);
        manifest.push_str(&format!(
            "  - {{kind: file, path: /etc/app/{i}.conf, source: files/{i}}}\n"
        ));
    }
    let m = d.join("manifest.yaml");
    std::fs::write(&m, manifest).expect("write");
    repo_tool(&[
        "target",
        repo.to_str().expect("utf-8"),
        "ferry/manifest.yaml",
        m.to_str().expect("utf-8"),
    ]);
    let url = serve(repo.clone());
    let root = d.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let text = format!(
        "state_dir = {:?}\n[source]\nkind = \"tuf\"\n[source.tuf]\nmetadata_url = \"{url}/metadata\"\ntargets_url = \"{url}/targets\"\nroot = {:?}\n[files]\nroot = {root:?}\n",
        d.join("state"),
        repo.join("metadata/1.root.json"),
    );
    let cfg_path = d.join("ferry.toml");
    std::fs::write(&cfg_path, &text).expect("write");
    let config = Config::from_toml(&cfg_path, &text).expect("config");
    let src = fetch::source(&config).expect("source");
    let facts = Facts::default();
    let mut engine = Engine::open(config).expect("engine");
    engine.apply(&*src, &facts).expect("first apply");

    c.bench_function(
        "tuf no-change poll (refresh, manifest, render, plan)",
        |b| {
            b.iter(|| {
                let out = engine.apply(&*src, &facts).expect("poll");
                assert!(matches!(out, ApplyOutcome::NoChange { .. }));
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
