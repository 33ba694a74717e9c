//! The demo's TUF repository: keys generated at run time, metadata signed
//! with tough's `RepositoryEditor`, served by a loopback HTTP server inside
//! the process. This is exactly what an admin's `tuftool` workflow produces
//! (see README), minus the key ceremony.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use tough::editor::RepositoryEditor;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::sign::Sign;

/// A repository being published under `dir` (`metadata/`, `targets/`).
#[derive(Debug)]
pub struct DemoRepo {
    pub dir: PathBuf,
    key: PathBuf,
    root: PathBuf,
    rt: tokio::runtime::Runtime,
}

fn in_a_year() -> Result<jiff::Timestamp> {
    Ok(jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(24 * 365))?)
}

impl DemoRepo {
    /// Generates a key and signs a version-1 root trusting it for every role.
    pub fn create(dir: &Path) -> Result<DemoRepo> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        fs::create_dir_all(dir.join("metadata"))?;
        fs::create_dir_all(dir.join("targets"))?;
        let keys = dir.join("keys");
        fs::create_dir_all(&keys)?;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating an ed25519 key"))?;
        let key = keys.join("demo-ed25519.pk8");
        fs::write(&key, pkcs8.as_ref())?;

        let signer = tough::sign::parse_keypair(pkcs8.as_ref())?;
        let public = signer.tuf_key();
        let keyid = public.key_id()?;
        let role = || RoleKeys {
            keyids: vec![keyid.clone()],
            threshold: NonZeroU64::MIN,
            _extra: Default::default(),
        };
        let root = Root {
            spec_version: "1.0.0".to_owned(),
            consistent_snapshot: true,
            version: NonZeroU64::MIN,
            expires: in_a_year()?,
            keys: [(keyid.clone(), public)].into_iter().collect(),
            roles: [
                (RoleType::Root, role()),
                (RoleType::Timestamp, role()),
                (RoleType::Snapshot, role()),
                (RoleType::Targets, role()),
            ]
            .into_iter()
            .collect(),
            _extra: Default::default(),
        };
        let sources: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource { path: key.clone() })];
        let signed = rt.block_on(SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root),
            &sources,
            &SystemRandom::new(),
        ))?;
        let root_path = dir.join("root.json");
        fs::write(&root_path, signed.buffer())?;
        fs::write(dir.join("metadata/1.root.json"), signed.buffer())?;
        Ok(DemoRepo {
            dir: dir.to_path_buf(),
            key,
            root: root_path,
            rt,
        })
    }

    /// A repository `create` made earlier (`ferry demo --dir`), with the key
    /// it keeps in `dir/keys/`.
    pub fn open(dir: &Path) -> Result<DemoRepo> {
        let key = dir.join("keys/demo-ed25519.pk8");
        let root = dir.join("root.json");
        for p in [&key, &root] {
            anyhow::ensure!(
                p.is_file(),
                "{} is missing: not a repository made by `ferry demo --dir`",
                p.display()
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(DemoRepo {
            dir: dir.to_path_buf(),
            key,
            root,
            rt,
        })
    }

    /// The version after the newest published one (`metadata/N.targets.json`).
    pub fn next_version(&self) -> Result<u64> {
        let metadata = self.dir.join("metadata");
        let mut newest = 0;
        for e in
            fs::read_dir(&metadata).with_context(|| format!("reading {}", metadata.display()))?
        {
            let name = e?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".targets.json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                newest = newest.max(n);
            }
        }
        Ok(newest + 1)
    }

    /// The root a device trusts (baked into its image).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Publishes `files` (target name → content) as version `version` of
    /// targets, snapshot and timestamp.
    pub fn publish(&self, version: u64, files: &[(String, Vec<u8>)]) -> Result<()> {
        let version = NonZeroU64::new(version).context("versions start at 1")?;
        let staging = self.dir.join(format!("staging-{version}"));
        let _ = fs::remove_dir_all(&staging);
        self.rt.block_on(async {
            let mut editor = RepositoryEditor::new(&self.root).await?;
            let expires = in_a_year()?;
            editor
                .snapshot_version(version)
                .snapshot_expires(expires)
                .timestamp_version(version)
                .timestamp_expires(expires);
            editor.targets_version(version)?.targets_expires(expires)?;
            for (name, content) in files {
                let p = staging.join(name);
                fs::create_dir_all(p.parent().context("relative target names have parents")?)?;
                fs::write(&p, content)?;
                let target = Target::from_path(&p).await?;
                // Targets live at `dir/SHA256.basename` (consistent snapshots).
                let sha = hex::encode(&target.hashes.sha256);
                let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
                let out = self.dir.join("targets").join(dir);
                fs::create_dir_all(&out)?;
                fs::write(out.join(format!("{sha}.{base}")), content)?;
                editor.add_target(name.as_str(), target)?;
            }
            let keys: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource {
                path: self.key.clone(),
            })];
            let signed = editor.sign(&keys).await?;
            signed.write(self.dir.join("metadata")).await?;
            anyhow::Ok(())
        })?;
        let _ = fs::remove_dir_all(&staging);
        Ok(())
    }

    /// Serves the repository on 127.0.0.1 from a background thread; returns
    /// the base URL.
    pub fn serve(&self) -> Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let root = self.dir.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = serve_one(conn, &root);
            }
        });
        Ok(url)
    }
}

/// Answers one GET with a file below `root`, or 404. Paths with `..` are
/// refused.
fn serve_one(conn: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let mut conn = conn;
    let file = (!path.split('/').any(|c| c == ".."))
        .then(|| root.join(path.trim_start_matches('/')))
        .and_then(|p| fs::read(p).ok());
    match file {
        Some(body) => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)
        }
        None => conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}
