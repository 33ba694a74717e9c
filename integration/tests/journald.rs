//! Audit events reach journald with structured fields. A private mount
//! namespace puts a test socket at /run/systemd/journal/socket, where
//! tracing-journald sends its datagrams, and the test reads them with the
//! journal's native protocol.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixDatagram;

use common::*;

/// Parses one datagram of the journal's native protocol.
fn parse(mut d: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').unwrap();
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            d = &d[nl + 1..];
        } else {
            // KEY\n<little-endian u64 length><value>\n
            let key = String::from_utf8_lossy(line).into_owned();
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &d[nl + 9..nl + 9 + len];
            fields.insert(key, String::from_utf8_lossy(value).into_owned());
            d = &d[nl + 9 + len + 1..];
        }
    }
    fields
}

/// Runs `ferry ARGS` (with `env`) with `run` mounted as /run.
fn in_private_run(
    f: &Fixture,
    run: &std::path::Path,
    env: &str,
    args: &[&str],
) -> std::process::Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let script = format!(
        "mount --bind {run:?} /run && {env} exec {FERRY:?} --config {:?} {}",
        f.config,
        quoted.join(" ")
    );
    let mut unshare = std::process::Command::new("unshare");
    if !is_root() {
        // Without root, a user namespace grants the mount.
        unshare.arg("--map-root-user");
    }
    let out = unshare
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_remove("FERRY_LOG_LEVEL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// Runs `ferry ARGS` with a private /run holding a journal socket; returns
/// every datagram it sent, parsed.
fn journal_of(f: &Fixture, args: &[&str]) -> Vec<BTreeMap<String, String>> {
    journal_with(f, "", args)
}

/// `journal_of` with environment assignments (`FERRY_LOG_LEVEL=debug`).
fn journal_with(f: &Fixture, env: &str, args: &[&str]) -> Vec<BTreeMap<String, String>> {
    let run = f.dir.path().join("run");
    let sock_path = run.join("systemd/journal/socket");
    let _ = fs::remove_file(&sock_path);
    fs::create_dir_all(run.join("systemd/journal")).unwrap();
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // Read while ferry runs: a full socket buffer would block its sends.
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut idle = 0;
        while idle < 10 {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    idle = 0;
                    entries.push(parse(&buf[..n]));
                }
                Err(_) => idle += 1,
            }
        }
        entries
    });
    in_private_run(f, &run, env, args);
    // The reader stops after two quiet seconds.
    reader.join().unwrap()
}

/// Whether the reconcile's debug events (each decided action) are there.
fn decisions(entries: &[BTreeMap<String, String>]) -> bool {
    entries.iter().any(|e| e.contains_key("FERRY_ACTION"))
}

#[test]
fn the_journal_follows_the_log_level() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    // Default: info and above (the audit events among them), no debug.
    let entries = journal_of(&f, &["apply"]);
    assert!(!decisions(&entries), "{entries:#?}");
    assert!(entries.iter().any(|e| e.contains_key("FERRY_SEQ")));
    // FERRY_LOG_LEVEL=debug: the reconcile's decisions reach the journal.
    f.publish(&[file("/etc/a", "2\n", "0644")]);
    let entries = journal_with(&f, "FERRY_LOG_LEVEL=debug", &["apply"]);
    assert!(decisions(&entries), "{entries:#?}");
    // --log-level error: no info lines (tracing-journald: error is
    // priority 3), but every audit event still.
    f.publish(&[file("/etc/a", "3\n", "0644")]);
    let entries = journal_of(&f, &["--log-level", "error", "apply"]);
    assert!(
        entries
            .iter()
            // (An empty one came as a memfd, which this reader skips.)
            .all(|e| e.is_empty()
                || e.contains_key("FERRY_SEQ")
                || e.get("PRIORITY").is_some_and(|p| p.as_str() <= "3")),
        "{entries:#?}"
    );
    assert!(entries.iter().any(|e| e.contains_key("FERRY_SEQ")));
}

#[test]
fn without_a_journal_socket_the_lines_go_to_stderr_with_the_time() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    // Started by systemd (JOURNAL_STREAM set), but /run has no journal.
    let run = f.dir.path().join("empty-run");
    fs::create_dir_all(&run).unwrap();
    let out = in_private_run(
        &f,
        &run,
        "JOURNAL_STREAM=8:9",
        &["--log-level", "info", "apply"],
    );
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("INFO"))
        .unwrap_or_else(|| panic!("no info line on stderr:\n{err}"));
    // RFC 3339 time first: stderr is not a terminal here.
    let stamp = line.split_whitespace().next().unwrap();
    assert!(
        stamp.len() >= 20 && stamp.as_bytes()[4] == b'-' && stamp.contains('T'),
        "{line}"
    );
}

#[test]
fn audit_events_go_to_journald_with_structured_fields() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    let entries = journal_of(&f, &["apply"]);
    let audit: Vec<&BTreeMap<String, String>> = entries
        .iter()
        .filter(|e| e.contains_key("FERRY_SEQ"))
        .collect();
    let journal_seqs: Vec<u64> = audit
        .iter()
        .map(|e| e["FERRY_SEQ"].parse().unwrap())
        .collect();
    let db = f.json(&["audit", "list", "--json"]);
    let db_seqs: Vec<u64> = db
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(journal_seqs, db_seqs, "every audit entry, once, in order");
    let confirmed = audit
        .iter()
        .find(|e| e["FERRY_EVENT"] == "confirmed")
        .unwrap();
    assert_eq!(confirmed["FERRY_GENERATION"], "1");
    assert_eq!(confirmed["FERRY_ACTOR"], "local-dir (unsigned)");
    assert_eq!(confirmed["SYSLOG_IDENTIFIER"], "ferry");
    let details: serde_json::Value = serde_json::from_str(&confirmed["FERRY_DETAILS"]).unwrap();
    assert_eq!(details["kind"], "apply");
}

#[test]
fn secrets_do_not_reach_the_journal() {
    let f = Fixture::new();
    f.write_config("ferry.yaml.j2");
    f.publish_tree(&data_dir().join("fleet/repo"));
    let facts = data_dir().join("fleet/facts/gw-a.toml");
    let entries = journal_of(
        &f,
        &[
            "--log-level",
            "trace",
            "--facts",
            facts.to_str().unwrap(),
            "apply",
        ],
    );
    assert!(entries.len() > 5, "the apply was journaled");
    for e in &entries {
        for v in e.values() {
            assert!(
                !v.contains("gw-a01-S3CRET-7f2b"),
                "secret in journal entry {e:?}"
            );
        }
    }
    let creds = fs::read_to_string(f.root.join("etc/collector/credentials")).unwrap();
    assert!(creds.contains("gw-a01-S3CRET-7f2b"));
}
