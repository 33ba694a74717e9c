//! The git source end to end with real git, ssh-keygen and gpg: verdicts
//! equal `git verify-commit`'s; unsigned or untrusted commits anywhere in
//! the range, rollbacks, unrelated history, out-of-scope changes, policy
//! changes by the wrong signer, oversized files and symlinks are refused and
//! audited with the running generation untouched; signed commits converge
//! over `file://` and smart HTTP.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/gitrepo.rs"]
mod gitrepo;

use std::fs;
use std::process::Output;

use common::Fixture;
use gitrepo::{HttpServer, Key, Keys, Repo, ssh_sign};

const MANIFEST: &str = "apiVersion: ferry.dev/v1\nresources:\n  - kind: file\n    path: /etc/app/site.conf\n    source: sites/plant-7/site.conf\n";

struct Setup {
    fx: Fixture,
    keys: Keys,
    repo: Repo,
}

impl Setup {
    fn new() -> Setup {
        let fx = Fixture::new();
        let keys = Keys::new(fx.dir.path());
        let repo = Repo::new(fx.dir.path(), &keys);
        let s = Setup { fx, keys, repo };
        s.configure(&format!("file://{}", s.repo.bare.display()), "");
        s
    }

    /// Points ferry at `url`; `extra` goes into `[source.git]`.
    fn configure(&self, url: &str, extra: &str) {
        fs::write(
            &self.fx.config,
            format!(
                "state_dir = {:?}\n[source]\nkind = \"git\"\n[source.git]\nurl = {url:?}\ntrust_dir = {:?}\n{extra}\n[files]\nroot = {:?}\n",
                self.fx.state,
                self.keys.trust_dir(),
                self.fx.root
            ),
        )
        .unwrap();
    }

    /// The first revision: manifest, site file and a signers policy giving
    /// the admins everything and site 7 its directory.
    fn initial(&self) -> String {
        self.repo.write("ferry.yaml", MANIFEST);
        self.repo
            .write("sites/plant-7/site.conf", "threshold = 80\n");
        self.repo.write(
            "ferry/signers.toml",
            &format!(
                "[[signer]]\nname = \"fleet-admins\"\nkeys = [{:?}, {:?}, {:?}]\npaths = [\"**\"]\n\n\
                 [[signer]]\nname = \"site-7-admins\"\nkeys = [{:?}]\npaths = [\"sites/plant-7/**\"]\n",
                self.keys.admin.policy_id(),
                self.keys.pgp_ed.policy_id(),
                self.keys.pgp_rsa.policy_id(),
                self.keys.site7.policy_id()
            ),
        );
        self.repo.commit("initial", Some(&self.keys.admin))
    }

    fn site_conf(&self) -> String {
        fs::read_to_string(self.fx.root.join("etc/app/site.conf")).unwrap()
    }

    fn apply(&self) -> Output {
        self.fx.run(&["apply"])
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Acceptance 1: ferry's verdict on a commit equals git's, over the same
/// allowed signers and keyring.
#[test]
fn verdicts_equal_git_verify_commit() {
    let s = Setup::new();
    let base = s.initial();
    let k = &s.keys;
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut n = 0;
    let mut signed = |name: &'static str, key: Option<&Key>| {
        n += 1;
        s.repo
            .write("sites/plant-7/site.conf", &format!("threshold = {n}\n"));
        (name, s.repo.commit(name, key))
    };
    cases.push(signed("good SSH", Some(&k.admin)));
    cases.push(signed("good OpenPGP ed25519", Some(&k.pgp_ed)));
    cases.push(signed("good OpenPGP RSA", Some(&k.pgp_rsa)));
    cases.push(signed("unsigned", None));
    cases.push(signed("unknown SSH key", Some(&k.stranger)));
    cases.push(signed("unknown OpenPGP key", Some(&k.pgp_stranger)));
    cases.push(signed("key outside its validity window", Some(&k.expired)));
    cases.push(signed(
        "key not allowed for the git namespace",
        Some(&k.file_only),
    ));
    let dir = s.fx.dir.path();
    // Signed in the "file" namespace instead of "git".
    let wrong_ns = ssh_sign(&k.admin, "file", &s.repo.payload(&base), dir);
    cases.push(("wrong namespace", s.repo.craft(&base, Some(&wrong_ns))));
    // A valid signature, but over another commit's content.
    let good = cases[0].1.clone();
    cases.push((
        "forged (signature of another commit)",
        s.repo.craft(&base, Some(&s.repo.gpgsig(&good))),
    ));
    let good_pgp = cases[1].1.clone();
    cases.push((
        "forged OpenPGP",
        s.repo.craft(&base, Some(&s.repo.gpgsig(&good_pgp))),
    ));
    // One character of the signature changed.
    let mut corrupt = s.repo.gpgsig(&good);
    let lines: Vec<&str> = corrupt.lines().collect();
    let mid = lines[2].to_owned();
    let flipped: String = mid
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    corrupt = corrupt.replacen(&mid, &flipped, 1);
    cases.push((
        "corrupted SSH signature",
        s.repo.craft(&good, Some(&corrupt)),
    ));

    let mut accepted = 0;
    for (name, commit) in &cases {
        let (git_ok, g) = s.repo.git_verdict(commit);
        // A fresh device accepts a first commit only if it is signed by a
        // trusted key: exactly git's verdict on that commit.
        let _ = fs::remove_dir_all(&s.fx.state);
        let _ = fs::remove_dir_all(&s.fx.root);
        fs::create_dir_all(&s.fx.root).unwrap();
        s.repo.push(commit);
        let out = s.apply();
        assert_eq!(
            out.status.success(),
            git_ok,
            "{name}: git says {g} ({}), ferry: {}",
            if git_ok { "good" } else { "bad" },
            stderr(&out)
        );
        assert_eq!(git_ok, g == "G", "{name}: %G? = {g}");
        if git_ok {
            accepted += 1;
        } else {
            assert_eq!(out.status.code(), Some(4), "{name}: {}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("commit {commit}")),
                "{name}: {}",
                stderr(&out)
            );
        }
    }
    assert_eq!(accepted, 3, "the three good signatures");
}

fn assert_refused(s: &Setup, out: &Output, want: &str, generation: u64, conf: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "accepted: {want}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    assert_eq!(s.fx.current_link(), Some(generation), "{want}");
    assert_eq!(s.site_conf(), conf, "{want}: running state changed");
    let audit = s.fx.json(&["audit", "list", "--json"]);
    let last = audit.as_array().unwrap().last().unwrap().clone();
    // History and signatures: the source refuses; file content: the
    // revision (its manifest) is refused.
    assert!(
        last["event"] == "source-refused" || last["event"] == "revision-refused",
        "{want}: {last}"
    );
    assert!(last.to_string().contains(want), "{want}: audit {last}");
}

/// Acceptance 2: every refusal, with the running generation untouched.
#[test]
fn bad_histories_are_refused_and_audited() {
    let s = Setup::new();
    let server = HttpServer::start(s.repo.bare.parent().unwrap());
    s.configure(
        &format!("http://127.0.0.1:{}/fleet.git", server.port),
        "max_file_bytes = 4096",
    );
    let k = &s.keys;
    let c1 = s.initial();
    s.repo.push(&c1);
    s.fx.ok(&["apply"]);
    s.repo.write("sites/plant-7/site.conf", "threshold = 85\n");
    let c2 = s.repo.commit("raise threshold", Some(&k.site7));
    s.repo.push(&c2);
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 85\n");
    let gen_ok = s.fx.current_link().unwrap();
    let conf = "threshold = 85\n";
    let reset = || {
        s.repo
            .git()
            .args(["reset", "-q", "--hard", &c2])
            .status()
            .unwrap();
        s.repo.push(&c2);
    };

    // An unsigned commit below a signed tip.
    s.repo.write("sites/plant-7/site.conf", "threshold = 1\n");
    let unsigned = s.repo.commit("sneaky", None);
    s.repo.write("sites/plant-7/site.conf", "threshold = 2\n");
    s.repo.commit("cover", Some(&k.admin));
    s.repo.push("HEAD");
    assert_refused(
        &s,
        &s.apply(),
        &format!("commit {unsigned}: is not signed"),
        gen_ok,
        conf,
    );
    reset();
    // An untrusted key in the middle.
    s.repo.write("sites/plant-7/site.conf", "threshold = 3\n");
    let stranger = s.repo.commit("stranger", Some(&k.stranger));
    s.repo.write("sites/plant-7/site.conf", "threshold = 4\n");
    s.repo.commit("cover", Some(&k.admin));
    s.repo.push("HEAD");
    assert_refused(
        &s,
        &s.apply(),
        &format!("commit {stranger}: signed by ssh:SHA256:"),
        gen_ok,
        conf,
    );
    reset();
    // Force-push back to an older commit.
    s.repo.push(&c1);
    assert_refused(&s, &s.apply(), "rollback refused", gen_ok, conf);
    reset();
    // Unrelated history, signed by a trusted key.
    s.repo
        .git()
        .args(["checkout", "-q", "--orphan", "other"])
        .status()
        .unwrap();
    s.repo.write("sites/plant-7/site.conf", "threshold = 5\n");
    s.repo.commit("unrelated", Some(&k.admin));
    s.repo.push("HEAD");
    assert_refused(
        &s,
        &s.apply(),
        "unrelated history or a force-push",
        gen_ok,
        conf,
    );
    s.repo
        .git()
        .args(["checkout", "-q", "-f", "main"])
        .status()
        .unwrap();
    reset();
    // Site 7 changing the manifest (outside its paths).
    s.repo
        .write("ferry.yaml", &format!("{MANIFEST}# changed\n"));
    s.repo.commit("scope", Some(&k.site7));
    s.repo.push("HEAD");
    assert_refused(
        &s,
        &s.apply(),
        "does not allow to change ferry.yaml",
        gen_ok,
        conf,
    );
    reset();
    // Site 7 widening its own scope in the policy.
    let policy = fs::read_to_string(s.repo.work.join("ferry/signers.toml")).unwrap();
    s.repo.write(
        "ferry/signers.toml",
        &policy.replace("sites/plant-7/**", "**"),
    );
    s.repo.commit("grant myself everything", Some(&k.site7));
    s.repo.push("HEAD");
    assert_refused(
        &s,
        &s.apply(),
        "does not allow to change ferry/signers.toml",
        gen_ok,
        conf,
    );
    reset();
    // Entries a device never accepts into its history, even in authentic
    // commits: the branch must be reset below them (the device never
    // accepted them, so that is no rollback for it).
    // An oversized file.
    s.repo.write("sites/plant-7/site.conf", &"x".repeat(5000));
    s.repo.commit("big", Some(&k.admin));
    s.repo.push("HEAD");
    assert_refused(
        &s,
        &s.apply(),
        "brings sites/plant-7/site.conf, 5000 bytes, over max_file_bytes (4096)",
        gen_ok,
        conf,
    );
    reset();
    // A symlink leaving the tree.
    fs::remove_file(s.repo.work.join("sites/plant-7/site.conf")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../etc/passwd",
        s.repo.work.join("sites/plant-7/site.conf"),
    )
    .unwrap();
    s.repo.commit("link", Some(&k.admin));
    s.repo.push("HEAD");
    assert_refused(
        &s,
        &s.apply(),
        "brings sites/plant-7/site.conf, a symlink to",
        gen_ok,
        conf,
    );
    fs::remove_file(s.repo.work.join("sites/plant-7/site.conf")).unwrap();
    reset();

    // After all that, a good commit on top goes through.
    s.repo.write("sites/plant-7/site.conf", "threshold = 90\n");
    let good = s.repo.commit("good", Some(&k.pgp_ed));
    s.repo.push(&good);
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 90\n");
    s.fx.ok(&["audit", "verify"]);
}

/// Acceptance 3: signed commits converge over file:// and HTTP; a bad one
/// leaves the previous state running. Merges are verified too.
#[test]
fn signed_commits_converge_over_file_and_http() {
    let s = Setup::new();
    let k = &s.keys;
    let c1 = s.initial();
    s.repo.push(&c1);
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 80\n");
    let audit = s.fx.json(&["audit", "list", "--json"]);
    let text = audit.to_string();
    assert!(text.contains(&c1), "commit id audited");
    assert!(text.contains("ssh:SHA256:"), "signer key id audited");
    // No change: nothing happens.
    s.fx.ok(&["apply"]);
    assert_eq!(s.fx.current_link(), Some(1));

    let server = HttpServer::start(s.repo.bare.parent().unwrap());
    s.configure(&format!("http://127.0.0.1:{}/fleet.git", server.port), "");
    // A branch by site 7 merged by an admin (merge signed with OpenPGP).
    s.repo
        .git()
        .args(["checkout", "-q", "-b", "site7"])
        .status()
        .unwrap();
    s.repo.write("sites/plant-7/site.conf", "threshold = 75\n");
    s.repo.commit("site 7 tuning", Some(&k.site7));
    s.repo
        .git()
        .args(["checkout", "-q", "main"])
        .status()
        .unwrap();
    s.repo.write("README", "fleet\n");
    s.repo.commit("docs", Some(&k.admin));
    let out = s
        .repo
        .git()
        .args(["-c", "gpg.format=openpgp", "-c"])
        .arg(format!("user.signingkey={}", k.pgp_rsa.policy_id()))
        .args([
            "merge",
            "-q",
            "-S",
            "--no-ff",
            "-m",
            "merge site 7",
            "site7",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merge = s.repo.head();
    s.repo.push(&merge);
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 75\n");
    assert_eq!(s.fx.current_link(), Some(2));

    // A bad one over HTTP: refused, the previous state keeps running.
    s.repo.write("sites/plant-7/site.conf", "threshold = 1\n");
    s.repo.commit("unsigned", None);
    s.repo.push("HEAD");
    let out = s.apply();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(s.site_conf(), "threshold = 75\n");
    assert_eq!(s.fx.current_link(), Some(2));

    // Config errors name the key.
    s.configure("file:///nonexistent", "branch = \"a b\"");
    let out = s.apply();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("source.git.branch"),
        "{}",
        stderr(&out)
    );
}

/// A pinned fresh device verifies everything after the pin and refuses
/// histories that do not contain it; a shallow first fetch works and later
/// fetches are incremental.
#[test]
fn pinned_and_shallow_fresh_devices() {
    let s = Setup::new();
    let k = &s.keys;
    let c1 = s.initial();
    s.repo.write("sites/plant-7/site.conf", "threshold = 81\n");
    let pin = s.repo.commit("pin here", Some(&k.admin));
    s.repo.write("sites/plant-7/site.conf", "threshold = 82\n");
    let unsigned = s.repo.commit("unsigned after the pin", None);
    s.repo.write("sites/plant-7/site.conf", "threshold = 83\n");
    let tip = s.repo.commit("signed tip", Some(&k.admin));
    let url = format!("file://{}", s.repo.bare.display());
    s.configure(&url, &format!("pin = {pin:?}"));
    s.repo.push(&tip);
    // The unsigned commit after the pin is found, though the tip is signed.
    let out = s.apply();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("commit {unsigned}: is not signed")),
        "{}",
        stderr(&out)
    );
    // A history without the pin (the commit before it) is refused.
    s.repo.push(&c1);
    let out = s.apply();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("pinned commit"), "{}", stderr(&out));
    // Fixed history on top of the pin: accepted.
    s.repo
        .git()
        .args(["reset", "-q", "--hard", &pin])
        .status()
        .unwrap();
    s.repo.write("sites/plant-7/site.conf", "threshold = 84\n");
    let good = s.repo.commit("signed", Some(&k.admin));
    s.repo.push(&good);
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 84\n");

    // Shallow: a new device fetches one commit, then only what is new.
    let _ = fs::remove_dir_all(&s.fx.state);
    s.configure(&url, "depth = 1");
    s.fx.ok(&["apply"]);
    let shallow = fs::read_to_string(s.fx.state.join("git/repo.git/shallow")).unwrap();
    assert!(shallow.contains(&good), "{shallow}");
    s.repo.write("sites/plant-7/site.conf", "threshold = 85\n");
    s.repo.commit("next", Some(&k.pgp_ed));
    s.repo.push("HEAD");
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 85\n");
}

/// What the debug line `git: revision reads` of a run says: blobs read,
/// blobs hashed for their content address, addresses from the blob map.
fn revision_reads(out: &Output) -> (u64, u64, u64) {
    let err = stderr(out);
    let line = err
        .lines()
        .rfind(|l| l.contains("git: revision reads"))
        .unwrap_or_else(|| panic!("no `git: revision reads` line: {err}"));
    let field = |name: &str| -> u64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"));
        line[at + name.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        field("blobs_read"),
        field("blobs_hashed"),
        field("from_map"),
    )
}

/// A no-change poll of a git device reads no file of the tree: the content
/// addresses come from the blob map the first apply wrote (only the
/// manifest is read, to render it); a changed file is read and hashed
/// once; a bad map is set aside and rebuilt, with the same result.
#[test]
fn a_no_change_poll_reads_no_file_blob() {
    let s = Setup::new();
    let mut manifest = String::from("apiVersion: ferry.dev/v1\nresources:\n");
    for i in 0..20 {
        manifest.push_str(&format!(
            "  - kind: file\n    path: /etc/app/{i}.conf\n    source: files/{i}.conf\n"
        ));
        s.repo
            .write(&format!("files/{i}.conf"), &format!("{i}\n").repeat(10_000));
    }
    s.repo.write("ferry.yaml", &manifest);
    let c1 = s.repo.commit("twenty files", Some(&s.keys.admin));
    s.repo.push(&c1);
    let debug = |s: &Setup| {
        let out = s.fx.run(&["--log-level", "debug", "apply"]);
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };

    // First apply: every file read and hashed once (and read again into
    // the store, its address taken again, from the map), the manifest read.
    let (read, hashed, mapped) = revision_reads(&debug(&s));
    assert_eq!((hashed, mapped), (20, 20));
    assert!(read >= 21, "{read}");
    let map = fs::read_to_string(s.fx.state.join("git/blob-sha256")).unwrap();
    assert_eq!(map.lines().count(), 20, "{map}");
    let bytes: usize = (0..20).map(|i| format!("{i}\n").len() * 10_000).sum();
    assert_eq!(s.fx.last_fetched(), (bytes as u64, 20));

    // No change: no file blob read or hashed.
    let (read, hashed, mapped) = revision_reads(&debug(&s));
    assert_eq!(
        (read, hashed, mapped),
        (1, 0, 20),
        "only the manifest is read"
    );
    assert_eq!(s.fx.current_link(), Some(1));

    // One file changes: it alone is hashed.
    s.repo.write("files/7.conf", "seven\n");
    let c2 = s.repo.commit("seven", Some(&s.keys.admin));
    s.repo.push(&c2);
    let (_, hashed, mapped) = revision_reads(&debug(&s));
    assert_eq!(
        (hashed, mapped),
        (1, 20),
        "19 unchanged, and the fetch of the new one"
    );
    assert_eq!(s.fx.last_fetched(), (6, 1), "only the changed file");
    assert_eq!(
        fs::read_to_string(s.fx.root.join("etc/app/7.conf")).unwrap(),
        "seven\n"
    );

    // A map that does not parse is not used: the poll hashes again, nothing
    // else changes, and the map is written anew.
    fs::write(s.fx.state.join("git/blob-sha256"), "not a map\n").unwrap();
    let out = debug(&s);
    assert!(
        stderr(&out).contains("the blob map is unreadable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(revision_reads(&out), (21, 20, 0));
    assert_eq!(s.fx.current_link(), Some(2));
    let (read, hashed, _) = revision_reads(&debug(&s));
    assert_eq!((read, hashed), (1, 0));
}
