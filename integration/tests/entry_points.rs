//! One reconcile for every entry point: `ferry run --once`, the agent
//! (`ferry run`), an operator's `ferry apply` and a USB `ferry import` of a
//! FAT image all keep the same promises, against a TUF repository on
//! loopback:
//!
//! | promise                                  | run --once | agent | apply | import |
//! |------------------------------------------|------------|-------|-------|--------|
//! | the health gate rolls back and rejects    | ✓          | ✓     | ✓     | ✓      |
//! | a rejected revision is not applied again  | ✓          | ✓     | ✓     | ✓      |
//! | … unless an operator forces it (audited)  | –          | –     | ✓     | ✓      |
//! | the update window holds the revision      | ✓          | ✓     | ✓     | ✓      |
//! | … unless overridden (audited)             | –          | –     | ✓     | ✓      |
//! | the actor is recorded                     | ✓          | ✓     | ✓     | ✓      |
//!
//! `status`, the fleet report and the audit journal agree on what runs and
//! what is rejected after each step.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tuf::Device;
use common::{FERRY, file, stderr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    RunOnce,
    Agent,
    Apply,
    Import,
}

/// How one reconcile ended, as each entry point says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Applied,
    RolledBack,
    Skipped,
    Held,
}

impl Entry {
    /// Who the audit journal names for the reconcile's own entries.
    fn actor(self) -> &'static str {
        match self {
            Entry::RunOnce | Entry::Agent => "agent",
            Entry::Apply => "local-operator",
            Entry::Import => "usb:STICK",
        }
    }

    /// Only an operator (on the device or with a stick) may override.
    fn operator(self) -> bool {
        matches!(self, Entry::Apply | Entry::Import)
    }
}

struct Case {
    d: Device,
    entry: Entry,
    /// While present, the health check passes whatever app.conf says.
    waiver: PathBuf,
    sticks: std::cell::Cell<u32>,
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Case {
    fn new(entry: Entry) -> Case {
        let d = Device::new(&[]);
        let dir = d.fx.dir.path();
        let waiver = dir.join("healthy-anyway");
        let sock = dir.join("ferry.sock");
        let conf = d.fx.root.join("etc/app.conf");
        let check = format!(
            "grep -q healthy {} || test -e {}",
            conf.display(),
            waiver.display()
        );
        *d.extra.borrow_mut() = format!(
            "[agent]\npoll_interval = \"1s\"\njitter = \"0s\"\nbackoff_base = \"1s\"\n\
             health_timeout = \"1s\"\nhealth_interval = \"200ms\"\ncontrol_socket = {sock:?}\n\
             [[health.check]]\ncommand = [\"sh\", \"-c\", {check:?}]\n"
        );
        d.configure(&d.repo.root_v1());
        Case {
            d,
            entry,
            waiver,
            sticks: std::cell::Cell::new(0),
        }
    }

    fn content(&self) -> String {
        fs::read_to_string(self.d.fx.root.join("etc/app.conf")).unwrap_or_default()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        self.d
            .fx
            .json(&["audit", "list", "--json"])
            .as_array()
            .unwrap()
            .clone()
    }

    fn events(&self, name: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    fn status(&self) -> serde_json::Value {
        self.d.fx.json(&["status", "--json"])
    }

    /// The revisions `status` lists as rejected.
    fn rejected(&self) -> Vec<String> {
        self.status()["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["revision"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The newest revision the repository serves.
    fn newest(&self) -> String {
        let v = self.d.repo.read_json("targets.json")["signed"]["version"]
            .as_u64()
            .unwrap();
        format!("tuf-{v}-")
    }

    /// Exports the repository's newest revision onto a FAT image.
    fn stick(&self) -> PathBuf {
        let n = self.sticks.get() + 1;
        self.sticks.set(n);
        let image = self.d.fx.dir.path().join(format!("stick-{n}.img"));
        self.d.fx.json(&[
            "bundle",
            "export",
            "--json",
            "--label",
            "STICK",
            "--out",
            image.to_str().unwrap(),
        ]);
        image
    }

    /// One reconcile through this case's entry point; `expect` is what the
    /// agent is waited for (it has no exit code to read).
    fn reconcile(&self, args: &[&str], expect: Ended) -> Ended {
        let fx = &self.d.fx;
        let by_code = |out: std::process::Output| {
            let code = out.status.code();
            match code {
                Some(0) => Ended::Applied,
                Some(7) => Ended::RolledBack,
                Some(8) if stderr(&out).contains("--force") => Ended::Skipped,
                Some(8) if stderr(&out).contains("--ignore-window") => Ended::Held,
                _ => panic!(
                    "{:?} {args:?}: exit {code:?}\n{}{}",
                    self.entry,
                    String::from_utf8_lossy(&out.stdout),
                    stderr(&out)
                ),
            }
        };
        match self.entry {
            Entry::RunOnce => {
                assert!(args.is_empty(), "the agent overrides nothing");
                let out = fx.run(&["run", "--once", "--json"]);
                assert!(out.status.success(), "{}", stderr(&out));
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                match report["result"].as_str().unwrap() {
                    "applied" => Ended::Applied,
                    "rolled_back" => Ended::RolledBack,
                    "skipped" => Ended::Skipped,
                    "held" => Ended::Held,
                    other => panic!("run --once: {other}: {report:#}"),
                }
            }
            Entry::Apply => {
                let mut a = vec!["apply", "--no-reboot"];
                a.extend_from_slice(args);
                by_code(fx.run(&a))
            }
            Entry::Import => {
                let image = self.stick();
                let mut c = fx.cmd(&["import", "--no-reboot"]);
                c.args(args).arg(&image);
                by_code(c.output().unwrap())
            }
            Entry::Agent => {
                assert!(args.is_empty(), "the agent overrides nothing");
                let planned = self.events("planned").len();
                let agent = Agent(
                    Command::new(FERRY)
                        .arg("--config")
                        .arg(&fx.config)
                        .args(["--log-level", "info", "run"])
                        .env_remove("FAILPOINTS")
                        .env_remove("FERRY_CRASH_AT")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
                let last = || {
                    self.status()["agent"]["last_result"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                };
                let rejected = self.events("revision-rejected").len();
                wait_for(&format!("{expect:?}"), Duration::from_secs(30), || {
                    match expect {
                        Ended::Applied => self.status()["current"]["revision"]
                            .as_str()
                            .is_some_and(|r| r.starts_with(&self.newest())),
                        // The agent goes on polling: count the rejection.
                        Ended::RolledBack => self.events("revision-rejected").len() > rejected,
                        Ended::Skipped => last().contains("was rolled back; waiting"),
                        Ended::Held => last().contains("outside the update windows"),
                    }
                });
                // Two more polls change nothing further.
                let settled = self.events("planned").len();
                std::thread::sleep(Duration::from_millis(2500));
                assert_eq!(self.events("planned").len(), settled, "{:?}", last());
                drop(agent);
                if expect != Ended::Applied && expect != Ended::RolledBack {
                    assert_eq!(self.events("planned").len(), planned);
                }
                expect
            }
        }
    }

    /// `status`, the fleet report and the journal agree on what runs and
    /// what is rejected.
    fn agree(&self) {
        let status = self.status();
        let report = self.d.fx.json(&["fleet", "report"]);
        assert_eq!(
            status["current"]["revision"], report["state"]["revision"],
            "{status:#}\n{report:#}"
        );
        let rejected: Vec<serde_json::Value> = self
            .rejected()
            .into_iter()
            .map(serde_json::Value::from)
            .collect();
        assert_eq!(
            report["state"]["rejected"],
            serde_json::Value::from(rejected)
        );
        self.d.fx.ok(&["audit", "verify"]);
    }
}

fn promises(entry: Entry) {
    let c = Case::new(entry);
    let actor = entry.actor();
    let named = |e: &serde_json::Value| e["actor"].as_str().unwrap().starts_with(actor);

    // A healthy revision applies; the transition says who started it.
    c.d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    assert_eq!(c.reconcile(&[], Ended::Applied), Ended::Applied);
    assert_eq!(c.content(), "healthy 1\n");
    let planned = c.events("planned");
    assert!(
        planned
            .last()
            .is_some_and(|p| p["details"]["by"].as_str().unwrap().starts_with(actor)),
        "{planned:#?}"
    );
    c.agree();

    // The health gate: switched, unhealthy, rolled back, rejected.
    c.d.publish(&[file("/etc/app.conf", "broken 2\n", "0644")]);
    let broken = c.newest();
    assert_eq!(c.reconcile(&[], Ended::RolledBack), Ended::RolledBack);
    assert_eq!(c.content(), "healthy 1\n");
    let rejected = c.events("revision-rejected");
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert!(named(&rejected[0]), "{:#}", rejected[0]);
    assert!(
        rejected[0]["details"]["revision"]
            .as_str()
            .unwrap()
            .starts_with(&broken),
        "{:#}",
        rejected[0]
    );
    assert!(c.rejected()[0].starts_with(&broken), "{:?}", c.rejected());
    c.agree();

    // Not applied again.
    let planned = c.events("planned").len();
    assert_eq!(c.reconcile(&[], Ended::Skipped), Ended::Skipped);
    assert_eq!(c.events("planned").len(), planned);
    assert_eq!(c.content(), "healthy 1\n");

    if entry.operator() {
        // Forced by an operator, audited with who did it; healthy this
        // time, it is no longer rejected.
        fs::write(&c.waiver, "").unwrap();
        assert_eq!(c.reconcile(&["--force"], Ended::Applied), Ended::Applied);
        assert_eq!(c.content(), "broken 2\n");
        let forced = c.events("rejection-overridden");
        assert_eq!(forced.len(), 1, "{forced:#?}");
        assert!(named(&forced[0]), "{:#}", forced[0]);
        assert!(c.events("rejection-cleared").iter().all(named));
        assert!(c.rejected().is_empty(), "{:?}", c.rejected());
        fs::remove_file(&c.waiver).unwrap();
        c.agree();
    }

    // Outside the update windows (31 February): held.
    c.d.repo.target(
        "ferry/policy.toml",
        b"[update]\nwindows = [\"0 0 31 2 *\"]\n",
        "targets",
    );
    c.d.publish(&[file("/etc/app.conf", "healthy 3\n", "0644")]);
    let before = c.content();
    assert_eq!(c.reconcile(&[], Ended::Held), Ended::Held);
    assert_eq!(c.content(), before);
    if entry.operator() {
        assert_eq!(
            c.reconcile(&["--ignore-window"], Ended::Applied),
            Ended::Applied
        );
        assert_eq!(c.content(), "healthy 3\n");
        let overridden = c.events("policy-overridden");
        assert_eq!(overridden.len(), 1, "{overridden:#?}");
        assert!(named(&overridden[0]), "{:#}", overridden[0]);
        assert_eq!(overridden[0]["details"]["overridden"], "update window");
    }
    c.agree();
}

#[test]
fn run_once_keeps_the_promises() {
    promises(Entry::RunOnce);
}

#[test]
fn the_agent_keeps_the_promises() {
    promises(Entry::Agent);
}

#[test]
fn apply_keeps_the_promises() {
    promises(Entry::Apply);
}

#[test]
fn import_of_a_fat_image_keeps_the_promises() {
    promises(Entry::Import);
}
