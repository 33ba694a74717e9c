//! Kill soak: `ferry apply`, `rollback`, `gc` and `import` of ~210-file
//! revisions from a python-tuf repository on loopback, each SIGKILLed at a
//! random moment, then recovered and checked:
//!
//! - `current` names a generation the database agrees with, and the files
//!   root holds exactly that generation's files (a file the OS shipped and
//!   ferry took over is back whenever the current revision does not manage
//!   it), with no temp files;
//! - `PRAGMA integrity_check` is ok and the audit chain verifies;
//! - after one more apply, the plan is empty and gc leaves no partial blob.
//!
//! A second soak kills firmware installs (A/B image slots, GRUB played with
//! grub-editenv) at random moments, cuts the power, boots what GRUB picks
//! (it must hold a complete image), recovers and converges.
//!
//! `FERRY_SOAK_KILLS` (default 25, the short run in the test suite) sets
//! the number of kills; `FERRY_SOAK_SEED` the random seed. The long run
//! and its figures: integration/soak/README.md. Prints `N kills, 0
//! invariant violations` at the end (a violation fails the test at once,
//! naming the kill, action and seed).
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tuf::Device;
use common::{FERRY, FileSpec, Rng, Snapshot, expected, manifest, stderr};

const FILES: usize = 210;
const OS_FILE: &str = "etc/os/pre.conf";
const OS_CONTENT: &str = "shipped by the OS\n";

/// Revision `tag` (0, 1 or 2): overlapping sets of files with different
/// contents and modes; 0 and 1 take over the OS's file, 2 does not.
fn revision(tag: usize) -> Vec<FileSpec> {
    let names: &'static [String] = Box::leak(
        (0..FILES + 40)
            .map(|i| format!("/etc/app/d{}/f{i}.conf", i % 7))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let mut files = vec![common::file(
        "/etc/ferry-rev",
        &format!("rev {tag}\n"),
        "0644",
    )];
    for (i, name) in names.iter().enumerate() {
        let present = match tag {
            0 => i < FILES,
            1 => (20..FILES + 20).contains(&i),
            _ => i >= 40,
        };
        if present {
            let content = if i % 3 == tag {
                format!("{i} changed in {tag}\n")
            } else {
                format!("{i}\n")
            };
            let mode = if (i + tag).is_multiple_of(5) {
                "0600"
            } else {
                "0644"
            };
            files.push(common::file(name, &content, mode));
        }
    }
    if tag < 2 {
        files.push(common::file(
            "/etc/os/pre.conf",
            &format!("managed by rev {tag}\n"),
            "0644",
        ));
    }
    files
}

/// What the files root holds when revision `tag` is current.
fn snapshot_of(tag: usize) -> Snapshot {
    let mut s = expected(&revision(tag));
    s.entry(OS_FILE.to_owned())
        .or_insert_with(|| (OS_CONTENT.as_bytes().to_vec(), 0o640));
    s
}

/// Publishes revision `tag` as one new version of the TUF repository.
fn publish(d: &Device, tag: usize) {
    let files = revision(tag);
    let src = d.fx.dir.path().join(format!("tree-{tag}"));
    if !src.exists() {
        fs::create_dir_all(src.join("files")).unwrap();
        fs::create_dir_all(src.join("ferry")).unwrap();
        fs::write(src.join("ferry/manifest.yaml"), manifest(&files)).unwrap();
        for (i, f) in files.iter().enumerate() {
            fs::write(src.join(format!("files/{i}")), &f.content).unwrap();
        }
    }
    d.repo.run("tree", &[src.to_str().unwrap()]);
}

/// The revision tag of the current generation, from `/etc/ferry-rev` in
/// its manifest.
fn current_tag(d: &Device) -> Option<usize> {
    let n = d.fx.current_link()?;
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(d.fx.state.join(format!("generations/{n}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let sha = m["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "/etc/ferry-rev")?["content"]["sha256"]
        .as_str()?
        .to_owned();
    (0..3).find(|t| ferry_core::Sha256::of(format!("rev {t}\n").as_bytes()).to_hex() == sha)
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Apply(usize),
    Rollback,
    Gc,
    Import(usize),
}

fn args_of(d: &Device, a: Action) -> Vec<String> {
    let bundle = |t: usize| {
        d.fx.dir
            .path()
            .join(format!("bundle-{t}"))
            .display()
            .to_string()
    };
    match a {
        Action::Apply(_) => vec!["apply".into(), "--no-reboot".into()],
        Action::Rollback => vec!["rollback".into(), "--no-reboot".into()],
        Action::Gc => vec!["gc".into()],
        Action::Import(t) => vec![
            "import".into(),
            bundle(t),
            "--label".into(),
            "SOAK".into(),
            "--no-reboot".into(),
        ],
    }
}

/// Gets the repository and, for an import, the stick ready (not killed).
fn prepare(d: &Device, a: Action) {
    match a {
        Action::Apply(t) => publish(d, t),
        Action::Import(t) => {
            publish(d, t);
            let out = d.fx.dir.path().join(format!("bundle-{t}"));
            let _ = fs::remove_dir_all(&out);
            d.fx.ok(&["bundle", "export", "--out", out.to_str().unwrap()]);
        }
        Action::Rollback | Action::Gc => {}
    }
}

/// Runs `a`, SIGKILLs it after `after`; whether it was killed running.
fn run_and_kill(d: &Device, a: Action, after: Duration) -> bool {
    let mut child = Command::new(FERRY)
        .arg("--config")
        .arg(&d.fx.config)
        .args(args_of(d, a))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + after;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if Instant::now() >= end {
            child.kill().unwrap();
            let status = child.wait().unwrap();
            return status.signal() == Some(9);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn check(d: &Device, label: &str) {
    let out = d.fx.run(&["recover"]);
    assert!(
        out.status.success(),
        "{label}: recover failed: {}",
        stderr(&out)
    );
    let link = d.fx.current_link();
    let status = d.fx.json(&["status", "--json"]);
    assert_eq!(
        status["current"]["id"].as_u64(),
        link,
        "{label}: database and `current` disagree"
    );
    assert!(
        status["open_transitions"].as_array().unwrap().is_empty(),
        "{label}: transitions left open: {status:#}"
    );
    let snap = d.fx.snapshot();
    let temps: Vec<&String> = snap.keys().filter(|k| k.contains(".ferry-tmp")).collect();
    assert!(
        temps.is_empty(),
        "{label}: temp files left in the files root: {temps:?}"
    );
    let tag = current_tag(d).unwrap_or_else(|| panic!("{label}: no current revision"));
    assert_eq!(
        snap.keys().collect::<Vec<_>>(),
        snapshot_of(tag).keys().collect::<Vec<_>>(),
        "{label}: the files are not exactly revision {tag}'s"
    );
    assert!(
        snap == snapshot_of(tag),
        "{label}: contents or modes differ from revision {tag}"
    );
    assert!(d.fx.integrity_ok(), "{label}: integrity_check");
    let out = d.fx.run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{label}: audit chain: {}",
        stderr(&out)
    );
}

fn converge(d: &Device, label: &str) {
    let out = d.fx.run(&["apply", "--no-reboot"]);
    assert!(
        out.status.success(),
        "{label}: apply after recovery: {}",
        stderr(&out)
    );
    let out = d.fx.run(&["plan", "--exit-code"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{label}: plan not empty after apply"
    );
    d.fx.ok(&["gc"]);
    let left = d.fx.store_leftovers();
    assert!(left.is_empty(), "{label}: partial blobs after gc: {left:?}");
    check(d, label);
}

#[test]
fn random_kills_leave_a_consistent_device() {
    let kills: usize = std::env::var("FERRY_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("FERRY_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let d = Device::new(&[]);
    fs::create_dir_all(d.fx.root.join("etc/os")).unwrap();
    fs::write(d.fx.root.join(OS_FILE), OS_CONTENT).unwrap();
    std::fs::set_permissions(
        d.fx.root.join(OS_FILE),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    publish(&d, 0);
    d.fx.ok(&["apply", "--no-reboot"]);
    check(&d, "start");
    // How long each action takes when left alone (the kill lands within it).
    let mut took: BTreeMap<&str, Duration> = BTreeMap::new();
    for (name, a) in [
        ("apply", Action::Apply(1)),
        ("rollback", Action::Rollback),
        ("gc", Action::Gc),
        ("import", Action::Import(2)),
    ] {
        prepare(&d, a);
        let t = Instant::now();
        let out =
            d.fx.cmd(
                &args_of(&d, a)
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            )
            .output()
            .unwrap();
        took.insert(name, t.elapsed());
        assert!(
            out.status.success() || name == "gc",
            "{name}: {}",
            stderr(&out)
        );
    }
    converge(&d, "calibration");
    let mut rng = Rng(seed | 1);
    let (mut killed, mut rounds) = (0usize, 0usize);
    let mut by_action: BTreeMap<&str, usize> = BTreeMap::new();
    while killed < kills {
        rounds += 1;
        assert!(
            rounds < kills * 20,
            "too few runs were still running when killed"
        );
        let tag = rng.below(3);
        let (name, a) = match rng.below(8) {
            0..=3 => ("apply", Action::Apply(tag)),
            4 => ("rollback", Action::Rollback),
            5 => ("gc", Action::Gc),
            _ => ("import", Action::Import(tag)),
        };
        prepare(&d, a);
        let window = took[name].as_micros() as usize * 6 / 5 + 1;
        let after = Duration::from_micros(rng.below(window) as u64);
        let label = format!(
            "kill {} (seed {seed}, round {rounds}): {a:?} after {after:?}",
            killed + 1
        );
        if run_and_kill(&d, a, after) {
            killed += 1;
            *by_action.entry(name).or_default() += 1;
            check(&d, &label);
            converge(&d, &label);
        }
    }
    println!(
        "{killed} kills, 0 invariant violations ({rounds} runs; by action: {by_action:?}; seed {seed})"
    );
}

#[test]
fn random_kills_during_firmware_installs_always_boot_a_complete_image() {
    use common::gateway::{Gateway, image_bytes};
    let kills: usize = std::env::var("FERRY_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
        / 5;
    let seed: u64 = std::env::var("FERRY_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xf1f0);
    let g = Gateway::new();
    g.d.f.ok(&["firmware", "mark-good"]);
    fs::write(&g.healthy, "").unwrap();
    // Boots and recovers until no reboot is asked for; returns the slot.
    let settle = |label: &str| -> String {
        let mut booted = g.power_on();
        for _ in 0..4 {
            let before = g.reboots();
            let out = g.d.f.run(&["recover"]);
            assert!(out.status.success(), "{label}: recover: {}", stderr(&out));
            if g.reboots() == before {
                return booted;
            }
            booted = g.power_on();
        }
        panic!("{label}: still rebooting after 4 boots");
    };
    let converge = |version: &str, label: &str| {
        for _ in 0..3 {
            if g.d.f.run(&["plan", "--exit-code"]).status.code() == Some(0) {
                break;
            }
            let out = g.d.f.run(&["apply", "--no-reboot"]);
            assert!(out.status.success(), "{label}: apply: {}", stderr(&out));
            settle(label);
        }
        let booted = settle(label);
        assert_eq!(
            g.version_in(&booted),
            version,
            "{label}: converged onto {version}"
        );
        assert_eq!(g.open_transitions(), 0, "{label}");
        assert!(g.d.f.integrity_ok(), "{label}: integrity_check");
        g.d.f.ok(&["audit", "verify"]);
    };
    // Calibration: one uninterrupted install.
    g.publish("v2");
    let t = Instant::now();
    g.d.f.ok(&["apply", "--no-reboot"]);
    let took = t.elapsed();
    converge("v2", "calibration");
    let mut rng = Rng(seed | 1);
    let (mut killed, mut rounds) = (0, 0);
    let mut running = "v2".to_owned();
    while killed < kills {
        rounds += 1;
        assert!(
            rounds < kills * 20 + 20,
            "too few installs were still running when killed"
        );
        let next = format!("v{}", 1 + rng.below(4));
        if next == running {
            continue;
        }
        g.publish(&next);
        let after = Duration::from_micros(rng.below(took.as_micros() as usize * 6 / 5 + 1) as u64);
        let label = format!(
            "firmware kill {} (seed {seed}, round {rounds}): {running} -> {next} after {after:?}",
            killed + 1
        );
        let mut child =
            g.d.f
                .cmd(&["apply", "--no-reboot"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        let end = Instant::now() + after;
        let was_killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if Instant::now() >= end {
                child.kill().unwrap();
                break child.wait().unwrap().signal() == Some(9);
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        // The power goes either way; the next boot must run a complete image.
        let booted = settle(&label);
        assert!(
            g.slot_image(&booted) == image_bytes(&g.version_in(&booted)),
            "{label}: booted an incomplete image"
        );
        assert_eq!(g.open_transitions(), 0, "{label}: open after recovery");
        g.d.f.ok(&["audit", "verify"]);
        converge(&next, &label);
        running = next;
        if was_killed {
            killed += 1;
        }
    }
    println!("{killed} firmware kills, 0 invariant violations ({rounds} installs; seed {seed})");
}
