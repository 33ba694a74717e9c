//! Tampering with the audit journal: editing or deleting any row makes
//! `ferry audit verify` fail (exit 4) and name that entry.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;

use common::*;

/// A state directory with a few transitions' worth of audit entries.
fn history() -> Fixture {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644"), file("/etc/b", "1\n", "0644")]);
    f.ok(&["apply"]);
    f.publish(&[file("/etc/a", "2\n", "0644")]);
    f.ok(&["apply"]);
    f.ok(&["rollback"]);
    f.ok(&["generations", "pin", "1"]);
    f
}

/// Runs `sql` on a copy of the state database, verifies the copy.
fn verify_after(f: &Fixture, case: &str, sql: &str) -> (Option<i32>, String) {
    let copy = f
        .dir
        .path()
        .join(format!("tampered-{}", case.replace(' ', "-")));
    fs::create_dir_all(&copy).unwrap();
    fs::copy(f.state.join("state.db"), copy.join("state.db")).unwrap();
    let conn = rusqlite::Connection::open(copy.join("state.db")).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    let out = f
        .cmd(&["--state-dir", copy.to_str().unwrap(), "audit", "verify"])
        .output()
        .unwrap();
    (out.status.code(), stderr(&out))
}

#[test]
fn intact_journal_verifies() {
    let f = history();
    let out = f.ok(&["audit", "verify"]);
    let n = f.audit_len();
    assert!(n > 20, "{n}");
    assert!(out.contains(&format!("{n} entries verified")), "{out}");
    let j = f.json(&["audit", "verify", "--json"]);
    assert_eq!(j["ok"], true);
    assert_eq!(j["entries"], n);
}

#[test]
fn editing_any_column_of_any_row_is_named() {
    let f = history();
    // Work on a checkpointed database file.
    f.db()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let n = f.audit_len();
    for seq in 1..=n {
        for (col, value) in [
            ("details", "'{\"forged\":true}'"),
            ("event", "'confirmed'"),
            ("actor", "'someone-else'"),
            ("time_ms", "time_ms + 1"),
            ("generation", "coalesce(generation, 0) + 7"),
            (
                "hash",
                "'0000000000000000000000000000000000000000000000000000000000000000'",
            ),
        ] {
            let case = format!("{col} {seq}");
            let (code, err) = verify_after(
                &f,
                &case,
                &format!("UPDATE audit SET {col} = {value} WHERE seq = {seq}"),
            );
            if col == "event" && err.is_empty() {
                // The entry was already 'confirmed': nothing changed.
                continue;
            }
            assert_eq!(code, Some(4), "{case}: {err}");
            assert!(
                err.contains(&format!("audit entry {seq}:")),
                "{case}: {err}"
            );
        }
    }
}

#[test]
fn deleting_any_row_is_named() {
    let f = history();
    f.db()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let n = f.audit_len();
    for seq in 1..=n {
        let (code, err) = verify_after(
            &f,
            &format!("delete {seq}"),
            &format!("DELETE FROM audit WHERE seq = {seq}"),
        );
        assert_eq!(code, Some(4), "delete {seq}: {err}");
        assert!(
            err.contains(&format!("audit entry {seq}: missing")),
            "delete {seq}: {err}"
        );
    }
    // Deleting the whole tail, too.
    let (code, err) = verify_after(
        &f,
        "delete tail",
        &format!("DELETE FROM audit WHERE seq > {}", n - 3),
    );
    assert_eq!(code, Some(4));
    assert!(
        err.contains(&format!("audit entry {}: missing", n - 2)),
        "{err}"
    );
}

#[test]
fn rewriting_the_chain_without_the_head_is_detected() {
    let f = history();
    f.db()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    // An attacker appends a forged entry with a well-formed hash but does
    // not (or cannot) move the recorded head.
    let (code, err) = verify_after(
        &f,
        "append",
        "INSERT INTO audit (seq, time_ms, generation, event, actor, details, hash)
         SELECT seq + 1, time_ms, generation, event, actor, details, hash FROM audit ORDER BY seq DESC LIMIT 1",
    );
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("inserted?"), "{err}");
}

/// Regression: transitions, activations and audit entries were never
/// pruned, so the database (and with it every open) grew for ever. Gc now
/// keeps `state.keep_transitions` settled transitions and
/// `state.keep_audit_entries` audit entries; the chain stays verifiable
/// from the checkpoint of what was pruned.
#[test]
fn gc_prunes_history_and_the_chain_still_verifies() {
    let f = Fixture::new();
    let conf = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        format!("{conf}[state]\nkeep_transitions = 5\nkeep_audit_entries = 100\n"),
    )
    .unwrap();
    for i in 0..40 {
        f.publish(&[file("/etc/a.conf", &format!("v{i}\n"), "0644")]);
        f.ok(&["apply"]);
        f.ok(&["gc"]);
    }
    let db = f.db();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    // Gc transitions count too; at most the kept settled ones remain.
    assert!(count("SELECT COUNT(*) FROM transitions") <= 6);
    let audit = count("SELECT COUNT(*) FROM audit");
    assert!((100..=130).contains(&audit), "{audit} audit rows kept");
    assert!(count("SELECT MIN(seq) FROM audit") > 1);
    let out = f.ok(&["audit", "verify"]);
    assert!(out.contains("audit chain ok"), "{out}");
    let pruned = f.ok(&["audit", "list", "--event", "audit-pruned", "--json"]);
    assert!(pruned.contains("through_hash"), "{pruned}");
    // The checkpoint is vouched for by the chain: changing it is detected.
    db.execute(
        "UPDATE meta SET value = '0000000000000000000000000000000000000000000000000000000000000000' WHERE key = 'audit_base_hash'",
        [],
    )
    .unwrap();
    let out = f.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // Rollback and status still work on the pruned history.
    let st = f.json(&["status", "--json"]);
    assert_eq!(st["current"]["id"], 40, "{st:#}");
}
