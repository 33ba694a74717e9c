//! Real git repositories for the git source's tests: SSH keys made with
//! `ssh-keygen`, OpenPGP keys made with `gpg`, commits signed by `git`
//! itself, a bare "server" repository reachable over `file://` and over
//! smart HTTP (`git http-backend` behind `integration/git/http_backend.py`).
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// A signing identity.
#[derive(Debug, Clone)]
pub enum Key {
    /// Private key file (its `.pub` beside it).
    Ssh(PathBuf),
    /// Fingerprint, and the GNUPGHOME holding the secret key.
    Pgp(String, PathBuf),
}

impl Key {
    /// What the signers policy names it by.
    pub fn policy_id(&self) -> String {
        match self {
            Key::Ssh(p) => {
                let out = stdout(
                    Command::new("ssh-keygen")
                        .arg("-lf")
                        .arg(p.with_extension("pub")),
                );
                out.split_whitespace().nth(1).unwrap().to_owned()
            }
            Key::Pgp(fpr, _) => fpr.clone(),
        }
    }

    pub fn ssh_public(&self) -> String {
        match self {
            Key::Ssh(p) => fs::read_to_string(p.with_extension("pub"))
                .unwrap()
                .trim()
                .to_owned(),
            Key::Pgp(..) => panic!("not an SSH key"),
        }
    }
}

#[derive(Debug)]
pub struct Keys {
    pub dir: PathBuf,
    pub gnupg: PathBuf,
    pub admin: Key,
    pub site7: Key,
    pub expired: Key,
    /// Listed, but for the "file" namespace only.
    pub file_only: Key,
    pub stranger: Key,
    pub pgp_ed: Key,
    pub pgp_rsa: Key,
    pub pgp_stranger: Key,
}

fn ssh_key(dir: &Path, name: &str) -> Key {
    let p = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@example"))
        .arg("-f")
        .arg(&p));
    Key::Ssh(p)
}

fn gpg(gnupg: &Path) -> Command {
    let mut c = Command::new("gpg");
    c.env("GNUPGHOME", gnupg)
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""]);
    c
}

fn pgp_key(gnupg: &Path, uid: &str, algo: &str) -> Key {
    run(gpg(gnupg).args(["--quick-gen-key", uid, algo, "sign", "never"]));
    let listing = stdout(gpg(gnupg).args(["--list-keys", "--with-colons", uid]));
    let fpr = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .unwrap()
        .trim_matches(':')
        .to_owned();
    let mut c = gpg(gnupg);
    c.arg("--import-ownertrust").stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "{fpr}:6:").unwrap();
    assert!(child.wait().unwrap().success());
    Key::Pgp(fpr, gnupg.to_owned())
}

impl Keys {
    /// Makes the keys and a trust directory (`dir/trust`) listing all but
    /// the strangers; `expired` is listed as valid only before 2020.
    pub fn new(dir: &Path) -> Keys {
        let kd = dir.join("keys");
        // The trusted keys' home is what git verifies with; the stranger's
        // key lives elsewhere, so both git and ferry see the same keyring.
        let gnupg = dir.join("gnupg");
        let elsewhere = dir.join("gnupg-stranger");
        fs::create_dir_all(&kd).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for home in [&gnupg, &elsewhere] {
            fs::create_dir_all(home).unwrap();
            fs::set_permissions(home, fs::Permissions::from_mode(0o700)).unwrap();
        }
        let keys = Keys {
            admin: ssh_key(&kd, "admin"),
            site7: ssh_key(&kd, "site7"),
            expired: ssh_key(&kd, "expired"),
            file_only: ssh_key(&kd, "fileonly"),
            stranger: ssh_key(&kd, "stranger"),
            pgp_ed: pgp_key(&gnupg, "Release Bot <bot@example>", "ed25519"),
            pgp_rsa: pgp_key(&gnupg, "RSA Admin <rsa@example>", "rsa2048"),
            pgp_stranger: pgp_key(&elsewhere, "Stranger <stranger@example>", "ed25519"),
            dir: dir.to_owned(),
            gnupg,
        };
        let trust = keys.trust_dir();
        fs::create_dir_all(&trust).unwrap();
        let signers = format!(
            "admin@example {}\nsite7@example namespaces=\"git\" {}\nexpired@example valid-before=\"20200101Z\" {}\nfiles@example namespaces=\"file\" {}\n",
            keys.admin.ssh_public(),
            keys.site7.ssh_public(),
            keys.expired.ssh_public(),
            keys.file_only.ssh_public(),
        );
        fs::write(trust.join("allowed_signers"), signers).unwrap();
        let (Key::Pgp(ed, _), Key::Pgp(rsa, _)) = (&keys.pgp_ed, &keys.pgp_rsa) else {
            unreachable!()
        };
        let armored = run(gpg(&keys.gnupg).args(["--armor", "--export", ed, rsa])).stdout;
        fs::write(trust.join("keyring.asc"), armored).unwrap();
        keys
    }

    pub fn trust_dir(&self) -> PathBuf {
        self.dir.join("trust")
    }
}

/// A working repository whose commits are pushed to a bare one.
#[derive(Debug)]
pub struct Repo {
    pub work: PathBuf,
    pub bare: PathBuf,
    pub gnupg: PathBuf,
    pub trust: PathBuf,
}

impl Repo {
    pub fn new(dir: &Path, keys: &Keys) -> Repo {
        let work = dir.join("work");
        let bare = dir.join("srv").join("fleet.git");
        fs::create_dir_all(&work).unwrap();
        fs::create_dir_all(bare.parent().unwrap()).unwrap();
        run(Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare));
        let r = Repo {
            work,
            bare,
            gnupg: keys.gnupg.clone(),
            trust: keys.trust_dir(),
        };
        run(r.git().args(["init", "-q", "-b", "main"]));
        run(r.git().args(["config", "user.name", "Fleet Admin"]));
        run(r.git().args(["config", "user.email", "admin@example"]));
        r
    }

    /// `git` in the work tree, with the test's keys and trust.
    pub fn git(&self) -> Command {
        let mut c = Command::new("git");
        c.current_dir(&self.work)
            .env("GNUPGHOME", &self.gnupg)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.work.parent().unwrap())
            .args(["-c", "commit.gpgsign=false"])
            .arg("-c")
            .arg(format!(
                "gpg.ssh.allowedSignersFile={}",
                self.trust.join("allowed_signers").display()
            ));
        c
    }

    pub fn write(&self, path: &str, content: &str) {
        let p = self.work.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        if p.is_symlink() {
            fs::remove_file(&p).unwrap();
        }
        fs::write(p, content).unwrap();
    }

    /// Stages everything and commits, signed by `key` (or unsigned);
    /// returns the commit id.
    pub fn commit(&self, message: &str, key: Option<&Key>) -> String {
        self.commit_dated(message, key, None)
    }

    /// `commit` with the author and committer date set to `date` (git's
    /// date syntax, e.g. `2019-06-01T12:00:00Z`): a backdated commit.
    pub fn commit_dated(&self, message: &str, key: Option<&Key>, date: Option<&str>) -> String {
        run(self.git().args(["add", "-A"]));
        let mut c = self.git();
        if let Some(d) = date {
            c.env("GIT_COMMITTER_DATE", d).env("GIT_AUTHOR_DATE", d);
        }
        match key {
            Some(Key::Ssh(p)) => {
                c.args(["-c", "gpg.format=ssh", "-c"])
                    .arg(format!("user.signingkey={}", p.display()));
                c.args(["commit", "-q", "-S", "--allow-empty", "-m", message]);
            }
            Some(Key::Pgp(fpr, home)) => {
                c.env("GNUPGHOME", home);
                c.args(["-c", "gpg.format=openpgp", "-c"])
                    .arg(format!("user.signingkey={fpr}"));
                c.args(["commit", "-q", "-S", "--allow-empty", "-m", message]);
            }
            None => {
                c.args(["commit", "-q", "--allow-empty", "-m", message]);
            }
        }
        run(&mut c);
        self.head()
    }

    /// A signed commit (by `key`, SSH) on top of HEAD whose tree is HEAD's
    /// plus one raw `git mktree` line (`MODE TYPE OID\tNAME`, for entries
    /// git's own tools would not make); HEAD moves to it, the work tree
    /// stays.
    pub fn commit_with_entry(&self, message: &str, key: &Key, entry: &str) -> String {
        let listing = stdout(self.git().args(["ls-tree", "HEAD"]));
        let mut mktree = self.git();
        mktree
            .arg("mktree")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = mktree.spawn().unwrap();
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{listing}\n{entry}").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mktree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let Key::Ssh(p) = key else {
            panic!("an SSH key")
        };
        let parent = self.head();
        let commit = stdout(
            self.git()
                .args(["-c", "gpg.format=ssh", "-c"])
                .arg(format!("user.signingkey={}", p.display()))
                .args(["commit-tree", "-S", &tree, "-p", &parent, "-m", message]),
        );
        // Only the branch moves: such a tree cannot be checked out.
        run(self.git().args(["update-ref", "HEAD", &commit]));
        commit
    }

    /// `git hash-object -w` of `content`.
    pub fn blob(&self, content: &str) -> String {
        let tmp = self.work.parent().unwrap().join("blob-content");
        fs::write(&tmp, content).unwrap();
        stdout(self.git().args(["hash-object", "-w"]).arg(&tmp))
    }

    pub fn head(&self) -> String {
        stdout(self.git().args(["rev-parse", "HEAD"]))
    }

    /// Pushes `rev` to the bare repository's main (forced).
    pub fn push(&self, rev: &str) {
        run(self
            .git()
            .arg("push")
            .arg("-q")
            .arg("-f")
            .arg(&self.bare)
            .arg(format!("{rev}:refs/heads/main")));
    }

    /// `git verify-commit` and `%G?` for `rev`, with the trust directory's
    /// allowed signers and the test keyring (trusted ultimately).
    pub fn git_verdict(&self, rev: &str) -> (bool, String) {
        let ok = self
            .git()
            .args(["verify-commit", rev])
            .output()
            .unwrap()
            .status
            .success();
        let g = stdout(self.git().args(["log", "-1", "--format=%G?", rev]));
        (ok, g)
    }

    /// Writes a commit object with the given `gpgsig` (or none) over the
    /// content of `base` (another commit), and returns its id.
    pub fn craft(&self, base: &str, gpgsig: Option<&str>) -> String {
        let raw = stdout(self.git().args(["cat-file", "commit", base]));
        let unsigned = strip_gpgsig(&raw);
        let text = match gpgsig {
            None => unsigned,
            Some(sig) => {
                let (headers, body) = unsigned.split_once("\n\n").unwrap();
                let sig = sig.trim_end().replace('\n', "\n ");
                format!("{headers}\ngpgsig {sig}\n\n{body}")
            }
        };
        let tmp = self.work.parent().unwrap().join("crafted-commit");
        fs::write(&tmp, format!("{text}\n")).unwrap();
        stdout(
            self.git()
                .args(["hash-object", "-t", "commit", "-w"])
                .arg(&tmp),
        )
    }

    /// The `gpgsig` of a commit.
    pub fn gpgsig(&self, rev: &str) -> String {
        let raw = stdout(self.git().args(["cat-file", "commit", rev]));
        let mut sig = Vec::new();
        let mut inside = false;
        for line in raw.lines() {
            if let Some(first) = line.strip_prefix("gpgsig ") {
                inside = true;
                sig.push(first.to_owned());
            } else if inside && line.starts_with(' ') {
                sig.push(line[1..].to_owned());
            } else if inside {
                break;
            }
        }
        sig.join("\n")
    }

    /// The commit's signed payload (the commit without `gpgsig`).
    pub fn payload(&self, rev: &str) -> String {
        let raw = stdout(self.git().args(["cat-file", "commit", rev]));
        format!("{}\n", strip_gpgsig(&raw))
    }
}

fn strip_gpgsig(raw: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in raw.lines() {
        if line.starts_with("gpgsig ") {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with(' ') {
            continue;
        }
        skipping = false;
        out.push(line);
    }
    out.join("\n")
}

/// `ssh-keygen -Y sign` of `data` with `key` in `namespace`.
pub fn ssh_sign(key: &Key, namespace: &str, data: &str, dir: &Path) -> String {
    let Key::Ssh(p) = key else { panic!("not ssh") };
    let f = dir.join("to-sign");
    fs::write(&f, data).unwrap();
    let _ = fs::remove_file(dir.join("to-sign.sig"));
    run(Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
        .arg(p)
        .arg(&f));
    fs::read_to_string(dir.join("to-sign.sig")).unwrap()
}

/// `git http-backend` behind a small CGI server on 127.0.0.1.
#[derive(Debug)]
pub struct HttpServer {
    child: Child,
    pub port: u16,
}

impl HttpServer {
    pub fn start(root: &Path) -> HttpServer {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration/git/http_backend.py");
        let portfile = root.join(".port");
        let _ = fs::remove_file(&portfile);
        let child = Command::new("python3")
            .arg(script)
            .arg(root)
            .arg(&portfile)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once, so that it is killed and reaped whatever happens.
        let mut server = HttpServer { child, port: 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(p) = fs::read_to_string(&portfile) {
                server.port = p.trim().parse().unwrap();
                return server;
            }
            assert!(Instant::now() < deadline, "git HTTP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
