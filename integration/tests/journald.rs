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

#[test]
fn audit_events_go_to_journald_with_structured_fields() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    let run = f.dir.path().join("run");
    fs::create_dir_all(run.join("systemd/journal")).unwrap();
    let sock = UnixDatagram::bind(run.join("systemd/journal/socket")).unwrap();
    sock.set_nonblocking(true).unwrap();

    let script = format!(
        "mount --bind {run:?} /run && exec {FERRY:?} --config {:?} apply",
        f.config
    );
    let mut unshare = std::process::Command::new("unshare");
    if !is_root() {
        // Without root, a user namespace grants the mount.
        unshare.arg("--map-root-user");
    }
    let out = unshare
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = sock.recv(&mut buf) {
        entries.push(parse(&buf[..n]));
    }
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
