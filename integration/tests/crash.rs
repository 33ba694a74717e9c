//! Crash safety: the real binary is killed at every failpoint of apply,
//! rollback and gc, by abort(3) at the failpoint and by SIGKILL while it
//! waits there. After a restart, `current` names exactly the old or the new
//! generation and the files on disk are exactly that generation's, the
//! database passes `PRAGMA integrity_check`, the audit chain verifies, and
//! another apply converges to an empty plan.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use ferry_engine::failpoints as fp;

fn rev_a() -> Vec<FileSpec> {
    vec![
        file("/etc/app/a.conf", "alpha v1\n", "0644"),
        file("/etc/app/b.conf", "bravo v1\n", "0600"),
        file("/etc/app/gone.conf", "removed in B\n", "0644"),
    ]
}

fn rev_b() -> Vec<FileSpec> {
    vec![
        file("/etc/app/a.conf", "alpha v2\n", "0640"),
        file("/etc/app/b.conf", "bravo v1\n", "0600"),
        file("/etc/app/new/c.conf", "new in B\n", "0644"),
    ]
}

fn rev_c() -> Vec<FileSpec> {
    vec![file("/etc/app/a.conf", "alpha v3\n", "0644")]
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Abort,
    Kill,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// gen 1 = A is current; `ferry apply` of B.
    Apply,
    /// gen 1 = A, gen 2 = B current; `ferry rollback` to 1.
    Rollback,
    /// gens 1..3 = A, B, C, 3 current; `ferry gc` collects 1.
    Gc,
}

fn setup(s: Scenario) -> Fixture {
    let f = Fixture::new();
    if s == Scenario::Gc {
        // Left for the `ferry gc` under test, not collected by the applies.
        f.keep_generations();
    }
    f.publish(&rev_a());
    f.ok(&["apply"]);
    match s {
        Scenario::Apply => f.publish(&rev_b()),
        Scenario::Rollback => {
            f.publish(&rev_b());
            f.ok(&["apply"]);
        }
        Scenario::Gc => {
            f.publish(&rev_b());
            f.ok(&["apply"]);
            f.publish(&rev_c());
            f.ok(&["apply"]);
        }
    }
    f
}

fn command(s: Scenario) -> &'static [&'static str] {
    match s {
        Scenario::Apply => &["apply"],
        Scenario::Rollback => &["rollback"],
        Scenario::Gc => &["gc"],
    }
}

/// Runs the scenario's command, crashing the `nth` time it reaches
/// failpoint `point`, with `failpoints` armed; asserts that it really
/// crashed there.
fn crash(f: &Fixture, s: Scenario, point: &str, nth: usize, mode: Mode, failpoints: Option<&str>) {
    let how = match mode {
        Mode::Abort => "abort",
        Mode::Kill => "hang",
    };
    let spec = format!("{point}:{how}:{nth}");
    let mut cmd = f.cmd(command(s));
    cmd.env("FERRY_CRASH_AT", &spec);
    if let Some(fps) = failpoints {
        cmd.env("FAILPOINTS", fps);
    }
    match mode {
        Mode::Abort => {
            let out = cmd.output().unwrap();
            assert_eq!(
                out.status.signal(),
                Some(6),
                "{s:?} at {spec}: expected SIGABRT, got {:?}; stderr: {}",
                out.status,
                stderr(&out)
            );
        }
        Mode::Kill => {
            let mut child = cmd
                .stderr(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen = Vec::new();
            let reached = loop {
                match lines.next() {
                    Some(Ok(l)) if l.contains("failpoint") && l.contains("reached") => break true,
                    Some(Ok(l)) => seen.push(l),
                    _ => break false,
                }
                assert!(Instant::now() < deadline, "timed out waiting for {spec}");
            };
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert!(
                reached,
                "{s:?}: never reached {spec} ({status:?}); stderr: {seen:?}"
            );
            assert_eq!(status.signal(), Some(9));
        }
    }
}

/// The checks after a crash; returns the generation that survived.
fn check_recovered(f: &Fixture, s: Scenario, label: &str) -> u64 {
    // Before any restart: `current` must not dangle (checked by current_link).
    let before = f.current_link();
    let (old, new, old_files, new_files) = match s {
        Scenario::Apply => (1, 2, rev_a(), rev_b()),
        Scenario::Rollback => (2, 1, rev_b(), rev_a()),
        Scenario::Gc => (3, 3, rev_c(), rev_c()),
    };
    assert!(
        before == Some(old) || before == Some(new),
        "{label}: current link {before:?} before restart"
    );

    let out = f.ok(&["recover"]);
    assert!(out.contains("recovered"), "{label}: {out}");
    let now = f
        .current_link()
        .unwrap_or_else(|| panic!("{label}: no current after recovery"));
    assert!(
        now == old || now == new,
        "{label}: current {now} is neither {old} nor {new}"
    );
    let want = if now == old {
        expected(&old_files)
    } else {
        expected(&new_files)
    };
    assert_eq!(
        f.snapshot(),
        want,
        "{label}: files are not exactly generation {now}"
    );

    let status = f.json(&["status", "--json"]);
    assert_eq!(
        status["current"]["id"], now,
        "{label}: database disagrees with link"
    );
    assert_eq!(
        status["open_transitions"].as_array().unwrap().len(),
        0,
        "{label}: {status}"
    );
    assert!(f.integrity_ok(), "{label}: integrity_check");
    f.ok(&["audit", "verify"]);
    // A partial blob may stay for the next apply to resume; it must be
    // one of the blobs being staged (named by its digest).
    for name in f.store_leftovers() {
        assert!(
            name.starts_with(".tmp-") && name.len() == 5 + 64,
            "{label}: {name}"
        );
    }
    now
}

fn converge(f: &Fixture, s: Scenario, label: &str) {
    match s {
        Scenario::Gc => {
            f.ok(&["gc"]);
            let ids = f.generation_ids();
            assert_eq!(
                ids,
                vec![2, 3],
                "{label}: gc must keep current and previous only"
            );
        }
        Scenario::Apply | Scenario::Rollback => {
            f.ok(&["apply"]);
        }
    }
    let out = f.run(&["plan", "--exit-code"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{label}: plan not empty after apply: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let files = if s == Scenario::Gc { rev_c() } else { rev_b() };
    assert_eq!(f.snapshot(), expected(&files), "{label}: not converged");
    f.ok(&["audit", "verify"]);
    assert!(f.integrity_ok());
    assert!(
        f.store_leftovers().is_empty(),
        "{label}: {:?}",
        f.store_leftovers()
    );
}

/// The failpoints each command passes through on its normal path.
fn path_of(s: Scenario) -> Vec<&'static str> {
    match s {
        Scenario::Apply => vec![
            fp::STATE_BEFORE_COMMIT,
            fp::PLANNED,
            fp::STORE_WRITE,
            fp::STORE_BEFORE_RENAME,
            fp::GENERATION_BEFORE_RENAME,
            fp::STAGED,
            fp::ACTIVATE_BEFORE_APPLY,
            fp::ACTIVATE_AFTER_APPLY,
            fp::SWITCH_BEFORE_RENAME,
            fp::SWITCH_AFTER_RENAME,
            fp::SWITCHED,
        ],
        Scenario::Rollback => vec![
            fp::PLANNED,
            fp::STAGED,
            fp::ACTIVATE_BEFORE_APPLY,
            fp::ACTIVATE_AFTER_APPLY,
            fp::SWITCH_BEFORE_RENAME,
            fp::SWITCH_AFTER_RENAME,
            fp::SWITCHED,
        ],
        Scenario::Gc => vec![fp::GC_PLANNED, fp::GC_AFTER_GENERATION, fp::GC_AFTER_BLOB],
    }
}

fn run_scenario(s: Scenario) {
    for point in path_of(s) {
        for mode in [Mode::Abort, Mode::Kill] {
            let label = format!("{s:?} crash at {point} by {mode:?}");
            let f = setup(s);
            crash(&f, s, point, 1, mode, None);
            check_recovered(&f, s, &label);
            converge(&f, s, &label);
        }
    }
}

#[test]
fn crash_during_apply_at_every_failpoint() {
    run_scenario(Scenario::Apply);
}

#[test]
fn crash_during_rollback_at_every_failpoint() {
    run_scenario(Scenario::Rollback);
}

#[test]
fn crash_during_gc_at_every_failpoint() {
    run_scenario(Scenario::Gc);
}

#[test]
fn crash_between_activations_is_undone() {
    // Killed after the second of three activations: a mixed state on disk
    // that recovery must undo completely.
    for point in [fp::ACTIVATE_BEFORE_APPLY, fp::ACTIVATE_AFTER_APPLY] {
        for mode in [Mode::Abort, Mode::Kill] {
            let label = format!("apply crash at 2nd {point} by {mode:?}");
            let f = setup(Scenario::Apply);
            crash(&f, Scenario::Apply, point, 2, mode, None);
            let now = check_recovered(&f, Scenario::Apply, &label);
            assert_eq!(now, 1, "{label}: an interrupted activation is undone");
            converge(&f, Scenario::Apply, &label);
        }
    }
}

#[test]
fn crash_while_undoing_a_failed_activation() {
    // The third activation fails, the undo of the first two is interrupted:
    // recovery finishes the undo.
    for mode in [Mode::Abort, Mode::Kill] {
        let label = format!("crash in undo by {mode:?}");
        let f = setup(Scenario::Apply);
        crash(
            &f,
            Scenario::Apply,
            fp::UNDO_AFTER_STEP,
            1,
            mode,
            Some("activate::before-apply=2*off->return"),
        );
        let now = check_recovered(&f, Scenario::Apply, &label);
        assert_eq!(now, 1, "{label}");
        converge(&f, Scenario::Apply, &label);
    }
}

/// How an apply that removes a taken-over file gets undone.
#[derive(Clone, Copy, Debug)]
enum Undone {
    /// A later activation fails; the apply rolls back (exit 7).
    ActivationFails,
    /// The process dies after the remove; `recover` undoes it.
    Crash,
    /// A later activation fails and the process dies while undoing;
    /// `recover` finishes the undo.
    InterruptedRollback,
}

/// Regression: undoing an apply that removed a taken-over file lost the
/// `originals` row (the remove's step commit deleted it), so the next
/// apply deleted the OS's file instead of restoring it, and gc collected
/// the original's blob.
#[test]
fn taken_over_file_survives_an_undone_remove() {
    for how in [
        Undone::ActivationFails,
        Undone::Crash,
        Undone::InterruptedRollback,
    ] {
        let label = format!("{how:?}");
        let f = Fixture::new();
        let os_file = f.root.join("etc/a/pre.conf");
        fs::create_dir_all(os_file.parent().unwrap()).unwrap();
        fs::write(&os_file, "shipped by the OS\n").unwrap();
        f.publish(&[file("/etc/a/pre.conf", "managed\n", "0644")]);
        f.ok(&["apply"]);
        assert_eq!(fs::read_to_string(&os_file).unwrap(), "managed\n");
        // Y drops pre.conf (step 1, restores the OS content) and adds
        // z.conf (step 2, where things go wrong).
        let y = [file("/etc/z.conf", "zulu\n", "0644")];
        f.publish(&y);
        match how {
            Undone::ActivationFails => {
                let out = f
                    .cmd(&["apply"])
                    .env("FAILPOINTS", "activate::before-apply=1*off->return")
                    .output()
                    .unwrap();
                assert_eq!(out.status.code(), Some(7), "{label}: {}", stderr(&out));
            }
            Undone::Crash => {
                crash(
                    &f,
                    Scenario::Apply,
                    fp::ACTIVATE_BEFORE_APPLY,
                    2,
                    Mode::Abort,
                    None,
                );
                f.ok(&["recover"]);
            }
            Undone::InterruptedRollback => {
                crash(
                    &f,
                    Scenario::Apply,
                    fp::UNDO_AFTER_STEP,
                    1,
                    Mode::Abort,
                    Some("activate::before-apply=1*off->return"),
                );
                f.ok(&["recover"]);
            }
        }
        assert_eq!(
            fs::read_to_string(&os_file).unwrap(),
            "managed\n",
            "{label}: undone"
        );
        f.ok(&["gc"]);
        f.ok(&["apply"]);
        assert_eq!(
            fs::read_to_string(&os_file).unwrap(),
            "shipped by the OS\n",
            "{label}: the OS's file is back"
        );
        assert_eq!(
            fs::read_to_string(f.root.join("etc/z.conf")).unwrap(),
            "zulu\n"
        );
        f.ok(&["audit", "verify"]);
    }
}

#[test]
fn every_failpoint_is_exercised() {
    let mut covered: Vec<&str> = [Scenario::Apply, Scenario::Rollback, Scenario::Gc]
        .into_iter()
        .flat_map(path_of)
        .chain([fp::UNDO_AFTER_STEP])
        // The firmware install flow's own points: integration/tests/firmware.rs.
        .chain(fp::FIRMWARE.iter().copied())
        // The delta install's own points: integration/tests/delta.rs.
        .chain(fp::DELTA.iter().copied())
        // `firmware cancel`'s: integration/tests/firmware_generations.rs.
        .chain([fp::FIRMWARE_CANCEL_REJECTED])
        // The drift restore's: integration/tests/drift.rs.
        .chain(fp::DRIFT.iter().copied())
        .collect();
    covered.sort_unstable();
    covered.dedup();
    let mut all = fp::ALL.to_vec();
    all.sort_unstable();
    assert_eq!(covered, all);
}

/// `ferry apply`, aborted the `nth` time it writes a chunk into the store.
fn apply_killed_at_write(f: &Fixture, nth: usize) -> std::process::Output {
    f.cmd(&["apply"])
        .env("FERRY_CRASH_AT", format!("{}:abort:{nth}", fp::STORE_WRITE))
        .output()
        .unwrap()
}

#[test]
fn an_interrupted_fetch_resumes_where_it_stopped() {
    let f = Fixture::new();
    let big: String = (0..40_000)
        .map(|i| format!("line {i:06} of a large file\n"))
        .collect();
    f.publish(&[file("/etc/big.conf", &big, "0644")]);
    // Killed after two 64 KiB chunks were written.
    let out = apply_killed_at_write(&f, 3);
    assert_eq!(out.status.signal(), Some(6), "{}", stderr(&out));
    let partial = f.store_leftovers();
    assert_eq!(partial.len(), 1, "{partial:?}");
    let out = f.run(&["--log-level", "info", "apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resuming blob at byte 131072"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(f.root.join("etc/big.conf")).unwrap(),
        big
    );
    assert!(f.store_leftovers().is_empty());

    // A partial that went bad (say, not flushed before a power cut) fails
    // verification and is fetched again from the start.
    let big2 = big.replace("line", "LINE");
    f.publish(&[file("/etc/big.conf", &big2, "0644")]);
    let out = apply_killed_at_write(&f, 3);
    assert_eq!(out.status.signal(), Some(6));
    let partial = f.state.join("store").join(&f.store_leftovers()[0]);
    let mut bytes = fs::read(&partial).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&partial, bytes).unwrap();
    let out = f.run(&["--log-level", "info", "apply"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fetching it again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(f.root.join("etc/big.conf")).unwrap(),
        big2
    );
    // gc drops partials nobody will resume.
    f.publish(&[file("/etc/big.conf", &big.replace("line", "row"), "0644")]);
    let _ = apply_killed_at_write(&f, 2);
    assert_eq!(f.store_leftovers().len(), 1);
    f.ok(&["gc"]);
    assert!(f.store_leftovers().is_empty());
}

/// A ferry process stopped with a write transaction open (SIGSTOP, a
/// starved or hung process) holds the state database's write lock. The
/// commands that only read answer from the last committed state, and the
/// stopped process, once killed, is recovered. SQLite's locks are POSIX
/// record locks, released when the process closes *any* descriptor of the
/// file: a process that opened `state.db-shm` itself lost them, and the
/// next reader then reset the shared index under the writer ("locking
/// protocol" after 10 s).
#[test]
fn reads_answer_while_another_ferry_holds_a_write_transaction() {
    let f = Fixture::new();
    f.publish(&rev_a());
    f.ok(&["apply"]);
    f.publish(&rev_b());
    for nth in [1, 4, 9] {
        let mut child = f
            .cmd(&["apply"])
            .env(
                "FERRY_CRASH_AT",
                format!("{}:hang:{nth}", fp::STATE_BEFORE_COMMIT),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("failpoint") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "apply ended early");
        }
        let started = Instant::now();
        let status = f.json(&["status", "--json"]);
        assert_eq!(status["current"]["id"], 1, "nth {nth}: {status:#}");
        let out = f.run(&["plan", "--exit-code"]);
        assert_eq!(out.status.code(), Some(10), "nth {nth}: {}", stderr(&out));
        f.ok(&["audit", "verify"]);
        f.ok(&["generations", "--json"]);
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "nth {nth}: the reads waited for the writer ({:?})",
            started.elapsed()
        );
        // The stopped process still holds its write lock and its state.
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
    f.ok(&["apply"]);
    assert_eq!(f.snapshot(), expected(&rev_b()));
    assert!(f.integrity_ok());
    f.ok(&["audit", "verify"]);
}
