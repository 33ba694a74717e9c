//! Firmware boot environments, cross-checked with the real tools
//! (`grub-editenv` from grub-common, `fw_printenv`/`fw_setenv` from
//! libubootenv-tool, `mkenvimage` from u-boot-tools), and
//! `ferry firmware status|mark-good` against a boot simulated with them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::gateway::{Device, Gateway, SLOT_SIZE, image_bytes};
use common::*;
use ferry_engine::activate::firmware::env::{BootEnv, BootEnvStore};
use ferry_engine::activate::firmware::grub::{self, GrubEnv};
use ferry_engine::activate::firmware::slot::Slot as _;
use ferry_engine::activate::firmware::uboot::{self, UbootEnv};

fn tricky() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ORDER", "A B"),
        ("A_OK", "1"),
        ("A_TRY", "0"),
        ("path", "C:\\boot\\x"),
        ("multi", "line one\nline two"),
        ("eq", "a=b # not a comment"),
        ("utf8", "Grüße ✓"),
    ]
}

#[test]
fn grub_blocks_are_byte_identical_with_grub_editenv() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grubenv");
    let ps = p.to_str().unwrap();
    tool("grub-editenv", &[ps, "create"]);
    for (n, v) in tricky() {
        tool("grub-editenv", &[ps, "set", &format!("{n}={v}")]);
    }
    let theirs = fs::read(&p).unwrap();
    let env: BootEnv = tricky().into_iter().collect();
    assert_eq!(
        grub::serialize(&env, 1024).unwrap(),
        theirs,
        "ferry writes what grub-editenv writes"
    );
    assert_eq!(
        grub::parse(&theirs).unwrap(),
        env,
        "ferry reads what grub-editenv writes"
    );

    // Updates in place keep the order; unset shrinks; grub-editenv reads ferry's file.
    let store = GrubEnv { path: p.clone() };
    let mut env = store.load().unwrap();
    env.set("A_TRY", "1");
    env.unset("eq");
    env.set("NEW", "x");
    store.store(&env).unwrap();
    tool("grub-editenv", &[ps, "unset", "NEW"]);
    tool("grub-editenv", &[ps, "set", "NEW=x"]);
    assert_eq!(fs::read(&p).unwrap(), grub::serialize(&env, 1024).unwrap());
    let listed = tool("grub-editenv", &[ps, "list"]);
    assert!(
        listed.starts_with(
            "ORDER=A B\nA_OK=1\nA_TRY=1\npath=C:\\boot\\x\nmulti=line one\nline two\n"
        ),
        "{listed}"
    );
}

#[test]
fn grub_block_overflow_and_garbage_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = GrubEnv {
        path: dir.path().join("grubenv"),
    };
    let big: BootEnv = [("V", "x".repeat(1100))].into_iter().collect();
    let e = store.store(&big).unwrap_err().to_string();
    assert!(e.contains("grubenv") && e.contains("too small"), "{e}");
    assert!(!store.path.exists(), "nothing written");
    fs::write(&store.path, "not an environment").unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("header missing"), "{e}");
    let e = GrubEnv {
        path: dir.path().join("missing"),
    }
    .load()
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");
}

fn bootenv_fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(data_dir().join("fixtures/bootenv").join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn listing(env: &BootEnv) -> String {
    env.iter().map(|(n, v)| format!("{n}={v}\n")).collect()
}

/// Regression: ferry read and wrote some GRUB blocks differently from GRUB
/// (a block of only the signature line, a last value without its newline,
/// an empty variable name, a line without `=`, a block without the warning
/// line). Every fixture (integration/fixtures/bootenv/make.py) is read by
/// ferry and by grub-editenv with the same result, and changed by both to
/// the same bytes.
#[test]
fn grub_blocks_are_read_and_changed_exactly_as_grub_editenv_does() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = bootenv_fixtures("grub");
    assert!(fixtures.len() >= 15);
    for f in fixtures {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&f).unwrap();
        let theirs = Command::new("grub-editenv")
            .arg(&f)
            .arg("list")
            .output()
            .unwrap();
        let ours = grub::parse(&bytes);
        assert_eq!(
            theirs.status.success(),
            ours.is_ok(),
            "{name}: {ours:?} {}",
            stderr(&theirs)
        );
        if let Ok(env) = &ours {
            assert_eq!(
                listing(env),
                String::from_utf8_lossy(&theirs.stdout),
                "{name}"
            );
        }
        // The change ferry makes when marking a slot: an existing variable
        // and a new one.
        let (t, o) = (
            dir.path().join(format!("t-{name}")),
            dir.path().join(format!("o-{name}")),
        );
        fs::write(&t, &bytes).unwrap();
        let tool_ok = ["ORDER=B A", "FERRY_OK=1"].iter().all(|set| {
            Command::new("grub-editenv")
                .arg(&t)
                .args(["set", set])
                .output()
                .unwrap()
                .status
                .success()
        });
        let changed = ours.and_then(|mut env| {
            env.set("ORDER", "B A");
            env.set("FERRY_OK", "1");
            grub::update(&bytes, &env)
        });
        match changed {
            Ok(block) => {
                assert!(tool_ok, "{name}: ferry changed a block grub-editenv cannot");
                fs::write(&o, &block).unwrap();
                assert_eq!(
                    block,
                    fs::read(&t).unwrap(),
                    "{name}: bytes differ from grub-editenv's"
                );
                // And through the store, in place.
                let store = GrubEnv { path: o.clone() };
                let env = store.load().unwrap();
                store.store(&env).unwrap();
                assert_eq!(fs::read(&o).unwrap(), block, "{name}");
            }
            Err(e) => assert!(
                !tool_ok,
                "{name}: grub-editenv changed it, ferry refused: {e}"
            ),
        }
    }
}

/// Regression: a U-Boot entry without `=` made ferry declare the whole copy
/// invalid (libubootenv skips the entry), so of a redundant pair ferry used
/// the older copy while U-Boot used the newer.
#[test]
fn uboot_copies_are_read_as_libubootenv_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = bootenv_fixtures("uboot");
    let printenv = |cfg: &Path| tool("fw_printenv", &["-c", cfg.to_str().unwrap()]);
    let ours = |cfg: &Path| {
        let e = uboot::parse_config(cfg).unwrap().load().unwrap();
        e.sorted()
            .iter()
            .map(|(n, v)| format!("{n}={v}\n"))
            .collect::<String>()
    };
    for f in fixtures
        .iter()
        .filter(|f| !f.to_string_lossy().contains("redundant"))
    {
        let copy = dir.path().join(f.file_name().unwrap());
        fs::copy(f, &copy).unwrap();
        let cfg = dir.path().join("single.config");
        fs::write(&cfg, format!("{} 0x0 0x2000\n", copy.display())).unwrap();
        assert_eq!(ours(&cfg), printenv(&cfg), "{}", f.display());
    }
    let (old, new) = (dir.path().join("old.bin"), dir.path().join("new.bin"));
    fs::copy(
        data_dir().join("fixtures/bootenv/uboot/redundant-old.bin"),
        &old,
    )
    .unwrap();
    fs::copy(
        data_dir().join("fixtures/bootenv/uboot/redundant-new-noeq.bin"),
        &new,
    )
    .unwrap();
    let cfg = dir.path().join("redundant.config");
    fs::write(
        &cfg,
        format!(
            "{} 0x0 0x2000\n{} 0x0 0x2000\n",
            old.display(),
            new.display()
        ),
    )
    .unwrap();
    assert_eq!(printenv(&cfg), "BOOT_A_LEFT=2\nBOOT_ORDER=B A\n");
    assert_eq!(ours(&cfg), printenv(&cfg));
}

fn env_file(dir: &Path, name: &str, vars: &[(&str, &str)], redundant: bool) -> std::path::PathBuf {
    let txt = dir.join(format!("{name}.txt"));
    let body: String = vars.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
    fs::write(&txt, body).unwrap();
    let bin = dir.join(format!("{name}.bin"));
    let mut args = vec![
        "-s",
        "0x2000",
        "-o",
        bin.to_str().unwrap(),
        txt.to_str().unwrap(),
    ];
    if redundant {
        args.insert(0, "-r");
    }
    tool("mkenvimage", &args);
    bin
}

fn sorted_lines(vars: &[(&str, &str)]) -> String {
    let mut v: Vec<String> = vars.iter().map(|(n, val)| format!("{n}={val}")).collect();
    v.sort();
    v.join("\n") + "\n"
}

#[test]
fn uboot_single_copy_matches_the_tools() {
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("bootcmd", "run ferry_boot"),
        ("BOOT_ORDER", "A B"),
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "0"),
    ];
    let bin = env_file(dir.path(), "env", &vars, false);
    let cfg = dir.path().join("fw_env.config");
    fs::write(&cfg, format!("{} 0x0 0x2000\n", bin.display())).unwrap();
    let store = uboot::parse_config(&cfg).unwrap();
    assert_eq!(
        store.load().unwrap().sorted(),
        vars.iter().copied().collect::<BootEnv>().sorted()
    );
    let mut env = store.load().unwrap();
    env.set("BOOT_ORDER", "B A");
    env.set("BOOT_B_LEFT", "3");
    store.store(&env).unwrap();
    let c = cfg.to_str().unwrap();
    assert_eq!(
        tool("fw_printenv", &["-c", c]),
        sorted_lines(&[
            ("bootcmd", "run ferry_boot"),
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3")
        ])
    );
    tool("fw_setenv", &["-c", c, "BOOT_B_LEFT", "2"]);
    assert_eq!(store.load().unwrap().get("BOOT_B_LEFT"), Some("2"));
}

#[test]
fn uboot_redundant_copies_agree_with_libubootenv() {
    let dir = tempfile::tempdir().unwrap();
    let vars = [("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3")];
    let image = env_file(dir.path(), "env", &vars, true);
    let (c1, c2) = (dir.path().join("copy1.bin"), dir.path().join("copy2.bin"));
    fs::copy(&image, &c1).unwrap();
    fs::copy(&image, &c2).unwrap();
    let cfg = dir.path().join("fw_env.config");
    fs::write(
        &cfg,
        format!("{} 0x0 0x2000\n{} 0x0 0x2000\n", c1.display(), c2.display()),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let store: UbootEnv = uboot::parse_config(&cfg).unwrap();
    let printenv = || tool("fw_printenv", &["-c", c]);
    let ours = |s: &UbootEnv| {
        let e = s.load().unwrap();
        e.sorted()
            .iter()
            .map(|(n, v)| format!("{n}={v}\n"))
            .collect::<String>()
    };

    // Alternate writers; each reads what the other wrote.
    for i in 0..6 {
        if i % 2 == 0 {
            tool("fw_setenv", &["-c", c, "BOOT_A_LEFT", &i.to_string()]);
        } else {
            let mut e = store.load().unwrap();
            e.set("BOOT_A_LEFT", &i.to_string());
            store.store(&e).unwrap();
        }
        assert_eq!(ours(&store), printenv(), "after write {i}");
        assert!(printenv().contains(&format!("BOOT_A_LEFT={i}\n")));
    }

    // Corrupt the copy in use: both fall back to the other one.
    let (current, _, _) = store.current().unwrap();
    let victim = if current == 0 { &c1 } else { &c2 };
    let mut bytes = fs::read(victim).unwrap();
    bytes[20] ^= 0xff;
    fs::write(victim, &bytes).unwrap();
    assert_eq!(ours(&store), printenv());
    assert!(
        printenv().contains("BOOT_A_LEFT=4\n"),
        "the previous write survives"
    );
    // A write now goes over the corrupt copy and becomes current for both.
    let mut e = store.load().unwrap();
    e.set("BOOT_A_LEFT", "9");
    store.store(&e).unwrap();
    assert!(printenv().contains("BOOT_A_LEFT=9\n"));

    // Flag wrap-around: 0x00 is newer than 0xff.
    let old: BootEnv = [("V", "old")].into_iter().collect();
    let new: BootEnv = [("V", "new")].into_iter().collect();
    fs::write(&c1, uboot::encode(&old, 0x2000, Some(0xff)).unwrap()).unwrap();
    fs::write(&c2, uboot::encode(&new, 0x2000, Some(0x00)).unwrap()).unwrap();
    assert_eq!(printenv(), "V=new\n");
    assert_eq!(ours(&store), "V=new\n");

    // Neither copy valid: both refuse.
    for f in [&c1, &c2] {
        fs::write(f, vec![0u8; 0x2000]).unwrap();
    }
    let out = Command::new("fw_printenv")
        .args(["-c", c])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = store.load().unwrap_err().to_string();
    assert!(
        e.contains("no valid environment copy") && e.contains("bad CRC"),
        "{e}"
    );
}

#[test]
fn booted_slot_is_marked_good_and_audited() {
    let d = Device::new();
    assert_eq!(d.boot().as_deref(), Some("A"));
    let status = d.f.json(&["firmware", "status", "--json"]);
    assert_eq!(status["booted"], "A");
    assert_eq!(status["slots"][0]["trying"], true);
    assert!(
        d.f.ok(&["firmware", "mark-good"])
            .contains("slot A marked good")
    );
    assert_eq!(d.get("A_TRY").as_deref(), Some("0"));
    assert!(
        d.f.ok(&["firmware", "mark-good"])
            .contains("already marked good")
    );
    let audit = d.f.json(&["audit", "list", "--json"]);
    let marks: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "firmware-marked-good")
        .collect();
    assert_eq!(marks.len(), 1, "audited once");
    assert_eq!(marks[0]["details"]["slot"], "A");
    // The next boot picks A again; an unmarked boot would not be retried.
    assert_eq!(d.boot().as_deref(), Some("A"));
    assert_eq!(
        d.boot(),
        None,
        "A was tried and not marked good: GRUB skips it"
    );
    let human = d.f.ok(&["firmware", "status"]);
    assert!(
        human.contains("booted:  A") && human.contains("trying"),
        "{human}"
    );
}

#[test]
fn unknown_booted_slot_and_broken_env_are_clear_errors() {
    let d = Device::new();
    fs::write(&d.cmdline, "quiet root=/dev/sda2\n").unwrap();
    let out = d.f.run(&["firmware", "mark-good"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("no rauc.slot="), "{}", stderr(&out));
    fs::write(&d.cmdline, "rauc.slot=Z\n").unwrap();
    let out = d.f.run(&["firmware", "mark-good"]);
    assert!(
        stderr(&out).contains("rauc.slot=Z names no configured slot"),
        "{}",
        stderr(&out)
    );
    let status = d.f.json(&["firmware", "status", "--json"]);
    assert!(status["booted"].is_null());
    assert!(
        status["booted_error"]
            .as_str()
            .unwrap()
            .contains("rauc.slot=Z")
    );
    fs::write(&d.grubenv, "garbage").unwrap();
    fs::write(&d.cmdline, "rauc.slot=A\n").unwrap();
    let out = d.f.run(&["firmware", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("grubenv") && stderr(&out).contains("header missing"),
        "{}",
        stderr(&out)
    );
    let out = d.f.run(&["firmware", "mark-good"]);
    assert!(stderr(&out).contains("header missing"));
    assert_eq!(
        fs::read_to_string(&d.grubenv).unwrap(),
        "garbage",
        "nothing written over it"
    );
}

#[test]
fn firmware_config_is_validated() {
    let f = Fixture::new();
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(&f.config, format!("{text}[firmware]\nbootenv = \"lilo\"\n")).unwrap();
    let out = f.run(&["firmware", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("firmware.bootenv"),
        "{}",
        stderr(&out)
    );
    fs::write(&f.config, format!("{text}[firmware]\nbootenv = \"grub\"\nslots = [{{ name = \"A\", device = \"/dev/null\" }}]\n")).unwrap();
    let out = f.run(&["firmware", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("firmware.slots"), "{}", stderr(&out));
}

// ---- the install flow against a simulated GRUB boot -----------------------

#[test]
fn update_then_healthy_boot_is_marked_good() {
    let g = Gateway::new();
    g.d.f.ok(&["firmware", "mark-good"]);
    fs::write(&g.healthy, "").unwrap();
    // The running firmware is v1 already: ferry takes it over as it runs,
    // writing nothing and rebooting nothing.
    g.publish("v1");
    g.d.f.ok(&["apply"]);
    assert_eq!((g.reboots(), g.open_transitions()), (0, 0));
    assert_eq!(g.slot_image("B"), b"");
    g.publish("v1.1");
    g.d.f.ok(&["apply"]);
    assert_eq!(g.reboots(), 1, "the reboot command ran");
    assert_eq!(g.power_on(), "B");
    g.d.f.ok(&["recover"]);
    assert_eq!(g.open_transitions(), 0);

    g.publish("v2");
    let out = g.d.f.ok(&["apply", "--no-reboot"]);
    assert!(out.contains("firmware written to slot A"), "{out}");
    assert_eq!(g.reboots(), 1, "--no-reboot");
    assert_eq!(g.slot_image("A"), image_bytes("v2"));
    assert_eq!(g.d.get("ORDER").as_deref(), Some("A B"));
    assert_eq!(
        fs::read_to_string(g.d.f.root.join("etc/os-version")).unwrap(),
        "v2\n"
    );
    // Before the reboot: nothing else may change, and recovery waits.
    let refused = g.d.f.run(&["apply", "--no-reboot"]);
    assert_eq!(refused.status.code(), Some(8), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("waits for a reboot into firmware slot A"));
    let refused = g.d.f.run(&["rollback", "--no-reboot"]);
    assert_eq!(refused.status.code(), Some(8), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("waits for a reboot into firmware slot A"));
    assert_eq!(g.reboots(), 1, "nothing rebooted");
    let out = g.d.f.ok(&["recover"]);
    assert!(out.contains("waits for a reboot into slot A"), "{out}");
    assert_eq!(g.open_transitions(), 1);
    let status = g.d.f.ok(&["status"]);
    assert!(
        status.contains("waits for a reboot into firmware slot A"),
        "{status}"
    );

    let status = g.d.f.json(&["firmware", "status", "--json"]);
    assert_eq!(status["slots"][0]["image"]["version"], "v2");
    assert_eq!(status["slots"][0]["image"]["state"], "pending");
    assert_eq!(status["slots"][1]["image"]["state"], "confirmed");
    assert_eq!(g.power_on(), "A");
    // Early boot (ferry-recover.service) leaves the decision to later.
    g.d.f.ok(&["recover", "--early"]);
    assert_eq!(g.open_transitions(), 1);
    assert_eq!(g.d.get("A_TRY").as_deref(), Some("1"));
    // Once the system is up (ferry-firmware-check.service).
    g.d.f.ok(&["recover"]);
    assert_eq!(g.open_transitions(), 0);
    assert_eq!(g.d.get("A_TRY").as_deref(), Some("0"), "marked good");
    let human = g.d.f.ok(&["firmware", "status"]);
    assert!(
        human.contains("slot A (booted)") && human.contains("gateway-os v2 (confirmed)"),
        "{human}"
    );
    assert!(
        g.audit_events()
            .ends_with(&["firmware-marked-good".to_owned(), "confirmed".to_owned()])
    );
    assert_eq!(g.power_on(), "A", "stays on the new firmware");
    assert_eq!(g.d.f.run(&["plan", "--exit-code"]).status.code(), Some(0));
    g.d.f.ok(&["audit", "verify"]);
}

#[test]
fn failing_health_falls_back_and_is_audited() {
    let g = Gateway::new();
    g.d.f.ok(&["firmware", "mark-good"]);
    g.publish("v2");
    g.d.f.ok(&["apply"]);
    assert_eq!(g.power_on(), "B");
    // No health marker: the checks fail.
    g.d.f.ok(&["recover"]);
    assert_eq!(g.reboots(), 2, "ferry rebooted back");
    assert_eq!(g.open_transitions(), 0);
    // Until that reboot lands, the machine still runs the rolled-back slot
    // B: the agent does not retry v2, and no image is written over A, the
    // only good slot.
    g.d.f.ok(&["run", "--once"]);
    assert_eq!(g.slot_image("A"), image_bytes("v1"));
    g.publish("v3");
    let out = g.d.f.run(&["run", "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not marked good"),
        "{err}"
    );
    assert_eq!(g.slot_image("A"), image_bytes("v1"));
    let audit = g.d.f.json(&["audit", "list", "--json"]);
    let rb = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "rolling-back")
        .unwrap();
    assert!(
        rb["details"]["error"]
            .as_str()
            .unwrap()
            .contains("health check failed"),
        "{rb}"
    );
    assert_eq!(g.power_on(), "A", "back on the old firmware");
    let status = g.d.f.json(&["firmware", "status", "--json"]);
    assert_eq!(status["slots"][1]["image"]["state"], "rolled-back");
    assert_eq!(status["slots"][1]["bootable"], false);
    assert_eq!(g.slot_image("A"), image_bytes("v1"));
    assert!(
        !g.d.f.root.join("etc/os-version").exists(),
        "the files of the transition are undone too"
    );
    assert_eq!(
        g.d.f.json(&["status", "--json"])["current"],
        serde_json::Value::Null
    );
    g.d.f.ok(&["audit", "verify"]);
}

#[test]
fn recover_after_a_healthy_boot_marks_the_booted_slot_good_again() {
    // GRUB counts every boot as a try; without an update to confirm, the
    // post-boot `recover` resets it, or the next reboot finds no slot.
    let g = Gateway::new();
    assert_eq!(g.d.get("A_TRY").as_deref(), Some("1"));
    g.d.f.ok(&["recover"]);
    assert_eq!(
        g.d.get("A_TRY").as_deref(),
        Some("1"),
        "unhealthy: not confirmed"
    );
    fs::write(&g.healthy, "").unwrap();
    g.d.f.ok(&["recover"]);
    assert_eq!(g.d.get("A_TRY").as_deref(), Some("0"));
    assert_eq!(g.audit_events(), ["firmware-marked-good"]);
    g.d.f.ok(&["recover"]);
    assert_eq!(g.audit_events().len(), 1, "nothing to confirm twice");
    assert_eq!(g.power_on(), "A", "the next boot finds A");
    // Other commands leave it to recover.
    g.d.f.ok(&["status"]);
    assert_eq!(g.d.get("A_TRY").as_deref(), Some("1"));
}

#[test]
fn bootloader_fallback_is_recorded_as_rollback() {
    let g = Gateway::new();
    g.d.f.ok(&["firmware", "mark-good"]);
    g.publish("v2");
    g.d.f.ok(&["apply", "--no-reboot"]);
    // B boots but hangs before ferry runs; the next boot falls back to A.
    assert_eq!(g.power_on(), "B");
    assert_eq!(g.power_on(), "A");
    g.d.f.ok(&["recover"]);
    let audit = g.d.f.json(&["audit", "list", "--json"]);
    let rb = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "rolling-back")
        .unwrap();
    assert!(
        rb["details"]["error"]
            .as_str()
            .unwrap()
            .contains("fell back to slot A"),
        "{rb}"
    );
    // Rolled back, and the revision is not tried again.
    assert!(
        g.audit_events()
            .ends_with(&["rolled-back".to_owned(), "revision-rejected".to_owned()]),
        "{:?}",
        g.audit_events()
    );
    g.d.f.ok(&["run", "--once"]);
    assert_eq!(
        g.d.get("B_OK").as_deref(),
        Some("0"),
        "v2 not written again"
    );
    assert_eq!(g.d.get("B_OK").as_deref(), Some("0"));
    assert_eq!(g.power_on(), "A");
}

#[test]
fn power_cut_at_every_step_of_the_install_boots_a_complete_image() {
    use ferry_engine::failpoints as fp;
    let points: Vec<&str> = fp::FIRMWARE
        .iter()
        .copied()
        .chain([
            fp::ACTIVATE_AFTER_APPLY,
            fp::SWITCH_AFTER_RENAME,
            fp::SWITCHED,
        ])
        .collect();
    for point in points {
        let g = Gateway::new();
        g.d.f.ok(&["firmware", "mark-good"]);
        fs::write(&g.healthy, "").unwrap();
        g.publish("v2");
        let out =
            g.d.f
                .cmd(&["apply"])
                .env("FERRY_CRASH_AT", format!("{point}:abort"))
                .output()
                .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(6),
            "{point}: {}",
            stderr(&out)
        );
        // Power cut: the next boot runs a complete image (checked in power_on).
        let mut booted = g.power_on();
        let before = g.reboots();
        g.d.f.ok(&["recover"]);
        if g.reboots() > before {
            booted = g.power_on();
            g.d.f.ok(&["recover"]);
        }
        assert_eq!(g.open_transitions(), 0, "{point}");
        g.d.f.ok(&["audit", "verify"]);
        // Converge: apply again until the new firmware runs.
        for _ in 0..2 {
            if booted == "B"
                && g.slot_image("B") == image_bytes("v2")
                && g.d.f.run(&["plan", "--exit-code"]).status.code() == Some(0)
            {
                break;
            }
            g.d.f.ok(&["apply", "--no-reboot"]);
            booted = g.power_on();
            g.d.f.ok(&["recover"]);
        }
        assert_eq!(booted, "B", "{point}: converged onto the new firmware");
        assert_eq!(g.slot_image("B"), image_bytes("v2"));
        assert_eq!(
            g.slot_image("A"),
            image_bytes("v1"),
            "{point}: the old slot was never touched"
        );
        assert_eq!(
            g.d.f.run(&["plan", "--exit-code"]).status.code(),
            Some(0),
            "{point}"
        );
        assert_eq!(g.open_transitions(), 0);
    }
}

#[test]
fn bad_images_leave_the_running_slot_alone() {
    let g = Gateway::new();
    g.d.f.ok(&["firmware", "mark-good"]);
    // Larger than the slot.
    let big = "x".repeat(SLOT_SIZE + 1);
    g.d.f.publish_raw(
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: firmware, name: os, version: \"9\", source: images/os.img}\n",
        &[("images/os.img".to_owned(), big)],
    );
    let out = g.d.f.run(&["apply"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not fit slot B"),
        "{}",
        stderr(&out)
    );
    // Hash mismatch mid-stream: the pinned digest is not the content's.
    let good = image_bytes("v2");
    let pin = ferry_core::Sha256::of(&good);
    let mut forged = good.clone();
    forged[2 << 20] ^= 1;
    g.d.f.publish_raw(
        &format!("apiVersion: ferry.dev/v1\nresources:\n  - {{kind: firmware, name: os, version: \"2\", source: images/os.img, sha256: \"{pin}\", length: {}}}\n", good.len()),
        &[("images/os.img".to_owned(), String::from_utf8(forged).unwrap())],
    );
    let out = g.d.f.run(&["apply"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));
    assert_eq!(
        g.d.get("B_OK").as_deref(),
        Some("0"),
        "inactive slot stays invalid"
    );
    assert_eq!(g.slot_image("A"), image_bytes("v1"));
    assert_eq!(g.power_on(), "A");
    assert_eq!(g.reboots(), 0);
    // Two firmware resources for one device.
    g.d.f.publish_raw(
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: firmware, name: a, version: \"1\", source: f}\n  - {kind: firmware, name: b, version: \"1\", source: f}\n",
        &[("f".to_owned(), "x".to_owned())],
    );
    let out = g.d.f.run(&["apply"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("more than one firmware resource"),
        "{}",
        stderr(&out)
    );
}

/// The U-Boot script of images/bootloader/boot.cmd, played with the real
/// fw_printenv/fw_setenv on a redundant environment.
fn uboot_boot(cfg: &Path, cmdline: &Path) -> Option<String> {
    let c = cfg.to_str().unwrap();
    let vars = tool("fw_printenv", &["-c", c]);
    let get = |n: &str| {
        vars.lines()
            .find_map(|l| l.strip_prefix(&format!("{n}=")))
            .map(str::to_owned)
    };
    for slot in get("BOOT_ORDER").unwrap_or_default().split_whitespace() {
        let var = format!("BOOT_{slot}_LEFT");
        let left: u32 = get(&var).and_then(|v| v.parse().ok()).unwrap_or(0);
        if left > 0 {
            tool("fw_setenv", &["-c", c, &var, &(left - 1).to_string()]);
            fs::write(cmdline, format!("console=ttyS0 rauc.slot={slot}\n")).unwrap();
            return Some(slot.to_owned());
        }
    }
    None
}

#[test]
fn uboot_boot_counting_end_to_end() {
    let f = Fixture::new();
    let dir = f.dir.path();
    let (cmdline, boot_id, reboots) = (
        dir.join("cmdline"),
        dir.join("boot_id"),
        dir.join("reboots"),
    );
    let cfg = common::gateway::uboot_env(dir);
    fs::write(dir.join("slot-a.img"), image_bytes("v1")).unwrap();
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        format!(
            "{text}[firmware]\nbootenv = \"uboot\"\nuboot_config = {cfg:?}\ncmdline = {cmdline:?}\nboot_id = {boot_id:?}\nreboot_command = [\"sh\", \"-c\", \"echo reboot >> {}\"]\nslots = [{{ name = \"A\", device = {:?}, size = {SLOT_SIZE} }}, {{ name = \"B\", device = {:?}, size = {SLOT_SIZE} }}]\n",
            reboots.display(),
            dir.join("slot-a.img"),
            dir.join("slot-b.img"),
        ),
    )
    .unwrap();
    let mut boots = 0;
    let mut power_on = || {
        boots += 1;
        fs::write(&boot_id, format!("boot-{boots}\n")).unwrap();
        uboot_boot(&cfg, &cmdline)
    };
    let left = |slot: &str| {
        let vars = tool("fw_printenv", &["-c", cfg.to_str().unwrap()]);
        vars.lines()
            .find_map(|l| l.strip_prefix(&format!("BOOT_{slot}_LEFT=")))
            .map(str::to_owned)
    };
    assert_eq!(power_on().as_deref(), Some("A"));
    f.ok(&["firmware", "mark-good"]);
    assert_eq!(left("A").as_deref(), Some("3"));

    let publish = |v: &str| {
        f.publish_raw(
            &format!("apiVersion: ferry.dev/v1\nresources:\n  - {{kind: firmware, name: os, version: \"{v}\", source: os.img}}\n"),
            &[("os.img".to_owned(), String::from_utf8(image_bytes(v)).unwrap())],
        )
    };
    publish("v2");
    f.ok(&["apply"]);
    assert_eq!(left("B").as_deref(), Some("3"));
    assert_eq!(power_on().as_deref(), Some("B"));
    assert_eq!(
        left("B").as_deref(),
        Some("2"),
        "the bootloader counted the attempt"
    );
    f.ok(&["recover"]);
    assert_eq!(
        left("B").as_deref(),
        Some("3"),
        "marked good: attempts restored"
    );

    // A bad update into A that never comes up far enough to run ferry: after
    // three attempts U-Boot falls back to B, and ferry records the rollback.
    publish("v3");
    f.ok(&["apply", "--no-reboot"]);
    for _ in 0..3 {
        assert_eq!(power_on().as_deref(), Some("A"));
    }
    assert_eq!(power_on().as_deref(), Some("B"));
    f.ok(&["recover"]);
    let audit = f.json(&["audit", "list", "--json"]);
    let events: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events[events.len() - 2..],
        ["rolled-back", "revision-rejected"]
    );
    assert!(audit.to_string().contains("fell back to slot B"));
    assert_eq!(f.json(&["firmware", "status", "--json"])["booted"], "B");
    assert_eq!(fs::read(dir.join("slot-b.img")).unwrap(), image_bytes("v2"));
}

/// A loop device, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn block_device_slots_take_their_capacity_from_the_device() {
    use ferry_engine::activate::firmware::slot::SlotConfig;
    assert!(
        is_root(),
        "this test attaches a loop device and needs root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk.img");
    fs::write(&backing, vec![0xaau8; 8 << 20]).unwrap();
    let dev = Loop(
        tool("losetup", &["-f", "--show", backing.to_str().unwrap()])
            .trim()
            .to_owned(),
    );
    // Slot A is an image file (running), slot B the loop device: the same
    // install sequence an update runs, through the boot environment.
    fs::write(dir.path().join("cmdline"), "ferry.slot=A\n").unwrap();
    fs::write(dir.path().join("boot_id"), "1\n").unwrap();
    fs::write(
        dir.path().join("env"),
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
    )
    .unwrap();
    let config = ferry_engine::config::FirmwareConfig {
        bootenv: Some(ferry_engine::config::BootEnvKind::File),
        envfile: dir.path().join("env"),
        cmdline: dir.path().join("cmdline"),
        boot_id: dir.path().join("boot_id"),
        slot_param: "ferry.slot".into(),
        slots: vec![
            SlotConfig {
                name: "A".into(),
                device: dir.path().join("slot-a.img"),
                size: Some(8 << 20),
            },
            SlotConfig {
                name: "B".into(),
                device: dev.0.clone().into(),
                size: None,
            },
        ],
        ..Default::default()
    };
    let fw = ferry_engine::activate::firmware::Firmware::from_config(&config)
        .unwrap()
        .unwrap();
    assert_eq!(config.slots[1].capacity().unwrap(), 8 << 20);
    let img = image_bytes("v2");
    let content = ferry_core::ContentRef::of(&img);
    let install = fw.install(content).unwrap();
    assert_eq!(install.slot.name, "B");
    install.invalidate().unwrap();
    assert_eq!(install.write(&mut &img[..]).unwrap(), img.len() as u64);
    assert!(install.holds());
    install.activate().unwrap();
    assert!(
        fs::read_to_string(dir.path().join("env"))
            .unwrap()
            .contains("BOOT_ORDER=B A")
    );
    let on_disk = fs::read(&backing).unwrap();
    assert_eq!(&on_disk[..img.len()], &img[..]);
    assert!(
        on_disk[img.len()..].iter().all(|&b| b == 0xaa),
        "nothing written past the image"
    );
    // B now runs first in the order; from A the next image goes to B again.
    let big = vec![1u8; 9 << 20];
    let e = fw
        .install(ferry_core::ContentRef::of(&big))
        .unwrap()
        .invalidate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit slot B (8388608 bytes)"), "{e}");
}

#[test]
fn rolling_back_firmware_reuses_the_slot_that_still_holds_it() {
    let g = Gateway::new();
    g.d.f.keep_generations();
    fs::write(&g.healthy, "").unwrap();
    g.d.f.ok(&["firmware", "mark-good"]);
    // Generation 1 takes over v1 as it runs in A; generation 2 writes v2
    // into B.
    g.publish("v1");
    g.d.f.ok(&["apply", "--no-reboot"]);
    g.publish("v2");
    g.d.f.ok(&["apply", "--no-reboot"]);
    assert_eq!(g.power_on(), "B");
    g.d.f.ok(&["recover"]);
    assert_eq!(
        (g.slot_image("A"), g.slot_image("B")),
        (image_bytes("v1"), image_bytes("v2"))
    );
    // Installed images live in their slots: gc drops them from the store,
    // and a later change that leaves the firmware alone does not fetch it.
    g.d.f.ok(&["generations", "pin", "1"]);
    g.d.f.ok(&["gc"]);
    let large_blobs = || {
        fs::read_dir(g.d.f.state.join("store"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().metadata().unwrap().len() > 1 << 20)
            .count()
    };
    assert_eq!(large_blobs(), 0);
    fs::write(g.d.f.repo.join("files/version"), "v2 (patched)\n").unwrap();
    let out = g.d.f.ok(&["apply"]);
    assert!(out.contains("1 changed"), "{out}");
    assert_eq!(large_blobs(), 0, "the unchanged image was not staged again");
    // Back to generation 1 (firmware v1), which slot A still holds.
    let before = fs::metadata(g.d.f.dir.path().join("slot-a.img"))
        .unwrap()
        .modified()
        .unwrap();
    let out = g.d.f.run(&["--log-level", "info", "rollback", "--to", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("slot already holds the image"),
        "{}",
        stderr(&out)
    );
    let after = fs::metadata(g.d.f.dir.path().join("slot-a.img"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "not rewritten");
    assert_eq!(g.reboots(), 1, "rollback reboots into the other slot");
    assert_eq!(g.power_on(), "A");
    g.d.f.ok(&["recover"]);
    assert_eq!(g.open_transitions(), 0);
    let status = g.d.f.json(&["status", "--json"]);
    assert_eq!(status["current"]["id"], 1);
    assert_eq!(g.slot_image("A"), image_bytes("v1"));
}

#[test]
fn the_agent_drops_a_firmware_image_from_the_store_once_its_slot_is_good() {
    let g = Gateway::new();
    g.d.f.ok(&["firmware", "mark-good"]);
    fs::write(&g.healthy, "").unwrap();
    g.publish("v2");
    let image = ferry_core::Sha256::of(&image_bytes("v2")).to_hex();
    let in_store = || g.d.f.state.join("store").join(&image).exists();
    let once = || g.d.f.json(&["run", "--once", "--json"]);
    assert_eq!(once()["result"], "applied");
    assert_eq!(g.reboots(), 1);
    // Until the new slot is confirmed the image is what undo may need.
    assert_eq!(once()["result"], "held");
    assert!(in_store());
    assert_eq!(g.power_on(), "B");
    g.d.f.ok(&["recover"]);
    assert_eq!(g.open_transitions(), 0);
    let r = once();
    assert_eq!(r["result"], "no_change", "{r}");
    assert!(!in_store(), "the confirmed image left the store");
    // It lives on in its slot, and the device is in the desired state.
    assert_eq!(g.slot_image("B"), image_bytes("v2"));
    g.d.f.ok(&["audit", "verify"]);
    assert_eq!(g.d.f.run(&["plan", "--exit-code"]).status.code(), Some(0));
}

#[test]
fn verify_reads_back_the_slots_and_rollback_refuses_a_corrupted_one() {
    let g = Gateway::new();
    g.d.f.keep_generations();
    fs::write(&g.healthy, "").unwrap();
    g.d.f.ok(&["firmware", "mark-good"]);
    g.publish("v1");
    g.d.f.ok(&["apply", "--no-reboot"]);
    g.publish("v2");
    g.d.f.ok(&["apply", "--no-reboot"]);
    assert_eq!(g.power_on(), "B");
    g.d.f.ok(&["recover"]);
    // The images live in their slots only.
    g.d.f.ok(&["gc"]);
    let v = g.d.f.json(&["verify", "--firmware", "--json"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["checked"], 4, "a file, the firmware and two slots: {v:#}");
    assert!(v["bytes"].as_u64().unwrap() >= 2 * image_bytes("v1").len() as u64);
    // A flipped bit in slot A, the rollback target.
    let a = g.d.f.dir.path().join("slot-a.img");
    let mut bytes = fs::read(&a).unwrap();
    bytes[1000] ^= 1;
    fs::write(&a, bytes).unwrap();
    let out = g.d.f.run(&["verify", "--firmware"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("! firmware gateway-os v1 (slot A): slot A")
            && text.contains("sha256 mismatch"),
        "{text}"
    );
    // Without --firmware the slots are not read.
    g.d.f.ok(&["verify"]);
    let out = g.d.f.run(&["rollback", "--no-reboot"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("firmware gateway-os v1, which no slot holds intact"),
        "{}",
        stderr(&out)
    );
    assert_eq!(g.d.f.json(&["status", "--json"])["current"]["id"], 2);
    assert_eq!(g.reboots(), 0);
    // A good re-install of v1 (forward, written into A) passes again.
    g.publish("v1");
    g.d.f.ok(&["apply", "--no-reboot"]);
    let v = g.d.f.json(&["verify", "--firmware", "--json"]);
    assert_eq!(
        v["problems"],
        serde_json::json!([]),
        "pending switch: {v:#}"
    );
    assert_eq!(g.power_on(), "A");
    g.d.f.ok(&["recover"]);
    let out = g.d.f.run(&["verify", "--firmware"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The boot order changed by hand with grub-editenv: reported by plan,
    // status and verify; not undone by ferry (the bootloader's business).
    let env = g.d.grubenv.to_str().unwrap();
    tool("grub-editenv", &[env, "set", "ORDER=B A"]);
    let human = g.d.f.ok(&["plan"]);
    assert!(
        human.contains("? firmware gateway-os")
            && human.contains("not restored: the boot environment"),
        "{human}"
    );
    let out = g.d.f.run(&["plan", "--exit-code"]);
    assert_eq!(out.status.code(), Some(10));
    let out = g.d.f.run(&["verify", "--firmware"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("expected slot A first in the boot order and good, found boot order \"B A\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    g.d.f.ok(&["apply"]);
    assert!(
        g.d.f
            .ok(&["status"])
            .contains("drift:       firmware gateway-os")
    );
    assert_eq!(
        tool("grub-editenv", &[env, "list"])
            .lines()
            .find(|l| l.starts_with("ORDER=")),
        Some("ORDER=B A"),
        "left as it was"
    );
    tool("grub-editenv", &[env, "set", "ORDER=A B"]);
    g.d.f.ok(&["verify", "--firmware"]);
    g.d.f.ok(&["apply"]);
    assert_eq!(
        g.d.f.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
}
