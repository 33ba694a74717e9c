//! Render + validate + resolve + plan for 10,000 resources (goal < 50 ms),
//! with the manifest rendered as YAML and as JSON (which ferry parses with
//! its faster JSON parser).
//!
//! The manifest is a template that loops over 10,000 files with pinned
//! content addresses, read from a real dir source in a temp directory.

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_core::{RepoPath, Sha256, plan};
use ferry_engine::render::facts::Facts;
use ferry_engine::render::manifest;
use ferry_source::Source;
use ferry_source::dir::DirSource;

fn yaml(sha: &Sha256) -> String {
    format!(
        "apiVersion: ferry.dev/v1\nresources:\n{{%- for i in range(10000) %}}\n  - kind: file\n    path: /etc/app/conf.d/{{{{ device.hostname }}}}-{{{{ i }}}}.conf\n    source: files/line.conf\n    mode: \"0644\"\n    sha256: \"{sha}\"\n    length: 19\n{{%- endfor %}}\n"
    )
}

fn json(sha: &Sha256) -> String {
    format!(
        "{{\"apiVersion\": \"ferry.dev/v1\", \"resources\": [\n{{%- for i in range(10000) %}}{{% if not loop.first %}},{{% endif %}}\n  {{\"kind\": \"file\", \"path\": \"/etc/app/conf.d/{{{{ device.hostname }}}}-{{{{ i }}}}.conf\", \"source\": \"files/line.conf\", \"mode\": \"0644\", \"sha256\": \"{sha}\", \"length\": 19}}\n{{%- endfor %}}]}}\n"
    )
}

fn bench(c: &mut Criterion) {
    let sha = Sha256::of(b"sample_interval=1s\n");
    for (label, text) in [("yaml", yaml(&sha)), ("json", json(&sha))] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("files")).expect("mkdir");
        std::fs::write(dir.path().join("ferry.j2"), text).expect("write");
        std::fs::write(dir.path().join("files/line.conf"), "sample_interval=1s\n").expect("write");
        let src = DirSource::new(dir.path(), RepoPath::new("ferry.j2").expect("path"));
        let facts = Facts {
            hostname: Some("gw-bench".into()),
            ..Facts::default()
        };
        let rev = src.fetch().expect("fetch");
        let actual = manifest::load(&rev, src.manifest_path(), &facts)
            .expect("load")
            .resources;
        assert_eq!(actual.len(), 10_000);
        c.bench_function(
            &format!("render+validate+plan 10k resources ({label})"),
            |b| {
                b.iter(|| {
                    let desired = manifest::load(&rev, src.manifest_path(), &facts).expect("load");
                    plan(&desired.resources, &actual)
                })
            },
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
