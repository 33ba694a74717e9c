//! Bad input: every case exits non-zero with one clear line on stderr that
//! names what and where, and leaves the running generation, the files and
//! the state exactly as they were.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;
use ferry_core::Sha256;

fn good() -> Vec<FileSpec> {
    vec![
        file("/etc/app/a.conf", "alpha\n", "0644"),
        file("/etc/app/b.conf", "bravo\n", "0600"),
    ]
}

/// A fixture with generation 1 (= `good()`) applied.
fn applied() -> Fixture {
    let f = Fixture::new();
    f.publish(&good());
    f.ok(&["apply"]);
    f
}

/// Runs `args`, expects exit `code` and a single stderr line containing all
/// of `needles`; then checks that nothing changed.
fn refused(f: &Fixture, args: &[&str], code: i32, needles: &[&str]) -> String {
    let before_audit = f.audit_len();
    let out = f.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "ferry {args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("ferry: error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing from: {err}");
    }
    untouched(f, before_audit);
    lines[0].to_owned()
}

fn untouched(f: &Fixture, audit_before: usize) {
    assert_eq!(f.current_link(), Some(1));
    assert_eq!(f.snapshot(), expected(&good()));
    let status = f.json(&["status", "--json"]);
    assert_eq!(status["current"]["id"], 1);
    assert_eq!(
        status["open_transitions"].as_array().unwrap().len(),
        0,
        "{status}"
    );
    assert!(f.integrity_ok());
    f.ok(&["audit", "verify"]);
    assert!(f.store_leftovers().is_empty(), "{:?}", f.store_leftovers());
    assert!(f.audit_len() >= audit_before);
    let gens = f.json(&["generations", "--json"]);
    assert!(
        gens.as_array()
            .unwrap()
            .iter()
            .all(|g| g["id"] == 1 || g["current"] == false)
    );
}

fn raw(f: &Fixture, manifest: &str, files: &[(&str, &str)]) {
    f.publish_raw(
        manifest,
        &files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect::<Vec<_>>(),
    );
}

#[test]
fn malformed_yaml_names_line_and_column() {
    let f = applied();
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - kind: file\n   path: /x\n",
        &[],
    );
    refused(
        &f,
        &["apply"],
        3,
        &["manifest ferry.yaml", "line 4, column"],
    );
    refused(&f, &["plan"], 3, &["line 4, column"]);
}

#[test]
fn schema_violation_names_the_json_pointer() {
    let f = applied();
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/ok, source: files/a}\n  - {kind: file, path: relative/path, source: files/a}\n",
        &[("files/a", "a")],
    );
    refused(
        &f,
        &["apply"],
        3,
        &["manifest ferry.yaml", "/resources/1/path"],
    );
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/ok, source: files/a, mode: \"4755\"}\n",
        &[("files/a", "a")],
    );
    refused(&f, &["apply"], 3, &["/resources/0/mode"]);
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/ok, source: files/a, colour: red}\n",
        &[("files/a", "a")],
    );
    refused(&f, &["apply"], 3, &["/resources/0", "colour"]);
}

#[test]
fn unknown_kind_is_named() {
    let f = applied();
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: docker, name: x}\n",
        &[],
    );
    refused(
        &f,
        &["apply"],
        3,
        &["/resources/0/kind", "unknown resource kind \"docker\""],
    );
}

#[test]
fn duplicate_resources_are_refused() {
    let f = applied();
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/x, source: files/a}\n  - {kind: file, path: /etc/y, source: files/a}\n  - {kind: file, path: /etc/x, source: files/b}\n",
        &[("files/a", "a"), ("files/b", "b")],
    );
    refused(
        &f,
        &["apply"],
        3,
        &[
            "/resources/2",
            "duplicate resource file /etc/x",
            "first at /resources/0",
        ],
    );
}

#[test]
fn missing_and_escaping_sources_are_refused() {
    let f = applied();
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/x, source: files/nope}\n",
        &[],
    );
    refused(
        &f,
        &["apply"],
        3,
        &["/resources/0/source", "files/nope", "not found"],
    );
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/x, source: ../../etc/shadow}\n",
        &[],
    );
    refused(
        &f,
        &["apply"],
        3,
        &["/resources/0/source", "'.' and '..' are not allowed"],
    );
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/../x, source: files/a}\n",
        &[("files/a", "a")],
    );
    refused(&f, &["apply"], 3, &["/resources/0/path"]);
    // A symlink inside the revision pointing outside it.
    raw(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/x, source: files/link}\n",
        &[],
    );
    std::os::unix::fs::symlink("/etc/passwd", f.repo.join("files/link")).unwrap();
    refused(&f, &["apply"], 3, &["files/link", "symlink"]);
}

#[test]
fn blob_hash_mismatch_leaves_nothing_behind() {
    let f = applied();
    let pin = Sha256::of(b"what the admin signed\n");
    raw(
        &f,
        &format!(
            "apiVersion: ferry.dev/v1\nresources:\n  - {{kind: file, path: /etc/app/a.conf, source: files/a, sha256: \"{pin}\", length: 6}}\n"
        ),
        &[("files/a", "forged")],
    );
    refused(
        &f,
        &["apply"],
        4,
        &["files/a", "sha256 mismatch", &pin.to_hex()],
    );
    assert!(!f.state.join("store").join(pin.to_hex()).exists());
}

#[test]
fn truncated_blob_is_refused() {
    let f = applied();
    let full = "the whole file, as signed\n";
    let pin = Sha256::of(full.as_bytes());
    raw(
        &f,
        &format!(
            "apiVersion: ferry.dev/v1\nresources:\n  - {{kind: file, path: /etc/app/a.conf, source: files/a, sha256: \"{pin}\", length: {}}}\n",
            full.len()
        ),
        &[("files/a", &full[..10])],
    );
    refused(
        &f,
        &["apply"],
        4,
        &[
            "files/a",
            "truncated",
            &format!("expected {} bytes, got 10", full.len()),
        ],
    );
}

#[test]
fn overlong_blob_is_refused() {
    let f = applied();
    let pin = Sha256::of(b"short");
    raw(
        &f,
        &format!(
            "apiVersion: ferry.dev/v1\nresources:\n  - {{kind: file, path: /etc/app/a.conf, source: files/a, sha256: \"{pin}\", length: 5}}\n"
        ),
        &[("files/a", "short, and then a lot more")],
    );
    refused(
        &f,
        &["apply"],
        4,
        &["files/a", "longer than the declared 5 bytes"],
    );
}

#[test]
fn disk_full_while_staging_is_a_clean_failure() {
    let f = applied();
    f.publish(&[file("/etc/app/a.conf", "a new version\n", "0644")]);
    let before = f.audit_len();
    let out = f
        .cmd(&["apply"])
        .env("FAILPOINTS", "store::write=return")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    untouched(&f, before);
    // The refusal is in the audit journal as a failed transition.
    let audit = f.json(&["audit", "list", "--json"]);
    let last = audit.as_array().unwrap().last().unwrap();
    assert_eq!(last["event"], "failed");
    assert!(
        last["details"]["error"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{last}"
    );
}

#[test]
fn failing_activation_is_rolled_back() {
    let f = applied();
    // A directory where the new file should go: activation fails after
    // a.conf was already changed, and the change is undone.
    fs::create_dir_all(f.root.join("etc/app/z.conf")).unwrap();
    f.publish(&[
        file("/etc/app/a.conf", "changed\n", "0644"),
        file("/etc/app/b.conf", "bravo\n", "0600"),
        file("/etc/app/z.conf", "blocked\n", "0644"),
    ]);
    let out = f.run(&["apply"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("file /etc/app/z.conf")
            && err.contains("not a regular file")
            && err.contains("rolled back to generation 1"),
        "{err}"
    );
    fs::remove_dir(f.root.join("etc/app/z.conf")).unwrap();
    untouched(&f, 0);
}

#[test]
fn unwritable_state_dir_is_reported() {
    let f = Fixture::new();
    f.publish(&good());
    // A state dir below a regular file can never be created, even by root.
    fs::write(f.dir.path().join("plainfile"), "x").unwrap();
    let bad = f.dir.path().join("plainfile/state");
    let out = f
        .cmd(&["--state-dir", bad.to_str().unwrap(), "apply"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot create state directory") && err.contains("plainfile/state"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    assert!(f.snapshot().is_empty());

    // A state dir the process may not write: as root, drop to nobody.
    let f = applied();
    let ro = f.dir.path().join("ro-state");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(FERRY);
        c
    } else {
        std::process::Command::new(FERRY)
    };
    // The config file must be readable by nobody.
    fs::set_permissions(&f.config, fs::Permissions::from_mode(0o644)).unwrap();
    let out = cmd
        .args([
            "--config",
            f.config.to_str().unwrap(),
            "--state-dir",
            ro.to_str().unwrap(),
            "apply",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Owned by root: refused before anything is written (another user's
    // directory could be read or swapped by them).
    if is_root() {
        assert!(
            err.contains("cannot secure the state directory") && err.contains("owned by uid"),
            "{err}"
        );
    } else {
        assert!(
            err.contains("cannot write to state directory") && err.contains("Permission denied"),
            "{err}"
        );
    }
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
    untouched(&f, 0);
}

#[test]
fn bad_config_names_file_line_and_key() {
    let f = applied();
    let cfg = f.dir.path().join("bad.toml");
    fs::write(
        &cfg,
        "state_dir = \"/tmp/x\"\n[source]\nkind = \"dir\"\nflavour = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(FERRY)
        .args(["--config", cfg.to_str().unwrap(), "apply"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("line 4") && err.contains("flavour"),
        "{err}"
    );

    fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[source]\nkind = \"dir\"\n[source.dir]\npath = \"/tmp\"\n",
            f.state
        ),
    )
    .unwrap();
    let out = std::process::Command::new(FERRY)
        .args(["--config", cfg.to_str().unwrap(), "apply"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("source.dir.insecure"), "{err}");
    untouched(&f, 0);
}

#[test]
fn corrupt_state_database_is_detected() {
    let f = applied();
    let db = f.state.join("state.db");
    let mut bytes = fs::read(&db).unwrap();
    // Wreck every page after the header.
    for b in bytes.iter_mut().skip(100) {
        *b = 0xa5;
    }
    fs::write(&db, bytes).unwrap();
    let out = f.run(&["apply"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("state.db") && err.contains("corrupt"), "{err}");
    assert_eq!(f.snapshot(), expected(&good()), "files untouched");
}

#[test]
fn concurrent_ferry_is_refused() {
    let f = applied();
    let lock = fs::OpenOptions::new()
        .write(true)
        .open(f.state.join("lock"))
        .unwrap();
    lock.lock().unwrap();
    f.publish(&[file("/etc/app/a.conf", "new\n", "0644")]);
    refused(&f, &["apply"], 5, &["in use by another ferry"]);
    drop(lock);
    f.ok(&["apply"]);
}
