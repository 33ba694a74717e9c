//! Real fault environments: a disk that fills up (a size-limited tmpfs, not
//! an injected error), a state directory on a file system remounted
//! read-only, clock jumps back and forth (faketime) against TUF expiry and
//! the secure time floor, and a link between device and repository that
//! drops, stalls, truncates, corrupts and drips. After each fault the
//! device runs exactly one revision, the database passes its integrity
//! check, the audit chain verifies, and without the fault it converges.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tuf::{Device, Fault};
use common::*;

/// A tmpfs mounted for the test's lifetime (root only: CI runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        assert!(
            is_root(),
            "mounting a size-limited tmpfs needs root: run integration/run-tests as root"
        );
        fs::create_dir_all(at).unwrap();
        tool(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                at.to_str().unwrap(),
            ],
        );
        Tmpfs(at.to_owned())
    }

    fn remount(&self, opts: &str) {
        tool(
            "mount",
            &["-o", &format!("remount,{opts}"), self.0.to_str().unwrap()],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn big(n: usize) -> String {
    (0..n).map(|i| format!("{i:08}\n")).collect()
}

/// Nothing half-done: one generation current, database and chain intact.
fn consistent(f: &Fixture, label: &str) {
    f.current_link();
    let st = f.json(&["status", "--json"]);
    assert!(
        st["open_transitions"].as_array().unwrap().is_empty(),
        "{label}: {st:#}"
    );
    assert!(f.integrity_ok(), "{label}: integrity_check");
    f.ok(&["audit", "verify"]);
    let temps: Vec<String> = f
        .snapshot()
        .into_keys()
        .filter(|k| k.contains(".ferry-tmp"))
        .collect();
    assert!(temps.is_empty(), "{label}: {temps:?}");
}

#[test]
fn a_full_disk_fails_cleanly_and_the_next_apply_succeeds() {
    let f = Fixture::new();
    let state = Tmpfs::mount(&f.state, "1m");
    let small = [file("/etc/a.conf", "small\n", "0644")];
    f.publish(&small);
    f.ok(&["apply"]);
    // 2 MiB of content into a 1 MiB state directory: staging fails.
    let large = [
        file("/etc/a.conf", "small\n", "0644"),
        file("/opt/big.dat", &big(230_000), "0644"),
    ];
    f.publish(&large);
    let out = f.run(&["apply"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(f.snapshot(), expected(&small));
    assert_eq!(f.current_link(), Some(1));
    consistent(&f, "state dir full");
    // Room again: the same apply goes through.
    state.remount("size=16m");
    f.ok(&["apply"]);
    assert_eq!(f.snapshot(), expected(&large));
    // Now the files root fills up during activation: rolled back (exit 7).
    let root = Tmpfs::mount(&f.root.join("opt/full"), "64k");
    let too_big = [
        file("/etc/a.conf", "changed\n", "0644"),
        file("/opt/big.dat", &big(230_000), "0644"),
        file("/opt/full/x.dat", &big(20_000), "0644"),
    ];
    f.publish(&too_big);
    let out = f.run(&["apply"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(f.snapshot(), expected(&large));
    consistent(&f, "files root full");
    drop(root);
    f.ok(&["apply"]);
    assert_eq!(f.snapshot(), expected(&too_big));
    consistent(&f, "after");
}

/// A device downgraded to an older ferry (e.g. the other firmware slot)
/// finds a state database migrated by a newer one: every command refuses it
/// (exit 8, naming both versions) and leaves it byte for byte as it was, so
/// booting the newer ferry again carries on.
#[test]
fn a_state_database_from_a_newer_ferry_is_refused_untouched() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a.conf", "one\n", "0644")]);
    f.ok(&["apply"]);
    let db = f.state.join("state.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "user_version", 999).unwrap();
    }
    let before = fs::read(&db).unwrap();
    for args in [&["status"][..], &["apply"], &["generations", "--json"]] {
        let out = f.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(8), "{args:?}: {err}");
        assert!(err.contains("newer than this ferry"), "{args:?}: {err}");
        assert!(err.contains("999"), "{args:?}: {err}");
    }
    assert_eq!(fs::read(&db).unwrap(), before, "the database was changed");
    assert_eq!(f.current_link(), Some(1));
}

#[test]
fn a_read_only_state_dir_refuses_changes_and_still_reports() {
    let f = Fixture::new();
    let state = Tmpfs::mount(&f.state, "16m");
    let one = [file("/etc/a.conf", "one\n", "0644")];
    f.publish(&one);
    f.ok(&["apply"]);
    state.remount("ro");
    f.publish(&[file("/etc/a.conf", "two\n", "0644")]);
    let out = f.run(&["apply"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(f.snapshot(), expected(&one));
    let st = f.json(&["status", "--json"]);
    assert_eq!(st["current"]["id"], 1, "{st:#}");
    f.ok(&["audit", "verify"]);
    state.remount("rw");
    f.ok(&["apply"]);
    consistent(&f, "writable again");
}

fn faketime_run(d: &Device, at: &str, args: &[&str]) -> std::process::Output {
    Command::new("faketime")
        .arg("-f")
        .arg(at)
        .arg(FERRY)
        .arg("--config")
        .arg(&d.fx.config)
        .args(args)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap()
}

#[test]
fn clock_jumps_never_reopen_expired_metadata() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/a", "1\n", "0644")]);
    // The clock jumps 100 days ahead: metadata (valid for a year) verifies,
    // and the floor rises with it.
    let out = faketime_run(&d, "+100d", &["apply", "--no-reboot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let floor_at = |d: &Device| -> i64 {
        fs::read_to_string(d.fx.state.join("tuf/time-floor"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let now = jiff::Timestamp::now().as_second();
    assert!(
        floor_at(&d) > now + 99 * 86_400,
        "the floor follows the clock forward"
    );
    // Back to the real time: still fine (expiry is judged at the floor).
    d.publish(&[file("/etc/a", "2\n", "0644")]);
    d.fx.ok(&["apply", "--no-reboot"]);
    // 400 days ahead everything has expired: refused, the floor stays.
    d.publish(&[file("/etc/a", "3\n", "0644")]);
    let out = faketime_run(&d, "+400d", &["apply", "--no-reboot"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(
        floor_at(&d) < now + 101 * 86_400,
        "a failed refresh does not move the floor"
    );
    // Metadata that expires before the floor is refused even though the
    // clock (jumped back) says it is valid: the device has been later.
    d.repo.run("expire", &["timestamp", "--days", "30"]);
    let out = d.fx.run(&["apply", "--no-reboot"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(d.fx.root.join("etc/a")).unwrap(), "2\n");
    // A timestamp valid past the floor is accepted.
    d.repo.run("expire", &["timestamp", "--days", "200"]);
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(fs::read_to_string(d.fx.root.join("etc/a")).unwrap(), "3\n");
    consistent(&d.fx, "after the clock jumps");
}

#[test]
fn a_faulty_link_never_leaves_a_half_applied_device() {
    let d = Device::new(&[]);
    let rev = |n: usize| {
        vec![
            file("/etc/a.conf", &format!("rev {n}\n"), "0644"),
            file("/opt/data.bin", &big(2_000 + n), "0644"),
        ]
    };
    d.publish(&rev(0));
    d.fx.ok(&["apply", "--no-reboot"]);
    let mut rng = Rng(0xfa17);
    let mut applied = 0;
    let faults = [
        Fault::Stall,
        Fault::Endless,
        Fault::CutAfter(7),
        Fault::CutAfter(5_000),
        Fault::BitFlip(3),
        Fault::BitFlip(4_001),
        Fault::Drip,
    ];
    for round in 1..=16 {
        d.publish(&rev(round));
        // Every path the device fetches for this revision is a candidate.
        d.server.clear_requests();
        let probe = d.fx.run(&["plan", "--exit-code"]);
        assert!(probe.status.code() == Some(10), "{}", stderr(&probe));
        let paths: Vec<String> = d.server.requests().into_iter().collect();
        let path = paths[rng.below(paths.len())].clone();
        let fault = faults[rng.below(faults.len())];
        d.server.fault(&path, Some(fault));
        let out = d.fx.run(&["apply", "--no-reboot"]);
        d.server.fault(&path, None);
        let label = format!("round {round}: {fault:?} on {path}");
        match out.status.code() {
            Some(0) => applied += 1,
            Some(1 | 4) => {}
            other => panic!("{label}: exit {other:?}: {}", stderr(&out)),
        }
        let snap = d.fx.snapshot();
        assert!(
            (0..=round).any(|n| snap == expected(&rev(n))),
            "{label}: the files are no revision's"
        );
        consistent(&d.fx, &label);
    }
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(d.fx.snapshot(), expected(&rev(16)));
    println!(
        "{applied} of 16 faulty rounds still applied (the fault hit a cached or retried fetch)"
    );
}
