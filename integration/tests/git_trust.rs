//! The git source stricter than git: mode changes count as changes, key
//! validity is judged no earlier than the device's secure time floor (no
//! backdating past an expiry), unsafe tree entries never enter the
//! accepted history, a frozen tip is refused once its signed freshness
//! record is too old, every move of the accepted commit is audited, and a
//! device-side policy the repository cannot widen. Real git, ssh-keygen
//! and gpg throughout.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/gitrepo.rs"]
mod gitrepo;

use std::fs;
use std::process::{Command, Output};

use common::{FERRY, Fixture, stderr};
use gitrepo::{Key, Keys, Repo, run};

const MANIFEST: &str = "apiVersion: ferry.dev/v1\nresources:\n  - kind: file\n    path: /etc/app/site.conf\n    source: sites/plant-7/site.conf\n";

struct Setup {
    fx: Fixture,
    keys: Keys,
    repo: Repo,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let fx = Fixture::new();
        let keys = Keys::new(fx.dir.path());
        let repo = Repo::new(fx.dir.path(), &keys);
        let s = Setup { fx, keys, repo };
        s.configure(extra, "");
        s
    }

    /// `extra` goes into `[source.git]`, `top` before it.
    fn configure(&self, extra: &str, top: &str) {
        fs::write(
            &self.fx.config,
            format!(
                "state_dir = {:?}\n{top}\n[source]\nkind = \"git\"\n[source.git]\nurl = \"file://{}\"\ntrust_dir = {:?}\n{extra}\n[files]\nroot = {:?}\n",
                self.fx.state,
                self.repo.bare.display(),
                self.keys.trust_dir(),
                self.fx.root
            ),
        )
        .unwrap();
    }

    /// Manifest, site file and a policy: admins everything, site 7 its
    /// directory. Committed by the admin, pushed, applied.
    fn start(&self) -> String {
        self.repo.write("ferry.yaml", MANIFEST);
        self.repo
            .write("sites/plant-7/site.conf", "threshold = 80\n");
        self.repo.write(
            "ferry/signers.toml",
            &format!(
                "[[signer]]\nname = \"fleet-admins\"\nkeys = [{:?}, {:?}]\npaths = [\"**\"]\n\n\
                 [[signer]]\nname = \"site-7-admins\"\nkeys = [{:?}]\npaths = [\"sites/plant-7/**\"]\n",
                self.keys.admin.policy_id(),
                self.keys.pgp_ed.policy_id(),
                self.keys.site7.policy_id()
            ),
        );
        self.repo.write("ferry/freshness.toml", &fresh(0));
        let c = self.repo.commit("initial", Some(&self.keys.admin));
        self.repo.push(&c);
        self.fx.ok(&["apply"]);
        c
    }

    fn site_conf(&self) -> String {
        fs::read_to_string(self.fx.root.join("etc/app/site.conf")).unwrap()
    }

    /// Expects `ferry apply` to be refused (exit 4) naming `want`, audited,
    /// with the running generation untouched.
    fn refused(&self, want: &str) -> String {
        let (generation, conf) = (self.fx.current_link(), self.site_conf());
        let out = self.fx.run(&["apply"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{want}: {err}");
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert_eq!(self.fx.current_link(), generation);
        assert_eq!(self.site_conf(), conf);
        let audit = self.fx.json(&["audit", "list", "--json"]);
        let last = audit.as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["event"], "source-refused", "{last}");
        let logged = last["details"]["error"].as_str().unwrap_or_default();
        assert!(logged.contains(want), "audit: {last}");
        err
    }

    /// Back to `commit` (locally and on the server).
    fn reset(&self, commit: &str) {
        run(self.repo.git().args(["reset", "-q", "--hard", commit]));
        self.repo.push(commit);
    }
}

/// A freshness record issued `offset_days` from now.
fn fresh(offset_days: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * offset_days);
    format!("issued = \"{t}\"\n")
}

/// Regression: the scope check compared blob ids only, so a signer scoped
/// to sites/plant-7/** could `chmod +x ferry.yaml`.
#[test]
fn a_mode_only_change_out_of_scope_is_refused() {
    let s = Setup::new("");
    let c1 = s.start();
    let chmod_x = |path: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(s.repo.work.join(path), fs::Permissions::from_mode(0o755)).unwrap();
    };
    chmod_x("ferry.yaml");
    let c2 = s
        .repo
        .commit("make the manifest executable", Some(&s.keys.site7));
    s.repo.push(&c2);
    s.refused("does not allow to change ferry.yaml");
    // The same change by an admin is fine; site 7 in its own directory too.
    s.reset(&c1);
    chmod_x("sites/plant-7/site.conf");
    let c3 = s.repo.commit("executable site file", Some(&s.keys.site7));
    s.repo.push(&c3);
    s.fx.ok(&["apply"]);
}

/// Regression: key validity (SSH valid-before, OpenPGP expiry) was judged
/// at the committer time, which the signer writes: an expired key could
/// sign today with last year's date.
/// A new SSH key `name`, trusted on the device until `date`
/// (`valid-before` in `allowed_signers`).
fn ssh_key_valid_before(s: &Setup, name: &str, date: &str) -> Key {
    let p = s.keys.dir.join("keys").join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name])
        .arg("-f")
        .arg(&p));
    let key = Key::Ssh(p);
    let signers = s.keys.trust_dir().join("allowed_signers");
    let mut text = fs::read_to_string(&signers).unwrap();
    text.push_str(&format!(
        "{name}@example valid-before=\"{date}\" {}\n",
        key.ssh_public()
    ));
    fs::write(&signers, text).unwrap();
    key
}

/// Adds `ids` to the repository's signers policy in a commit by the admin,
/// and applies it.
fn trust_keys(s: &Setup, ids: &[String]) {
    let policy = fs::read_to_string(s.repo.work.join("ferry/signers.toml")).unwrap();
    let listed: String = ids.iter().map(|id| format!("{id:?}, ")).collect();
    s.repo.write(
        "ferry/signers.toml",
        &policy.replacen("keys = [", &format!("keys = [{listed}"), 1),
    );
    let c = s.repo.commit("trust the new keys", Some(&s.keys.admin));
    s.repo.push(&c);
    s.fx.ok(&["apply"]);
}

/// With no `time_floor` configured the floor starts at the binary's build
/// time, not at zero: a key that expired before ferry was built cannot sign
/// a commit backdated into its validity.
#[test]
fn without_a_configured_floor_an_expired_key_cannot_backdate() {
    let s = Setup::new("");
    let expired = ssh_key_valid_before(&s, "until2025", "20250101Z");
    s.start();
    trust_keys(&s, &[expired.policy_id()]);
    s.repo.write("sites/plant-7/site.conf", "threshold = 99\n");
    let backdated = s
        .repo
        .commit_dated("backdated", Some(&expired), Some("2024-06-01T12:00:00Z"));
    s.repo.push(&backdated);
    let err = s.refused("valid before 2025-01-01");
    assert!(err.contains("secure time floor"), "{err}");
}

#[test]
fn an_expired_key_cannot_backdate_past_the_secure_time_floor() {
    let s = Setup::new("");
    // A key valid until 2030 and an OpenPGP key that expires in a day.
    let soon = ssh_key_valid_before(&s, "until2030", "20300101Z");
    let gpg = |args: &[&str]| {
        run(Command::new("gpg")
            .env("GNUPGHOME", &s.keys.gnupg)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args))
    };
    gpg(&[
        "--quick-gen-key",
        "Short Lived <short@example>",
        "ed25519",
        "sign",
        "1d",
    ]);
    let listing =
        String::from_utf8(gpg(&["--list-keys", "--with-colons", "short@example"]).stdout).unwrap();
    let fpr = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .unwrap()
        .trim_matches(':')
        .to_owned();
    let short = Key::Pgp(fpr.clone(), s.keys.gnupg.clone());
    let armored = gpg(&["--armor", "--export", &s.keys.pgp_ed.policy_id(), &fpr]).stdout;
    fs::write(s.keys.trust_dir().join("keyring.asc"), armored).unwrap();
    s.start();
    trust_keys(&s, &[soon.policy_id(), fpr]);
    // Accepted while the keys are valid (the floor is the image's, 2026).
    s.configure("", "time_floor = \"2026-01-01T00:00:00Z\"");
    s.repo.write("sites/plant-7/site.conf", "threshold = 81\n");
    let by_soon = s.repo.commit("by the 2030 key", Some(&soon));
    s.repo.write("sites/plant-7/site.conf", "threshold = 82\n");
    let by_short = s
        .repo
        .commit("by the short-lived OpenPGP key", Some(&short));
    s.repo.push(&by_short);
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 82\n");
    // The device's floor moves past both expiries (an image built in 2031).
    s.configure("", "time_floor = \"2031-01-01T00:00:00Z\"");
    // What was accepted stays valid: a no-change apply succeeds.
    let out = s.fx.run(&["apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // New commits by those keys are judged at the floor, whatever their date.
    s.repo.write("sites/plant-7/site.conf", "threshold = 83\n");
    let backdated = s
        .repo
        .commit_dated("backdated", Some(&soon), Some("2029-06-01T12:00:00Z"));
    s.repo.push(&backdated);
    let err = s.refused("valid before 2030-01-01");
    assert!(
        err.contains("secure time floor") && err.contains(&backdated),
        "{err}"
    );
    s.reset(&by_short);
    s.repo.write("sites/plant-7/site.conf", "threshold = 84\n");
    let expired_pgp = s.repo.commit("after the OpenPGP key expired", Some(&short));
    s.repo.push(&expired_pgp);
    s.refused("expired");
    // Without a floor past the expiry, git's verdict (committer time) stands.
    s.reset(&by_short);
    let _ = by_soon;
    s.repo.write("sites/plant-7/site.conf", "threshold = 85\n");
    let ok = s.repo.commit("by an admin", Some(&s.keys.admin));
    s.repo.push(&ok);
    s.fx.ok(&["apply"]);
    assert_eq!(s.site_conf(), "threshold = 85\n");
}

/// Regression: only files the manifest reads were checked, so a signed
/// commit could bring unsafe entries into the accepted history.
#[test]
fn unsafe_tree_entries_are_refused_naming_them() {
    let s = Setup::new("max_file_bytes = 4096");
    let c1 = s.start();
    let blob = s.repo.blob("x\n");
    let link_out = s.repo.blob("../../../etc/shadow");
    let link_in = s.repo.blob("sites/plant-7/site.conf");
    let subtree = {
        let out = run(s.repo.git().args(["write-tree"]));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let cases = [
        (
            format!("100644 blob {blob}\t.."),
            "brings .., an entry named \"..\"",
        ),
        (format!("100644 blob {blob}\t."), "an entry named \".\""),
        (format!("040000 tree {subtree}\t.git"), "brings .git"),
        (format!("040000 tree {subtree}\t.GiT"), "brings .GiT"),
        (
            format!("160000 commit {c1}\tvendor"),
            "brings vendor, a gitlink",
        ),
        (
            format!("120000 blob {link_out}\tescape"),
            "brings escape, a symlink to \"../../../etc/shadow\"",
        ),
    ];
    for (entry, want) in &cases {
        let bad = s
            .repo
            .commit_with_entry("sneak an entry in", &s.keys.admin, entry);
        s.repo.push(&bad);
        s.refused(want);
        s.reset(&c1);
    }
    // Too large a file, even one the manifest does not read.
    s.repo.write("docs/big.bin", &"b".repeat(5000));
    let big = s.repo.commit("a big file", Some(&s.keys.admin));
    s.repo.push(&big);
    s.refused("brings docs/big.bin, 5000 bytes, over max_file_bytes");
    s.reset(&c1);
    // A symlink that stays inside is fine.
    let ok = s.repo.commit_with_entry(
        "internal link",
        &s.keys.admin,
        &format!("120000 blob {link_in}\tsite-link"),
    );
    s.repo.push(&ok);
    s.fx.ok(&["apply"]);
}

fn faketime(s: &Setup, at: &str, args: &[&str]) -> Output {
    Command::new("faketime")
        .args(["-f", at, FERRY, "--config"])
        .arg(&s.fx.config)
        .args(args)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap()
}

/// Freeze attack: a server (or a stick) serving an old, validly signed tip
/// for ever. With `freshness_max_age`, the tip must carry a recent signed
/// freshness record.
#[test]
fn a_frozen_tip_is_refused_after_the_maximum_age_and_accepted_after_a_fresh_record() {
    let s = Setup::new("freshness_max_age = \"1d\"");
    s.start();
    assert_eq!(s.site_conf(), "threshold = 80\n");
    // Two days later the same tip is served: stale.
    let out = faketime(&s, "+2d", &["apply"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("ferry/freshness.toml") && err.contains("stale"),
        "{err}"
    );
    let audit = s.fx.json(&["audit", "list", "--json"]);
    let last = audit.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "source-refused", "{last}");
    // The release pipeline re-signs the record: accepted again.
    s.repo.write("ferry/freshness.toml", &fresh(2));
    let c = s.repo.commit("freshness", Some(&s.keys.admin));
    s.repo.push(&c);
    let out = faketime(&s, "+2d", &["apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The record's signed time raised the floor: back at the real time the
    // device still judges freshness as of then.
    let floor: i64 = fs::read_to_string(s.fx.state.join("tuf/time-floor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        floor > jiff::Timestamp::now().as_second() + 86_400,
        "{floor}"
    );
    s.fx.ok(&["apply"]);
    // A tip without a record is refused.
    run(s.repo.git().args(["rm", "-q", "ferry/freshness.toml"]));
    let c = s.repo.commit("drop the record", Some(&s.keys.admin));
    s.repo.push(&c);
    s.refused("carries no freshness record ferry/freshness.toml");
}

/// Regression: a verified tip that changed nothing on the device moved
/// the accepted commit forward without an audit entry.
#[test]
fn every_move_of_the_accepted_commit_is_audited() {
    let s = Setup::new("");
    let c1 = s.start();
    s.repo.write("README.md", "not read by the manifest\n");
    let c2 = s.repo.commit("docs only", Some(&s.keys.admin));
    s.repo.push(&c2);
    let out = s.fx.ok(&["apply", "--json"]);
    assert!(out.contains("no-change"), "{out}");
    let accepted =
        s.fx.json(&["audit", "list", "--event", "source-accepted", "--json"]);
    let moves: Vec<&serde_json::Value> = accepted.as_array().unwrap().iter().collect();
    assert_eq!(moves.len(), 2, "{accepted:#}");
    let last = moves[1];
    assert_eq!(last["details"]["commit"], c2.as_str(), "{last}");
    assert_eq!(last["details"]["previous"], c1.as_str(), "{last}");
    assert_eq!(last["details"]["commits"], 1);
    assert!(
        last["details"]["checked"]
            .to_string()
            .contains("signatures")
    );
    // Planning does not move it.
    s.repo.write("README.md", "again\n");
    let c3 = s.repo.commit("docs again", Some(&s.keys.admin));
    s.repo.push(&c3);
    s.fx.ok(&["plan"]);
    let n =
        s.fx.json(&["audit", "list", "--event", "source-accepted", "--json"])
            .as_array()
            .unwrap()
            .len();
    assert_eq!(n, 2);
    s.fx.ok(&["audit", "verify"]);
}

/// A device-side policy (baked into the image) narrows what the
/// repository's policy allows, never widens it; signers can be named by
/// their allowed_signers principal.
#[test]
fn a_device_policy_narrows_the_repository_policy() {
    let s = Setup::new("");
    let c1 = s.start();
    let device_policy = s.fx.dir.path().join("device-policy.toml");
    fs::write(
        &device_policy,
        "[[signer]]\nname = \"admins\"\nprincipals = [\"admin@example\"]\npaths = [\"**\"]\n\n\
         [[signer]]\nname = \"site-7-rules\"\nprincipals = [\"site7@example\"]\npaths = [\"sites/plant-7/rules/**\"]\n",
    )
    .unwrap();
    s.configure(&format!("device_policy = {device_policy:?}"), "");
    // The repository lets site 7 change its directory; the device only its rules.
    s.repo.write("sites/plant-7/site.conf", "threshold = 90\n");
    let c2 = s
        .repo
        .commit("site 7 changes its conf", Some(&s.keys.site7));
    s.repo.push(&c2);
    s.refused("the device's signers policy (source.git.device_policy) does not allow to change sites/plant-7/site.conf");
    s.reset(&c1);
    s.repo.write(
        "sites/plant-7/rules/a.rules",
        "ON x > 1 THEN alert(\"x\")\n",
    );
    let c3 = s.repo.commit("site 7 rules", Some(&s.keys.site7));
    s.repo.push(&c3);
    s.fx.ok(&["apply"]);
    // The repository widening site 7 (signed by an admin) does not widen the device.
    let policy = fs::read_to_string(s.repo.work.join("ferry/signers.toml")).unwrap();
    s.repo.write(
        "ferry/signers.toml",
        &policy.replace("sites/plant-7/**", "**"),
    );
    let c4 = s.repo.commit("site 7 gets everything", Some(&s.keys.admin));
    s.repo
        .write("ferry.yaml", &format!("{MANIFEST}# by site 7\n"));
    let c5 = s
        .repo
        .commit("site 7 edits the manifest", Some(&s.keys.site7));
    let _ = c4;
    s.repo.push(&c5);
    s.refused("the device's signers policy (source.git.device_policy) does not allow to change ferry.yaml");
    // A bad device policy is a configuration error naming the key.
    fs::write(
        &device_policy,
        "[[signer]]\nname = \"x\"\npaths = [\"**\"]\n",
    )
    .unwrap();
    let out = s.fx.run(&["apply"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("source.git.device_policy"),
        "{}",
        stderr(&out)
    );
}

/// The refusal of a rewritten history says what happened.
#[test]
fn a_rewritten_history_is_named_as_such() {
    let s = Setup::new("");
    let c1 = s.start();
    s.repo.write("sites/plant-7/site.conf", "threshold = 81\n");
    let c2 = s.repo.commit("next", Some(&s.keys.admin));
    s.repo.push(&c2);
    s.fx.ok(&["apply"]);
    s.repo.push(&c1);
    s.refused(&format!("commit {c1}: is not a descendant of the last accepted commit {c2} (rollback or rewritten history)"));
    run(s.repo.git().args(["checkout", "-q", "--orphan", "other"]));
    let other = s.repo.commit("unrelated", Some(&s.keys.admin));
    s.repo.push(&other);
    s.refused(&format!(
        "is not a descendant of the last accepted commit {c2} (rollback or rewritten history)"
    ));
}
