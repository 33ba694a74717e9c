//! Helpers for the end-to-end tests: a fixture with a dir-source repository,
//! a files root and a state directory in a temp dir, and the real `ferry`
//! binary run against it.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod gateway;
pub mod tuf;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// One file resource of a test revision: destination, content, mode.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub path: &'static str,
    pub content: String,
    pub mode: &'static str,
}

pub fn file(path: &'static str, content: &str, mode: &'static str) -> FileSpec {
    FileSpec {
        path,
        content: content.to_owned(),
        mode,
    }
}

/// What the files root should contain: relative path → (content, mode).
pub type Snapshot = BTreeMap<String, (Vec<u8>, u32)>;

pub fn expected(files: &[FileSpec]) -> Snapshot {
    files
        .iter()
        .map(|f| {
            (
                f.path.trim_start_matches('/').to_owned(),
                (
                    f.content.clone().into_bytes(),
                    u32::from_str_radix(f.mode, 8).unwrap(),
                ),
            )
        })
        .collect()
}

pub fn manifest(files: &[FileSpec]) -> String {
    if files.is_empty() {
        return "apiVersion: ferry.dev/v1\nresources: []\n".to_owned();
    }
    let mut m = String::from("apiVersion: ferry.dev/v1\nresources:\n");
    for (i, f) in files.iter().enumerate() {
        m.push_str(&format!(
            "  - kind: file\n    path: {}\n    source: files/{i}\n    mode: \"{}\"\n",
            f.path, f.mode
        ));
    }
    m
}

#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir()
            .unwrap();
        let repo = dir.path().join("repo");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        fs::create_dir_all(&repo).unwrap();
        fs::create_dir_all(&root).unwrap();
        let config = dir.path().join("ferry.toml");
        let f = Fixture {
            dir,
            repo,
            root,
            state,
            config,
        };
        f.write_config("ferry.yaml");
        f
    }

    /// Rewrites the configuration with `manifest` as the entry.
    pub fn write_config(&self, manifest: &str) {
        let (state, repo, root) = (&self.state, &self.repo, &self.root);
        fs::write(
            &self.config,
            format!(
                "state_dir = {state:?}\n[source]\nkind = \"dir\"\n[source.dir]\npath = {repo:?}\ninsecure = true\nmanifest = {manifest:?}\n[files]\nroot = {root:?}\n"
            ),
        )
        .unwrap();
    }

    /// Adds `more` (TOML sections) at the end of the configuration.
    pub fn append_config(&self, more: &str) {
        let text = fs::read_to_string(&self.config).unwrap();
        fs::write(&self.config, format!("{text}{more}")).unwrap();
    }

    /// Turns off the gc that follows every settled reconcile (`apply`
    /// included), for tests that go back to old generations.
    pub fn keep_generations(&self) {
        let text = fs::read_to_string(&self.config).unwrap();
        assert!(!text.contains("[agent]"), "{text}");
        self.append_config("[agent]\ngc = false\n");
    }

    /// Replaces the repository with a copy of `src` (a directory tree).
    pub fn publish_tree(&self, src: &Path) {
        fs::remove_dir_all(&self.repo).unwrap();
        copy_tree(src, &self.repo);
    }

    /// Publishes a revision made of `files` (replacing the previous one).
    pub fn publish(&self, files: &[FileSpec]) {
        self.publish_raw(
            &manifest(files),
            &files
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("files/{i}"), f.content.clone()))
                .collect::<Vec<_>>(),
        );
    }

    /// Publishes a raw manifest and source files.
    pub fn publish_raw(&self, manifest: &str, files: &[(String, String)]) {
        fs::remove_dir_all(&self.repo).unwrap();
        fs::create_dir_all(self.repo.join("files")).unwrap();
        fs::write(self.repo.join("ferry.yaml"), manifest).unwrap();
        for (path, content) in files {
            let p = self.repo.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRY);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("FAILPOINTS")
            .env_remove("FERRY_CRASH_AT")
            .env_remove("FERRY_STATE_DIR");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed ({:?}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Ids of the generations `ferry generations --json` lists.
    pub fn generation_ids(&self) -> Vec<u64> {
        let gens = self.json(&["generations", "--json"]);
        gens.as_array()
            .unwrap()
            .iter()
            .map(|g| g["id"].as_u64().unwrap())
            .collect()
    }

    /// What the last `staged` audit entry says staging fetched from the
    /// source through its verified readers: (bytes, blobs).
    pub fn last_fetched(&self) -> (u64, u64) {
        let audit = self.json(&["audit", "list", "--json"]);
        let staged = audit
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e["event"] == "staged")
            .expect("a staged entry");
        let f = &staged["details"]["fetched"];
        (f["bytes"].as_u64().unwrap(), f["blobs"].as_u64().unwrap())
    }

    /// Number of audit entries `ferry audit list --json` prints.
    pub fn audit_len(&self) -> usize {
        self.json(&["audit", "list", "--json"])
            .as_array()
            .unwrap()
            .len()
    }

    /// The generation the `current` link names; panics if it dangles.
    pub fn current_link(&self) -> Option<u64> {
        let link = self.state.join("current");
        let target = match fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("reading {}: {e}", link.display()),
        };
        let n: u64 = target
            .strip_prefix("generations")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            self.state
                .join("generations")
                .join(n.to_string())
                .join("manifest.json")
                .is_file(),
            "`current` -> {} dangles",
            target.display()
        );
        Some(n)
    }

    /// Every regular file under the files root with its content and mode.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.state.join("state.db")).unwrap()
    }

    pub fn integrity_ok(&self) -> bool {
        let r: String = self
            .db()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        r == "ok"
    }

    /// Files in the store that are not complete blobs (temp leftovers).
    pub fn store_leftovers(&self) -> Vec<String> {
        match fs::read_dir(self.state.join("store")) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() != 64)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// xorshift64*: a seeded sequence, so a randomised test that fails is
/// reproduced with its seed.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

pub fn copy_tree(src: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The directory of the end-to-end tests' data (`integration/`).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration")
}

/// Compares `actual` with the golden file `name` under integration/fleet/golden;
/// `FERRY_BLESS=1` rewrites the golden file instead.
pub fn golden(name: &str, actual: &str) {
    let path = data_dir().join("fleet/golden").join(name);
    if std::env::var_os("FERRY_BLESS").is_some() {
        fs::write(&path, actual).unwrap();
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with FERRY_BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == actual,
        "{} differs (FERRY_BLESS=1 rewrites it after review):\n--- want\n{want}\n--- got\n{actual}",
        path.display()
    );
}

fn walk(base: &Path, dir: &Path, out: &mut Snapshot) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            walk(base, &p, out);
        } else {
            let mode = fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o7777;
            out.insert(
                p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                (fs::read(&p).unwrap(), mode),
            );
        }
    }
}

/// Runs a tool the tests cross-check with; panics with its stderr when it
/// fails; returns its stdout.
pub fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GRUB A/B firmware for fixture `f`: a `[firmware]` table with two 1 MiB
/// image-file slots (`slot-a.img`, `slot-b.img` in the fixture's directory),
/// a GRUB environment made by `grub-editenv` (slot A good, A first) and a
/// kernel command line file; returns (grubenv, cmdline).
pub fn grub_firmware(f: &Fixture) -> (PathBuf, PathBuf) {
    let grubenv = f.dir.path().join("grubenv");
    let cmdline = f.dir.path().join("cmdline");
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        format!(
            "{text}[firmware]\nbootenv = \"grub\"\ngrubenv = {grubenv:?}\ncmdline = {cmdline:?}\nslots = [{{ name = \"A\", device = {:?}, size = 1048576 }}, {{ name = \"B\", device = {:?}, size = 1048576 }}]\n",
            f.dir.path().join("slot-a.img"),
            f.dir.path().join("slot-b.img"),
        ),
    )
    .unwrap();
    let g = grubenv.to_str().unwrap();
    tool("grub-editenv", &[g, "create"]);
    tool(
        "grub-editenv",
        &[
            g,
            "set",
            "ORDER=A B",
            "A_OK=1",
            "A_TRY=0",
            "B_OK=0",
            "B_TRY=0",
        ],
    );
    (grubenv, cmdline)
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether the tests run as root (CI does).
pub fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}
