//! TUF test helpers: repositories built by python-tuf (`integration/tuf/repo.py`)
//! and a loopback HTTP server that serves them, logs every request and can
//! misbehave on purpose (stall, endless data, drop the connection).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::fs;

use super::{Fixture, manifest, stderr};

/// How the server answers one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Accept the request and never answer.
    Stall,
    /// 200 with no length and bytes forever.
    Endless,
    /// Send the headers and this many body bytes, then close.
    CutAfter(usize),
    /// Send the real file one byte every 100 ms (a slow-drip server).
    Drip,
    /// Send the real file with the bit `1 << (n % 8)` of byte `n % len`
    /// flipped (a corrupting link).
    BitFlip(usize),
}

#[derive(Debug, Default)]
struct Shared {
    requests: Vec<String>,
    ranges: Vec<(String, u64)>,
    faults: HashMap<String, Fault>,
}

/// A static file server on 127.0.0.1 for one directory.
#[derive(Debug)]
pub struct Server {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
}

impl Server {
    pub fn serve(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (root, s) = (root.to_path_buf(), shared.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (root, s) = (root.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &root, &s);
                });
            }
        });
        Server { url, shared }
    }

    /// Paths requested so far, in order (`/metadata/timestamp.json`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// Requests that carried a `Range: bytes=N-` header.
    pub fn ranges(&self) -> Vec<(String, u64)> {
        self.shared.lock().unwrap().ranges.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().unwrap().requests.clear();
    }

    pub fn fault(&self, path: &str, fault: Option<Fault>) {
        let mut s = self.shared.lock().unwrap();
        match fault {
            Some(f) => s.faults.insert(path.to_owned(), f),
            None => s.faults.remove(path),
        };
    }
}

fn handle(conn: TcpStream, root: &Path, shared: &Mutex<Shared>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse::<u64>().ok();
        }
    }
    let fault = {
        let mut s = shared.lock().unwrap();
        s.requests.push(path.clone());
        if let Some(r) = range {
            s.ranges.push((path.clone(), r));
        }
        s.faults.get(&path).copied()
    };
    let mut conn = conn;
    match fault {
        Some(Fault::Stall) => {
            std::thread::sleep(Duration::from_secs(120));
            return Ok(());
        }
        Some(Fault::Endless) => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b' '; 64 * 1024];
            loop {
                conn.write_all(&chunk)?;
            }
        }
        _ => {}
    }
    // Files are stored under their quoted names (`1.%2Fdelegatedrole.json`)
    // or plain ones (`dir/a b.txt`): try both.
    let raw = root.join(path.trim_start_matches('/'));
    let decoded = root.join(percent_decode(&path).trim_start_matches('/'));
    let Ok(data) = std::fs::read(&raw).or_else(|_| std::fs::read(&decoded)) else {
        conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    };
    let (status, body) = match range {
        Some(off) if (off as usize) <= data.len() => ("206 Partial Content", &data[off as usize..]),
        _ => ("200 OK", &data[..]),
    };
    let body = match fault {
        Some(Fault::Drip) => {
            conn.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )?;
            for b in body {
                conn.write_all(&[*b])?;
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
        Some(Fault::BitFlip(n)) if !body.is_empty() => {
            let mut bad = body.to_vec();
            bad[n % body.len()] ^= 1 << (n % 8);
            conn.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bad.len()
                )
                .as_bytes(),
            )?;
            conn.write_all(&bad)?;
            return Ok(());
        }
        Some(Fault::CutAfter(n)) => {
            conn.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )?;
            conn.write_all(&body[..n.min(body.len())])?;
            return Ok(());
        }
        _ => body,
    };
    conn.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    conn.write_all(body)?;
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Python with python-tuf that `integration/run-tests` sets up.
pub fn python() -> PathBuf {
    let p = std::env::var_os("FERRY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fixture-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: run integration/run-tests, which creates the python-tuf venv",
        p.display()
    );
    p
}

/// A TUF repository made and changed by python-tuf.
#[derive(Debug)]
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn init(dir: &Path, args: &[&str]) -> Repo {
        let r = Repo {
            dir: dir.to_path_buf(),
        };
        r.tool(&[&["init", dir.to_str().unwrap()], args].concat());
        r
    }

    /// Runs `repo.py CMD DIR ARGS…`.
    pub fn run(&self, cmd: &str, args: &[&str]) {
        self.tool(&[&[cmd, self.dir.to_str().unwrap()], args].concat());
    }

    fn tool(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration/tuf/repo.py");
        let out = Command::new(python())
            .arg(script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "repo.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Adds or replaces target `name` (in `role`) and publishes.
    pub fn target(&self, name: &str, content: &[u8], role: &str) {
        let tmp = self.dir.join(".content");
        std::fs::write(&tmp, content).unwrap();
        self.run("target", &[name, tmp.to_str().unwrap(), "--role", role]);
    }

    pub fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// The first root, to bake into a device.
    pub fn root_v1(&self) -> PathBuf {
        self.metadata().join("1.root.json")
    }

    /// Copies the published metadata aside (to replay it later).
    pub fn save(&self, name: &str) -> PathBuf {
        let dest = self.dir.join("saved").join(name);
        let _ = std::fs::remove_dir_all(&dest);
        super::copy_tree(&self.metadata(), &dest);
        dest
    }

    /// Serves saved metadata again in place of the current (a replay).
    pub fn restore(&self, saved: &Path, files: &[&str]) {
        for f in files {
            std::fs::copy(saved.join(f), self.metadata().join(f)).unwrap();
        }
    }

    pub fn read_json(&self, file: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.metadata().join(file)).unwrap()).unwrap()
    }
}

/// A device whose source is a TUF repository served by `server`.
pub struct Device {
    pub fx: Fixture,
    pub repo: Repo,
    pub server: Server,
    /// Extra configuration appended to ferry.toml.
    pub extra: std::cell::RefCell<String>,
}

impl Device {
    pub fn new(init_args: &[&str]) -> Device {
        let fx = Fixture::new();
        let repo = Repo::init(&fx.dir.path().join("tufrepo"), init_args);
        let server = Server::serve(&repo.dir);
        let d = Device {
            fx,
            repo,
            server,
            extra: Default::default(),
        };
        d.configure(&d.repo.root_v1());
        d
    }

    pub fn configure(&self, root: &Path) {
        let (state, files) = (&self.fx.state, &self.fx.root);
        let url = &self.server.url;
        fs::write(
            &self.fx.config,
            format!(
                "state_dir = {state:?}\n[source]\nkind = \"tuf\"\n[source.tuf]\n\
                 metadata_url = \"{url}/metadata\"\ntargets_url = \"{url}/targets\"\n\
                 root = {root:?}\nstall_timeout = \"2s\"\nmetadata_timeout = \"3s\"\n\
                 [files]\nroot = {files:?}\n{}",
                self.extra.borrow()
            ),
        )
        .unwrap();
    }

    /// Publishes a revision: one target per file and the manifest, in one
    /// new targets version (a device polling meanwhile never sees half of
    /// it).
    pub fn publish(&self, files: &[super::FileSpec]) {
        let src = self.fx.dir.path().join(".publish");
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(src.join("files")).unwrap();
        std::fs::create_dir_all(src.join("ferry")).unwrap();
        for (i, f) in files.iter().enumerate() {
            std::fs::write(src.join(format!("files/{i}")), &f.content).unwrap();
        }
        std::fs::write(src.join("ferry/manifest.yaml"), manifest(files)).unwrap();
        self.repo.run("tree", &[src.to_str().unwrap()]);
        std::fs::remove_dir_all(&src).unwrap();
    }

    /// The path the server serves target `name` under (consistent
    /// snapshots: `<dir>/<sha256>.<base>`), for faults.
    pub fn target_url_path(&self, name: &str) -> String {
        let t = self.repo.read_json("targets.json");
        let sha = t["signed"]["targets"][name]["hashes"]["sha256"]
            .as_str()
            .unwrap();
        let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
        format!("/targets/{dir}/{sha}.{base}")
    }

    /// Runs `ferry apply`, expecting a refusal that names `needles`; checks
    /// that nothing changed and that the refusal was audited.
    pub fn refused(&self, needles: &[&str]) -> String {
        let before_gens = self.fx.generation_ids();
        let before_files = self.fx.snapshot();
        let before_audit = self.fx.audit_len();
        let out = self.fx.run(&["apply", "--no-reboot"]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(4),
            "a refused update exits 4 (verification failed):\n{err}"
        );
        for n in needles {
            assert!(err.contains(n), "error lacks {n:?}:\n{err}");
        }
        assert_eq!(self.fx.generation_ids(), before_gens);
        assert_eq!(self.fx.snapshot(), before_files);
        let audit = self.fx.json(&["audit", "list", "--json"]);
        let entries = audit.as_array().unwrap();
        assert!(entries.len() > before_audit, "audited: {audit:#}");
        let last = entries.last().unwrap();
        assert!(
            ["source-refused", "revision-refused", "failed"]
                .contains(&last["event"].as_str().unwrap()),
            "{last:#}"
        );
        self.fx.ok(&["audit", "verify"]);
        err
    }
}

/// Runs the conformance client.
pub fn conformance(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry-tuf-conformance"))
        .args(args)
        .output()
        .unwrap()
}

/// The conformance client pointed at a device's repository, with its own
/// metadata and target directories.
#[derive(Debug)]
pub struct ConformanceClient {
    pub md: PathBuf,
    pub td: PathBuf,
    pub murl: String,
    pub turl: String,
}

impl ConformanceClient {
    pub fn new(d: &Device) -> ConformanceClient {
        let md = d.fx.dir.path().join("md");
        let td = d.fx.dir.path().join("td");
        fs::create_dir_all(&md).unwrap();
        fs::create_dir_all(&td).unwrap();
        ConformanceClient {
            md,
            td,
            murl: format!("{}/metadata", d.server.url),
            turl: format!("{}/targets", d.server.url),
        }
    }

    fn md(&self) -> &str {
        self.md.to_str().unwrap()
    }

    pub fn init(&self, root: &Path) -> std::process::Output {
        conformance(&["--metadata-dir", self.md(), "init", root.to_str().unwrap()])
    }

    pub fn refresh(&self) -> std::process::Output {
        conformance(&[
            "--metadata-url",
            &self.murl,
            "--metadata-dir",
            self.md(),
            "refresh",
        ])
    }

    pub fn download(&self, names: &[&str]) -> std::process::Output {
        let mut args = vec!["--metadata-url", &self.murl, "--metadata-dir", self.md()];
        for n in names {
            args.extend(["--target-name", n]);
        }
        args.extend([
            "--target-dir",
            self.td.to_str().unwrap(),
            "--target-base-url",
            &self.turl,
            "download",
        ]);
        conformance(&args)
    }
}
