//! Drift: managed files changed on the device after ferry installed them
//! (content, mode, owner, replaced by a symlink, a FIFO or a directory,
//! deleted) are shown by `plan`, put back by `apply` and the agent through
//! a recorded `restore` transition, audited (`drift-detected`,
//! `drift-restored`) without secret content, reported (policy `report`) or
//! left alone (`ignore`); a kill -9 anywhere in a restore converges.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ferry_engine::failpoints as fp;

fn files() -> Vec<FileSpec> {
    vec![
        file("/etc/app/content.conf", "content v1\n", "0644"),
        file("/etc/app/mode.conf", "mode v1\n", "0640"),
        file("/etc/app/owner.conf", "owner v1\n", "0644"),
        file("/etc/app/symlink.conf", "symlink v1\n", "0644"),
        file("/etc/app/fifo.conf", "fifo v1\n", "0644"),
        file("/etc/app/deleted.conf", "deleted v1\n", "0644"),
        // Taken over from the OS at the first apply.
        file("/etc/os-release.conf", "managed by ferry\n", "0644"),
    ]
}

/// Applies `files()`, with /etc/os-release.conf shipped by the OS before.
fn applied() -> Fixture {
    let f = Fixture::new();
    fs::create_dir_all(f.root.join("etc")).unwrap();
    fs::write(f.root.join("etc/os-release.conf"), "shipped by the OS\n").unwrap();
    f.publish(&files());
    f.ok(&["apply"]);
    assert_eq!(f.snapshot(), expected(&files()));
    f
}

fn at(f: &Fixture, path: &str) -> std::path::PathBuf {
    f.root.join(path.trim_start_matches('/'))
}

/// Every kind of drift at once, each on its own file.
fn tamper(f: &Fixture) {
    fs::write(at(f, "/etc/app/content.conf"), "edited by hand\n").unwrap();
    fs::set_permissions(
        at(f, "/etc/app/mode.conf"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    std::os::unix::fs::chown(at(f, "/etc/app/owner.conf"), Some(4321), Some(4321)).unwrap();
    fs::remove_file(at(f, "/etc/app/symlink.conf")).unwrap();
    symlink("/etc/passwd", at(f, "/etc/app/symlink.conf")).unwrap();
    fs::remove_file(at(f, "/etc/app/fifo.conf")).unwrap();
    tool("mkfifo", &[at(f, "/etc/app/fifo.conf").to_str().unwrap()]);
    fs::remove_file(at(f, "/etc/app/deleted.conf")).unwrap();
    fs::write(at(f, "/etc/os-release.conf"), "edited by hand\n").unwrap();
}

fn events(f: &Fixture, event: &str) -> Vec<serde_json::Value> {
    f.json(&["audit", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == event)
        .cloned()
        .collect()
}

/// `plan --json` matches schemas/plan.schema.json.
fn assert_schema(plan: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(data_dir().join("../schemas/plan.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(plan)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{plan:#}");
}

fn drift_kinds(step: &serde_json::Value) -> Vec<String> {
    step["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["reason"], "drifted", "{step:#}");
            r["drift"]["drift"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn every_kind_of_drift_is_planned_restored_and_audited() {
    assert!(is_root(), "chown needs root (CI runs as root)");
    let f = applied();
    // Untouched: nothing to do, and an idle check writes nothing.
    let out = f.run(&["plan", "--exit-code"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    tamper(&f);

    let human = f.ok(&["plan"]);
    for line in [
        "! file /etc/app/content.conf",
        "! file /etc/app/mode.conf",
        "mode 0640 → 0666 on the device",
        "! file /etc/app/owner.conf",
        "owner 0:0 → 4321:4321 on the device",
        "replaced by symlink",
        "replaced by FIFO",
        "! file /etc/app/deleted.conf",
        "deleted",
        "! file /etc/os-release.conf",
        "-edited by hand",
        "+content v1",
        "0 to add, 7 to change (7 changed on the device, to restore), 0 to remove",
    ] {
        assert!(human.contains(line), "{line:?} missing:\n{human}");
    }
    let out = f.run(&["plan", "--exit-code"]);
    assert_eq!(out.status.code(), Some(10), "drift counts for --exit-code");
    let plan = f.json(&["plan", "--json"]);
    assert_schema(&plan);
    let kinds: Vec<(String, Vec<String>)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["op"], "change");
            assert_eq!(
                s["from"], s["to"],
                "a restore keeps the generation's resource"
            );
            (s["name"].as_str().unwrap().to_owned(), drift_kinds(s))
        })
        .collect();
    let want = |n: &str, k: &[&str]| (n.to_owned(), k.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        kinds,
        vec![
            want("/etc/app/content.conf", &["content"]),
            want("/etc/app/deleted.conf", &["deleted"]),
            want("/etc/app/fifo.conf", &["replaced"]),
            want("/etc/app/mode.conf", &["mode"]),
            want("/etc/app/owner.conf", &["owner"]),
            want("/etc/app/symlink.conf", &["replaced"]),
            want("/etc/os-release.conf", &["content"]),
        ]
    );
    assert_eq!(plan["drift"].as_array().unwrap().len(), 7);
    let before = f.generation_ids();

    let out = f.ok(&["apply"]);
    assert!(
        out.contains("restored 7 resources changed on the device (generation 1 stays current)"),
        "{out}"
    );
    assert_eq!(f.snapshot(), expected(&files()));
    let owner = fs::metadata(at(&f, "/etc/app/owner.conf")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&owner),
            std::os::unix::fs::MetadataExt::gid(&owner)
        ),
        (0, 0)
    );
    assert_eq!(f.generation_ids(), before, "no new generation");
    assert_eq!(f.current_link(), Some(1));
    assert!(
        fs::read_to_string("/etc/passwd")
            .unwrap()
            .starts_with("root:"),
        "the planted symlink was replaced, not followed"
    );
    let detected = events(&f, "drift-detected");
    let restored = events(&f, "drift-restored");
    assert_eq!((detected.len(), restored.len()), (7, 7));
    let mode = restored
        .iter()
        .find(|e| e["details"]["resource"] == "/etc/app/mode.conf")
        .unwrap();
    assert_eq!(
        mode["details"]["drift"][0],
        serde_json::json!({"drift": "mode", "expected": "0640", "found": "0666"})
    );
    assert!(
        events(&f, "confirmed")
            .iter()
            .any(|e| e["details"]["kind"] == "restore"),
        "a restore transition"
    );
    assert_eq!(
        f.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
    f.ok(&["audit", "verify"]);
    let out = f.run(&["plan", "--exit-code"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Removing the taken-over file later still gives the OS its own back.
    f.publish(&files()[..6]);
    f.ok(&["apply"]);
    assert_eq!(
        fs::read_to_string(at(&f, "/etc/os-release.conf")).unwrap(),
        "shipped by the OS\n"
    );
}

/// `ferry verify` finds each kind of drift once, whether the files are read
/// on one thread (`--rate`, the default) or split over the cores
/// (`--rate 0`), and passes again after the restore.
#[test]
fn verify_finds_every_kind_of_drift_on_one_core_or_several() {
    assert!(is_root(), "chown needs root (CI runs as root)");
    let f = applied();
    f.ok(&["verify", "--rate", "0"]);
    tamper(&f);
    let problems = |args: &[&str]| -> Vec<(String, String)> {
        let out = f.run(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut found: Vec<(String, String)> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["resource"].as_str().unwrap().to_owned(),
                    p["problem"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        found.sort();
        found
    };
    let one = problems(&["verify", "--json"]);
    let several = problems(&["verify", "--json", "--rate", "0"]);
    assert_eq!(one, several);
    let mut names: Vec<String> = files().iter().map(|f| f.path.to_owned()).collect();
    names.sort();
    assert_eq!(
        one.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        names,
        "{one:?}"
    );
    f.ok(&["apply"]);
    f.ok(&["verify", "--rate", "0"]);
    f.ok(&["verify"]);
}

#[test]
fn a_directory_where_a_file_was_is_reported_not_removed() {
    let f = applied();
    fs::remove_file(at(&f, "/etc/app/content.conf")).unwrap();
    fs::create_dir(at(&f, "/etc/app/content.conf")).unwrap();
    fs::write(at(&f, "/etc/app/content.conf/kept"), "someone's data\n").unwrap();
    fs::write(at(&f, "/etc/app/mode.conf"), "edited\n").unwrap();
    let human = f.ok(&["plan"]);
    assert!(
        human.contains("not restored: a directory is there"),
        "{human}"
    );
    f.ok(&["apply"]);
    assert_eq!(
        fs::read_to_string(at(&f, "/etc/app/content.conf/kept")).unwrap(),
        "someone's data\n"
    );
    assert_eq!(
        fs::read_to_string(at(&f, "/etc/app/mode.conf")).unwrap(),
        "mode v1\n",
        "the rest is restored"
    );
    let status = f.ok(&["status"]);
    assert!(
        status.contains("drift:       file /etc/app/content.conf changed on the device (replaced)"),
        "{status}"
    );
    fs::remove_dir_all(at(&f, "/etc/app/content.conf")).unwrap();
    f.ok(&["apply"]);
    assert_eq!(f.snapshot(), expected(&files()));
    assert_eq!(
        f.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
}

fn policy_manifest(default: Option<&str>) -> Fixture {
    let f = Fixture::new();
    if let Some(d) = default {
        let text = fs::read_to_string(&f.config).unwrap();
        fs::write(&f.config, format!("{text}[agent]\ndrift = \"{d}\"\n")).unwrap();
    }
    f.publish_raw(
        "apiVersion: ferry.dev/v1\nresources:\n\
         - {kind: file, path: /etc/restore.conf, source: a}\n\
         - {kind: file, path: /etc/report.conf, source: a, drift: report}\n\
         - {kind: file, path: /etc/ignore.conf, source: a, drift: ignore}\n",
        &[("a".to_owned(), "as shipped\n".to_owned())],
    );
    f.ok(&["apply"]);
    f
}

#[test]
fn report_and_ignore_policies_leave_the_file_and_say_so_once() {
    let f = policy_manifest(None);
    for name in ["restore", "report", "ignore"] {
        fs::write(
            f.root.join(format!("etc/{name}.conf")),
            "rewritten by the app\n",
        )
        .unwrap();
    }
    let human = f.ok(&["plan"]);
    assert_schema(&f.json(&["plan", "--json"]));
    assert!(human.contains("! file /etc/restore.conf"), "{human}");
    assert!(
        human.contains("? file /etc/report.conf") && human.contains("drift: report leaves it"),
        "{human}"
    );
    assert!(!human.contains("ignore.conf"), "{human}");
    f.ok(&["apply"]);
    f.ok(&["apply"]);
    let read = |n: &str| fs::read_to_string(f.root.join(format!("etc/{n}.conf"))).unwrap();
    assert_eq!(read("restore"), "as shipped\n");
    assert_eq!(read("report"), "rewritten by the app\n");
    assert_eq!(read("ignore"), "rewritten by the app\n");
    let detected: Vec<String> = events(&f, "drift-detected")
        .iter()
        .map(|e| e["details"]["resource"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        detected,
        vec!["/etc/report.conf", "/etc/restore.conf"],
        "each finding audited once, ignore never"
    );
    let status = f.json(&["status", "--json"]);
    let drift = status["drift"].as_array().unwrap();
    assert_eq!(drift.len(), 1, "{status:#}");
    assert_eq!(drift[0]["name"], "/etc/report.conf");
    assert!(
        f.ok(&["status"])
            .contains("drift:       file /etc/report.conf")
    );
    let report = f.json(&["fleet", "report"]);
    assert_eq!(report["state"]["drifted"], 1, "{report:#}");
    // The app puts the shipped content back: the drift is gone by itself.
    fs::write(f.root.join("etc/report.conf"), "as shipped\n").unwrap();
    f.ok(&["apply"]);
    assert_eq!(
        f.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
    f.ok(&["audit", "verify"]);
}

#[test]
fn the_device_default_applies_where_a_resource_says_nothing() {
    let f = policy_manifest(Some("report"));
    fs::write(f.root.join("etc/restore.conf"), "edited\n").unwrap();
    f.ok(&["apply"]);
    assert_eq!(
        fs::read_to_string(f.root.join("etc/restore.conf")).unwrap(),
        "edited\n",
        "[agent] drift = \"report\""
    );
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        text.replace("drift = \"report\"", "drift = \"sometimes\""),
    )
    .unwrap();
    let out = f.run(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sometimes"), "{}", stderr(&out));
}

#[test]
fn secret_drift_never_shows_its_content() {
    let f = Fixture::new();
    f.publish_raw(
        "apiVersion: ferry.dev/v1\nresources:\n\
         - {kind: file, path: /etc/key, source: key, mode: \"0600\", secret: true}\n",
        &[("key".to_owned(), "the real key\n".to_owned())],
    );
    f.ok(&["apply"]);
    let marker = "hunter2-typed-by-a-technician";
    let found = ferry_core::Sha256::of(format!("{marker}\n").as_bytes()).to_hex();
    fs::write(f.root.join("etc/key"), format!("{marker}\n")).unwrap();
    let mut seen = String::new();
    for args in [
        &["plan"][..],
        &["plan", "--json"],
        &["--log-level", "debug", "apply", "--json"],
        &["audit", "list", "--json"],
        &["fleet", "report"],
        &["status", "--json"],
    ] {
        let out = f.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&stderr(&out));
    }
    assert!(seen.contains("content changed (secret)"), "{seen}");
    fs::write(f.root.join("etc/key"), format!("{marker}\n")).unwrap();
    let plan = f.json(&["plan", "--json"]);
    assert_schema(&plan);
    assert_eq!(
        plan["steps"][0]["reasons"][0]["drift"],
        serde_json::json!({"drift": "content", "secret": true})
    );
    f.ok(&["apply"]);
    assert!(!seen.contains(marker), "secret content shown:\n{seen}");
    assert!(
        !seen.contains(&found),
        "digest of the secret shown:\n{seen}"
    );
    assert_eq!(
        fs::read_to_string(f.root.join("etc/key")).unwrap(),
        "the real key\n"
    );
}

/// Two of `files()` applied, and an `[agent]` section with `agent` (its
/// own control socket added).
fn agent_fixture(agent: &str) -> Fixture {
    let f = Fixture::new();
    let sock = f.dir.path().join("ferry.sock");
    f.append_config(&format!(
        "[agent]\n{agent}jitter = \"0s\"\ncontrol_socket = {sock:?}\n"
    ));
    f.publish(&files()[..2]);
    f.ok(&["apply"]);
    f
}

/// Waits until the agent put content.conf back (`why`: what failed).
fn wait_restored(f: &Fixture, within: Duration, why: &str) {
    let deadline = Instant::now() + within;
    while fs::read_to_string(at(f, "/etc/app/content.conf")).unwrap() != "content v1\n" {
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_restores_drift_by_itself() {
    let f = agent_fixture("poll_interval = \"1s\"\n");
    let mut agent = start_agent(&f);
    fs::write(at(&f, "/etc/app/content.conf"), "edited while running\n").unwrap();
    wait_restored(
        &f,
        Duration::from_secs(30),
        "the agent did not restore the file",
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    let restored = events(&f, "drift-restored");
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["details"]["resource"], "/etc/app/content.conf");
    assert_eq!(events(&f, "drift-detected")[0]["actor"], "agent");
    f.ok(&["audit", "verify"]);
}

/// `ferry run` on `f`'s configuration, quiet.
fn start_agent(f: &Fixture) -> std::process::Child {
    Command::new(FERRY)
        .arg("--config")
        .arg(&f.config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_anywhere_in_a_restore_converges() {
    let points = [
        fp::DRIFT_PLANNED,
        fp::ACTIVATE_BEFORE_APPLY,
        fp::ACTIVATE_AFTER_APPLY,
        fp::DRIFT_RESTORED,
    ];
    for point in points {
        for nth in [1, 3] {
            if nth == 3 && matches!(point, p if p == fp::DRIFT_PLANNED || p == fp::DRIFT_RESTORED) {
                continue;
            }
            let f = applied();
            tamper(&f);
            let mut child = f
                .cmd(&["apply"])
                .env("FERRY_CRASH_AT", format!("{point}:hang:{nth}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
            let mut line = String::new();
            while !line.contains("failpoint") {
                line.clear();
                let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
                assert!(n > 0, "{point}:{nth}: apply ended before the failpoint");
            }
            child.kill().unwrap();
            child.wait().unwrap();
            // The next start finishes or undoes it: one generation, the
            // files either all of it or drifted again (then restored).
            f.ok(&["recover"]);
            assert_eq!(f.generation_ids(), vec![1], "{point}:{nth}");
            assert_eq!(f.current_link(), Some(1));
            assert!(
                f.json(&["status", "--json"])["open_transitions"]
                    .as_array()
                    .unwrap()
                    .is_empty()
            );
            f.ok(&["apply"]);
            assert_eq!(f.snapshot(), expected(&files()), "{point}:{nth}");
            let out = f.run(&["plan", "--exit-code"]);
            assert_eq!(out.status.code(), Some(0), "{point}:{nth}");
            assert!(f.integrity_ok());
            f.ok(&["audit", "verify"]);
        }
    }
}

#[test]
fn a_damaged_rule_set_or_module_blob_is_fetched_again() {
    let f = Fixture::new();
    let rules = "RULE hot ON topic ~ \"plant/+\" and temperature > 85 THEN publish(\"alerts/{topic}\", \"{temperature}\")\n";
    let module = wat::parse_str("(module (func (export \"run\")))").unwrap();
    f.publish_raw(
        "apiVersion: ferry.dev/v1\nresources:\n\
         - {kind: ruleset, name: hot, source: rules/hot.rules}\n\
         - {kind: wasm, name: m, source: modules/m.wasm}\n",
        &[("rules/hot.rules".to_owned(), rules.to_owned())],
    );
    fs::create_dir_all(f.repo.join("modules")).unwrap();
    fs::write(f.repo.join("modules/m.wasm"), &module).unwrap();
    f.ok(&["apply"]);
    f.ok(&["verify"]);
    let blob = |data: &[u8]| {
        f.state
            .join("store")
            .join(ferry_core::Sha256::of(data).to_hex())
    };
    // Someone edits the rule set in the store, and deletes the module.
    fs::write(
        blob(rules.as_bytes()),
        "RULE evil ON topic ~ \"#\" THEN publish(\"x\", \"y\")\n",
    )
    .unwrap();
    fs::remove_file(blob(&module)).unwrap();
    let out = f.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4));
    let human = f.ok(&["plan"]);
    assert!(human.contains("! ruleset hot"), "{human}");
    assert!(
        human.contains("! wasm m") && human.contains("deleted"),
        "{human}"
    );
    let out = f.ok(&["apply"]);
    assert!(out.contains("restored 2 resources"), "{out}");
    assert_eq!(fs::read(blob(rules.as_bytes())).unwrap(), rules.as_bytes());
    assert_eq!(fs::read(blob(&module)).unwrap(), module);
    let restored: Vec<String> = events(&f, "drift-restored")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["details"]["kind"].as_str().unwrap(),
                e["details"]["resource"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(restored, vec!["ruleset hot", "wasm m"]);
    f.ok(&["verify"]);
    f.ok(&["audit", "verify"]);
}

#[test]
fn a_huge_file_in_place_of_a_managed_one_is_hashed_once_and_not_shown() {
    let f = applied();
    // 1 GiB, sparse: read as zeros, stored nowhere.
    let path = at(&f, "/etc/app/content.conf");
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let plan = f.json(&["plan", "--json"]);
    let step = &plan["steps"][0];
    assert_eq!(step["reasons"][0]["drift"]["found"]["length"], 1u64 << 30);
    assert!(step.get("diff").is_none(), "{step:#}");
    assert!(
        step["note"].as_str().unwrap().contains("diff not shown"),
        "{step:#}"
    );
    f.ok(&["apply"]);
    assert_eq!(f.snapshot(), expected(&files()));
    // It was not copied into the store for undo (bounded), and nothing of
    // that size is left anywhere in the state.
    let undo: String = f
        .db()
        .query_row(
            "SELECT undo FROM activations ORDER BY transition DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(undo, r#"{"previous":null}"#);
    let big = fs::read_dir(f.state.join("store"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().metadata().unwrap().len() >= 1 << 30)
        .count();
    assert_eq!(big, 0);
}

#[test]
fn a_symlink_planted_for_a_managed_directory_is_reported_and_not_followed() {
    let f = applied();
    // A copy of the right files elsewhere, and the managed directory
    // replaced by a symlink to it: a check that followed it would find
    // everything as installed.
    let elsewhere = f.dir.path().join("elsewhere");
    copy_tree(&at(&f, "/etc/app"), &elsewhere);
    fs::remove_dir_all(at(&f, "/etc/app")).unwrap();
    symlink(&elsewhere, at(&f, "/etc/app")).unwrap();
    let human = f.ok(&["plan"]);
    assert!(
        human.contains("? file /etc/app/content.conf")
            && human.contains("not restored: a directory on its path is not a directory"),
        "{human}"
    );
    let out = f.run(&["plan", "--exit-code"]);
    assert_eq!(out.status.code(), Some(10));
    assert_schema(&f.json(&["plan", "--json"]));
    // The reconcile goes on (the rest of the device is checked and kept).
    fs::write(at(&f, "/etc/os-release.conf"), "edited\n").unwrap();
    f.ok(&["apply"]);
    assert_eq!(
        fs::read_to_string(at(&f, "/etc/os-release.conf")).unwrap(),
        "managed by ferry\n"
    );
    assert_eq!(
        f.json(&["status", "--json"])["drift"]
            .as_array()
            .unwrap()
            .len(),
        6,
        "the six files below the symlink"
    );
    assert!(
        fs::symlink_metadata(at(&f, "/etc/app"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let out = f.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn a_bad_drift_policy_in_the_manifest_is_named_by_its_pointer() {
    let f = Fixture::new();
    f.publish_raw(
        "apiVersion: ferry.dev/v1\nresources:\n - {kind: file, path: /etc/a, source: a, drift: sometimes}\n",
        &[("a".to_owned(), "a\n".to_owned())],
    );
    let out = f.run(&["apply"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("/resources/0"), "{}", stderr(&out));
    assert!(f.generation_ids().is_empty());
}

/// `running.json`: what the running agent's rules engine loaded.
fn running(f: &Fixture) -> serde_json::Value {
    fs::read(f.state.join("running.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn wait_running(f: &Fixture, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&running(f)) {
        assert!(Instant::now() < deadline, "{what}: {:#}", running(f));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ferry apply`, once the agent's reconcile that may still be running
/// (its first poll) has released the state directory.
fn apply_when_free(f: &Fixture) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = f.run(&["apply"]);
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("in use by another ferry process") && Instant::now() < deadline,
            "ferry apply: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn what_the_running_agent_could_not_load_is_drift_until_it_loads() {
    let f = Fixture::new();
    let sock = f.dir.path().join("ferry.sock");
    let event_sock = f.dir.path().join("events.sock");
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        format!(
            "{text}[agent]\npoll_interval = \"1h\"\njitter = \"0s\"\ncontrol_socket = {sock:?}\n\
             [rules]\nsocket = {event_sock:?}\n"
        ),
    )
    .unwrap();
    let rules = |limit: u32| {
        format!(
            "RULE hot ON topic ~ \"plant/+\" and temperature > {limit} THEN publish(\"alerts/{{topic}}\", \"{{temperature}}\")\n"
        )
    };
    let publish = |limit: u32| {
        f.publish_raw(
            "apiVersion: ferry.dev/v1\nresources:\n- {kind: ruleset, name: hot, source: rules/hot.rules}\n",
            &[("rules/hot.rules".to_owned(), rules(limit))],
        )
    };
    publish(85);
    f.ok(&["apply"]);
    let mut agent = start_agent(&f);
    let pid = agent.id().to_string();
    wait_running(&f, "the agent runs generation 1", |r| r["generation"] == 1);
    f.ok(&["verify"]);
    // Generation 2 is switched to while the agent is stopped, and its rule
    // set's blob damaged before the agent loads it.
    tool("kill", &["-STOP", &pid]);
    publish(90);
    apply_when_free(&f);
    let blob = f
        .state
        .join("store")
        .join(ferry_core::Sha256::of(rules(90).as_bytes()).to_hex());
    fs::write(&blob, "RULE broken ON\n").unwrap();
    tool("kill", &["-CONT", &pid]);
    wait_running(&f, "the load of generation 2 fails", |r| {
        r["failed"]["generation"] == 2
    });
    assert_eq!(
        running(&f)["generation"],
        1,
        "the old rule set keeps running"
    );
    let human = f.ok(&["plan"]);
    assert!(
        human.contains("! ruleset hot")
            && human.contains("the agent runs generation 1's; loading generation 2's failed"),
        "{human}"
    );
    let plan = f.json(&["plan", "--json"]);
    assert_schema(&plan);
    let kinds: Vec<&str> = plan["drift"][0]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["drift"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["content", "running"], "{plan:#}");
    let out = f.run(&["verify"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("loading generation 2's failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // apply puts the blob back; the agent loads it at its next retry.
    let out = f.ok(&["apply"]);
    assert!(out.contains("restored 1 resource"), "{out}");
    wait_running(&f, "the agent loads generation 2", |r| {
        r["generation"] == 2 && r["failed"].is_null()
    });
    let out = f.run(&["plan", "--exit-code"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    f.ok(&["verify"]);
    let detected = events(&f, "drift-detected");
    assert!(
        detected.iter().any(|e| e["details"]["resource"] == "hot"
            && e["details"]["drift"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["drift"] == "running")),
        "{detected:#?}"
    );
    assert_eq!(events(&f, "drift-restored").len(), 1);
    f.ok(&["audit", "verify"]);
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// `ferry run --once` as the agent starts it, told `watch` by the agent's
/// drift watch (this test process stands in for the agent).
fn once_told(f: &Fixture, watch: &str) -> serde_json::Value {
    let out = f
        .cmd(&["run", "--once", "--json"])
        .env("FERRY_AGENT_PID", std::process::id().to_string())
        .env("FERRY_DRIFT_WATCH", watch)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_quiet_watch_skips_the_file_pass_but_not_what_drifted_before() {
    let f = policy_manifest(None);
    // The agent asks for the paths to watch: every checked file, with
    // whether a change is put back.
    once_told(&f, "list");
    let list: serde_json::Value =
        serde_json::from_slice(&fs::read(f.state.join("watch.json")).unwrap()).unwrap();
    let mut paths: Vec<(String, bool)> = list["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let path = p["path"].as_str().unwrap();
            (
                path.strip_prefix(f.root.to_str().unwrap())
                    .unwrap()
                    .to_owned(),
                p["restore"].as_bool().unwrap(),
            )
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("/etc/report.conf".to_owned(), false),
            ("/etc/restore.conf".to_owned(), true)
        ],
        "{list:#}"
    );
    assert_eq!(
        list["generation"],
        f.json(&["status", "--json"])["current"]["id"]
    );
    // Reported drift is remembered…
    fs::write(f.root.join("etc/report.conf"), "rewritten by the app\n").unwrap();
    once_told(&f, "quiet");
    assert_eq!(
        events(&f, "drift-detected").len(),
        0,
        "quiet: not looked at"
    );
    f.ok(&["run", "--once"]);
    assert_eq!(events(&f, "drift-detected").len(), 1);
    // …and looked at again by a quiet poll: it stays reported, and when the
    // app puts the content back it is gone.
    once_told(&f, "quiet");
    assert_eq!(
        f.json(&["status", "--json"])["drift"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    fs::write(f.root.join("etc/report.conf"), "as shipped\n").unwrap();
    once_told(&f, "quiet");
    assert_eq!(
        f.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
    // Told by anyone but its parent agent, a process ignores the hint.
    fs::write(f.root.join("etc/restore.conf"), "edited\n").unwrap();
    f.cmd(&["run", "--once"])
        .env("FERRY_DRIFT_WATCH", "quiet")
        .output()
        .unwrap();
    assert_eq!(
        fs::read_to_string(f.root.join("etc/restore.conf")).unwrap(),
        "as shipped\n"
    );
    f.ok(&["audit", "verify"]);
}

#[test]
fn the_agent_restores_a_hand_edit_at_once_without_waiting_for_its_poll() {
    let f = agent_fixture("poll_interval = \"1h\"\ndrift_interval = \"1h\"\n");
    let mut agent = start_agent(&f);
    // Armed after the agent's first reconcile.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = f.json(&["status", "--json"]);
        let watch = status["agent"]["drift_watch"].as_str().unwrap_or_default();
        if watch.starts_with("2 paths in 3 directories") {
            assert!(f.ok(&["status"]).contains("drift watch: 2 paths"));
            break;
        }
        assert!(Instant::now() < deadline, "not armed: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An unmanaged neighbour starts nothing.
    fs::write(at(&f, "/etc/app/unmanaged"), "x\n").unwrap();
    fs::write(at(&f, "/etc/app/content.conf"), "edited while running\n").unwrap();
    wait_restored(
        &f,
        Duration::from_secs(20),
        "the agent did not restore the file before its next poll (in an hour)",
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    let restored = events(&f, "drift-restored");
    assert_eq!(restored.len(), 1);
    assert_eq!(events(&f, "drift-detected")[0]["actor"], "agent");
    f.ok(&["audit", "verify"]);
}
