//! The command-line interface end to end: demo, plan/apply/rollback/gc,
//! JSON output, exit codes, and the README's promises.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::Path;

use common::*;

#[test]
fn demo_runs_offline_without_root_and_ends_with_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(FERRY)
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    for needle in [
        "switched nothing → generation 1",
        "no changes (generation 1)",
        "switched generation 1 → generation 2",
        "switched generation 2 → generation 1",
        // Firmware into slot B, booted by the (played) bootloader, confirmed.
        "firmware written to slot B (generation 3",
        "activated   add firmware gateway-os",
        "GRUB booted slot B",
        "firmware-marked-good",
        "gateway-os 2.0 (confirmed)",
        "audit chain ok",
        "generation:  3",
        // Reconciled from the signed TUF repository, not a plain directory.
        "revision tuf-1-",
        "revision tuf-2-",
        "revision tuf-3-",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} missing from demo output:\n{text}"
        );
    }
    // A rule set and a WASM module switch with the files; a binary built
    // without them leaves them out of the demo.
    for (needle, built_in) in [
        ("activated   add ruleset overheat", cfg!(feature = "rules")),
        (
            "activated   change ruleset overheat",
            cfg!(feature = "rules"),
        ),
        (
            "activated   add wasm modbus-decoder",
            cfg!(feature = "wasm"),
        ),
    ] {
        assert_eq!(text.contains(needle), built_in, "{needle:?}:\n{text}");
    }
    // The device trusted the repository through its root, and kept the
    // verified metadata byte for byte.
    assert_eq!(
        fs::read(dir.path().join("state/tuf/metadata/root.json")).unwrap(),
        fs::read(dir.path().join("repository/root.json")).unwrap()
    );
    // The demo's files really are on disk, at generation 3's content, and
    // slot B holds firmware 2.0 (written byte for byte, verified).
    let bridge =
        fs::read_to_string(dir.path().join("root/etc/mosquitto/conf.d/bridge.conf")).unwrap();
    assert!(bridge.contains("mqttv50"));
    let slot_b = fs::read(dir.path().join("boot/slot-b.img")).unwrap();
    assert!(slot_b.starts_with(b"gateway-os 2.0 block 000000\n"));
    let grubenv = fs::read_to_string(dir.path().join("boot/grubenv")).unwrap();
    assert!(
        grubenv.contains("ORDER=B A\nA_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=0\n"),
        "{grubenv}"
    );
    // The kept directory is a working setup: its state is a normal one the
    // other commands read, and the repository (now a file:// URL, as the
    // demo's server is gone) still verifies.
    let ferry = |args: &[&str]| {
        std::process::Command::new(FERRY)
            .args(["--config"])
            .arg(dir.path().join("ferry.toml"))
            .args(args)
            .output()
            .unwrap()
    };
    let status = ferry(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["current"]["id"], 3);
    assert_eq!(v["previous"], 1);
    for args in [&["plan"][..], &["apply"], &["run", "--once"]] {
        let out = ferry(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let out = ferry(&["plan", "--exit-code"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The next revision, signed with the key the demo keeps: edit the
    // newest revision's files and publish them.
    let publish = || {
        std::process::Command::new(FERRY)
            .args(["demo", "--publish", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let source = dir.path().join("source");
    fs::write(source.join("files/maintenance.txt"), "edited by hand\n").unwrap();
    let out = publish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("as version 4 of"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = ferry(&["apply", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(dir.path().join("root/etc/ferry-demo/maintenance.txt")).unwrap(),
        "edited by hand\n"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ferry(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["current"]["id"], 4);
    assert!(
        v["current"]["revision"]
            .as_str()
            .unwrap()
            .starts_with("tuf-4-"),
        "{v:#}"
    );
    // What cannot be published is named; nothing is signed.
    std::os::unix::fs::symlink("/etc/passwd", source.join("files/passwd")).unwrap();
    let out = publish();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("files/passwd: not a regular file"),
        "{}",
        stderr(&out)
    );
    assert!(
        !dir.path()
            .join("repository/metadata/5.targets.json")
            .exists()
    );
    let out = std::process::Command::new(FERRY)
        .args(["demo", "--publish"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--publish needs --dir");
}

#[test]
fn readme_quick_start_is_exactly_two_commands_that_exist() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("README has a Quick start section");
    let section = &readme[start..];
    let block_start = section.find("```sh\n").expect("a sh block") + 6;
    let block = &section[block_start..block_start + section[block_start..].find("```").unwrap()];
    let commands: Vec<&str> = block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert_eq!(
        commands,
        vec!["cargo run -p ferry -- demo", "integration/run-tests"],
        "{block}"
    );
    let ci =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/run")).unwrap();
    assert!(
        ci.contains("integration/run-tests"),
        "CI runs the README's test command"
    );
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let out = std::process::Command::new(FERRY)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "status",
        "plan",
        "apply",
        "generations",
        "rollback",
        "gc",
        "audit",
        "demo",
        "recover",
        "Exit codes:",
        "7  an activation or the health checks after a change failed",
        "wasm",
        "`wasm run` exits with the module's own status",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from --help");
    }
    let out = std::process::Command::new(FERRY)
        .arg("bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_names_the_commit_the_target_and_the_features() {
    let out = std::process::Command::new(FERRY)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key:?} line in --version:\n{text}"))
            .to_owned()
    };
    // The checkout the binary was built from.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(head.status.success());
    assert_eq!(line("commit"), String::from_utf8_lossy(&head.stdout).trim());
    let arch = std::env::consts::ARCH;
    assert!(
        line("target").starts_with(&format!("{arch}-")) && line("target").contains("linux"),
        "{text}"
    );
    let features = line("features");
    assert!(features.contains("tuf"), "{text}");
    for (feature, on) in [
        ("git", cfg!(feature = "git")),
        ("wasm", cfg!(feature = "wasm")),
        ("sigstore", cfg!(feature = "sigstore")),
        ("fleet", cfg!(feature = "fleet")),
    ] {
        assert_eq!(features.contains(feature), on, "{text}");
    }
}

/// Every command path `ferry --help` lists (`audit list`, `generations pin`
/// …), found by walking the help of each.
fn command_paths() -> Vec<Vec<String>> {
    fn walk(prefix: &[String], out: &mut Vec<Vec<String>>) {
        let help = std::process::Command::new(FERRY)
            .args(prefix)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "{prefix:?} --help: {}",
            stderr(&help)
        );
        let text = String::from_utf8(help.stdout).unwrap();
        let Some(list) = text.split("Commands:\n").nth(1) else {
            return;
        };
        for line in list.lines() {
            // Entries are indented two spaces; a blank line ends the list.
            let Some(name) = line
                .strip_prefix("  ")
                .and_then(|l| l.split_whitespace().next())
            else {
                break;
            };
            if name == "help" || line.starts_with("   ") {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(name.to_owned());
            out.push(path.clone());
            walk(&path, out);
        }
    }
    let mut out = Vec::new();
    walk(&[], &mut out);
    out
}

/// The codes the exit-code table documents (`ferry --help`,
/// docs/operations.md).
const DOCUMENTED: [i32; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10];

#[test]
fn every_command_exits_with_a_documented_code_and_usage_errors_with_2() {
    let paths = command_paths();
    for must in [
        &["apply"][..],
        &["audit", "list"],
        &["generations", "pin"],
        &["firmware", "mark-good"],
        &["time-floor", "repair"],
    ] {
        assert!(
            paths.iter().any(|p| p == must),
            "{must:?} not found in {paths:?}"
        );
    }
    // The table in the docs has every code, and only those.
    let ops =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"))
            .unwrap();
    for code in DOCUMENTED {
        assert!(
            ops.contains(&format!("\n| {code} |")),
            "docs/operations.md lacks exit code {code}"
        );
    }
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    f.ok(&["apply"]);
    for path in &paths {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        // A flag no command has: a usage error.
        let mut bad = args.clone();
        bad.push("--no-such-flag");
        let out = f.run(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        // Run as it is (bounded: nothing here waits for input or a
        // network), the code is one the table documents and nothing
        // panicked.
        if matches!(
            args[..],
            ["run"] | ["rules", "run", ..] | ["fleet", ..] | ["demo"]
        ) {
            continue;
        }
        let out = f
            .cmd(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let code = out.status.code();
        assert!(
            code.is_some_and(|c| DOCUMENTED.contains(&c)),
            "{args:?} exited {code:?}: {}",
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Arguments that parse as text but mean nothing: usage errors too.
    for bad in [
        &["audit", "list", "--since", "yesterday"][..],
        &["audit", "export", "--since", "soon"],
        &["time-floor", "repair", "--at", "noon"],
    ] {
        let out = f.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(bad[bad.len() - 2]),
            "{}",
            stderr(&out)
        );
    }
}

/// `ferry … | head`: the reader goes away before ferry writes.
#[test]
fn a_closed_pipe_ends_commands_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let f = Fixture::new();
    for v in 1..=3 {
        f.publish(&[file("/etc/a", &format!("{v}\n"), "0644")]);
        f.ok(&["apply"]);
    }
    for args in [
        &["audit", "list"][..],
        &["audit", "list", "--json"],
        &["audit", "export"],
        &["generations"],
        &["status"],
        &["plan"],
        &["--help"],
    ] {
        let mut child = f
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(
            out.status.success() || out.status.signal() == Some(13),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// JSON for every command a script reads.
#[test]
fn recover_pin_and_unpin_answer_in_json() {
    let f = Fixture::new();
    // Before the first apply (the boot units run it anyway): nothing to
    // do, and no state directory is made.
    let r = f.json(&["recover", "--early", "--json"]);
    assert_eq!(r["state"], "none");
    assert!(!f.state.exists());
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    f.ok(&["apply"]);
    let r = f.json(&["recover", "--json"]);
    assert_eq!(
        (r["current"].as_u64(), r["awaiting_reboot"].is_null()),
        (Some(1), true)
    );
    let p = f.json(&["generations", "pin", "1", "--json"]);
    assert_eq!(p, serde_json::json!({"generation": 1, "pinned": true}));
    let p = f.json(&["generations", "--json", "unpin", "1"]);
    assert_eq!(p, serde_json::json!({"generation": 1, "pinned": false}));
    // Without [firmware]: a configuration error, naming the key.
    for args in [
        &["firmware", "mark-good", "--json"][..],
        &["firmware", "status"],
    ] {
        let out = f.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("firmware.bootenv"),
            "{}",
            stderr(&out)
        );
    }
}

/// Nothing was interrupted: no warning says so.
#[test]
fn recovery_warns_only_about_what_was_interrupted() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    let out = f.run(&["--log-level", "info", "apply"]);
    assert!(out.status.success());
    for args in [
        &["--log-level", "info", "status"][..],
        &["--log-level", "info", "recover"],
    ] {
        let out = f.run(args);
        assert!(
            !stderr(&out).contains("recovering interrupted transition"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn status_before_anything_is_applied() {
    let f = Fixture::new();
    let out = f.ok(&["status"]);
    assert!(out.contains("nothing applied yet"), "{out}");
    let v = f.json(&["status", "--json"]);
    assert!(v["current"].is_null());
    assert!(!f.state.exists(), "read-only commands create nothing");
    let out = f.run(&["rollback"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing to roll back"));
}

#[test]
fn plan_shows_changes_human_and_json_and_changes_nothing() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644"), file("/etc/b", "1\n", "0644")]);
    f.ok(&["apply"]);
    f.publish(&[file("/etc/a", "2\n", "0600"), file("/etc/c", "1\n", "0644")]);
    let human = f.ok(&["plan"]);
    assert!(
        human.contains("~ file /etc/a") && human.contains("mode changed"),
        "{human}"
    );
    assert!(
        human.contains("- file /etc/b") && human.contains("no longer desired"),
        "{human}"
    );
    assert!(
        human.contains("+ file /etc/c") && human.contains("new"),
        "{human}"
    );
    assert!(
        human.contains("1 to add, 1 to change, 1 to remove"),
        "{human}"
    );
    let j = f.json(&["plan", "--json"]);
    assert_eq!(
        j["summary"],
        serde_json::json!({"add": 1, "change": 1, "remove": 1})
    );
    let ops: Vec<&str> = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, vec!["change", "remove", "add"]);
    assert_eq!(f.run(&["plan", "--exit-code"]).status.code(), Some(10));
    // Nothing was applied by planning.
    assert_eq!(fs::read_to_string(f.root.join("etc/a")).unwrap(), "1\n");
    assert_eq!(f.current_link(), Some(1));
}

#[test]
fn no_change_apply_records_no_transition_and_writes_no_blob() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    f.ok(&["apply"]);
    let audit = f.audit_len();
    let store_before: Vec<_> = fs::read_dir(f.state.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let j = f.json(&["apply", "--json"]);
    assert_eq!(j["result"], "no-change");
    assert_eq!(f.audit_len(), audit);
    let store_after: Vec<_> = fs::read_dir(f.state.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(store_before, store_after);
}

#[test]
fn rollback_to_any_generation_and_back() {
    let f = Fixture::new();
    f.keep_generations();
    for v in 1..=3 {
        f.publish(&[file("/etc/a", &format!("{v}\n"), "0644")]);
        f.ok(&["apply"]);
    }
    let j = f.json(&["rollback", "--to", "1", "--json"]);
    assert_eq!(j["result"], "switched");
    assert_eq!((j["from"].as_u64(), j["to"].as_u64()), (Some(3), Some(1)));
    assert_eq!(fs::read_to_string(f.root.join("etc/a")).unwrap(), "1\n");
    // The previous generation is now 3: `rollback` alone goes back there.
    f.ok(&["rollback"]);
    assert_eq!(fs::read_to_string(f.root.join("etc/a")).unwrap(), "3\n");
    assert_eq!(f.current_link(), Some(3));
    let out = f.run(&["rollback", "--to", "3"]);
    assert_eq!(out.status.code(), Some(8));
    assert!(stderr(&out).contains("already current"));
    let out = f.run(&["rollback", "--to", "42"]);
    assert_eq!(out.status.code(), Some(8));
    assert!(stderr(&out).contains("generation 42 does not exist"));
}

#[test]
fn gc_keeps_current_previous_and_pinned() {
    let f = Fixture::new();
    f.keep_generations();
    for v in 1..=5 {
        f.publish(&[
            file("/etc/a", &format!("{v}\n"), "0644"),
            file("/etc/const", "same\n", "0644"),
        ]);
        f.ok(&["apply"]);
    }
    f.ok(&["generations", "pin", "2"]);
    let j = f.json(&["gc", "--json"]);
    assert_eq!(j["generations"], serde_json::json!([1, 3]));
    let ids = f.generation_ids();
    assert_eq!(ids, vec![2, 4, 5]);
    assert!(!f.state.join("generations/1").exists() && !f.state.join("generations/3").exists());
    // Every blob left is referenced by a surviving generation, and every
    // surviving generation can still be switched to.
    let blobs = fs::read_dir(f.state.join("store")).unwrap().count();
    assert_eq!(blobs, 4, "3 versions of /etc/a kept + the shared file");
    f.ok(&["rollback", "--to", "2"]);
    assert_eq!(fs::read_to_string(f.root.join("etc/a")).unwrap(), "2\n");
    // gc with nothing to collect records nothing.
    f.ok(&["generations", "unpin", "2"]);
    let j = f.json(&["gc", "--json"]);
    assert_eq!(
        j["generations"],
        serde_json::json!([4]),
        "current 2, previous 5 stay"
    );
    let j = f.json(&["gc", "--json"]);
    assert_eq!(j["generations"], serde_json::json!([]));
    f.ok(&["audit", "verify"]);
}

#[test]
fn generations_listing_marks_current_previous_and_pinned() {
    let f = Fixture::new();
    for v in 1..=2 {
        f.publish(&[file("/etc/a", &format!("{v}\n"), "0644")]);
        f.ok(&["apply"]);
    }
    f.ok(&["generations", "pin", "1"]);
    let text = f.ok(&["generations"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].contains("previous") && lines[1].contains("pin"),
        "{text}"
    );
    assert!(lines[2].contains("current"), "{text}");
    let out = f.run(&["generations", "pin", "9"]);
    assert_eq!(out.status.code(), Some(8));
}

#[test]
fn state_dir_flag_and_env_override_config() {
    let f = Fixture::new();
    f.publish(&[file("/etc/a", "1\n", "0644")]);
    let other = f.dir.path().join("other-state");
    f.cmd(&["apply"])
        .env("FERRY_STATE_DIR", &other)
        .output()
        .unwrap();
    assert!(other.join("state.db").is_file());
    assert!(!f.state.exists());
}

#[test]
fn removing_a_taken_over_file_restores_the_original() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    // A file the OS shipped, before ferry manages it.
    fs::create_dir_all(f.root.join("etc/mosquitto")).unwrap();
    let os_file = f.root.join("etc/mosquitto/mosquitto.conf");
    fs::write(&os_file, "# shipped by the OS\n").unwrap();
    fs::set_permissions(&os_file, fs::Permissions::from_mode(0o600)).unwrap();
    f.publish(&[
        file("/etc/mosquitto/mosquitto.conf", "managed v1\n", "0644"),
        file("/etc/new", "new\n", "0644"),
    ]);
    f.ok(&["apply"]);
    f.publish(&[
        file("/etc/mosquitto/mosquitto.conf", "managed v2\n", "0644"),
        file("/etc/new", "new\n", "0644"),
    ]);
    f.ok(&["apply"]);
    f.publish(&[file("/etc/new", "new\n", "0644")]);
    f.ok(&["apply"]);
    // Three generations later, and after gc, the OS's file is back as it was.
    f.ok(&["gc"]);
    assert_eq!(
        fs::read_to_string(&os_file).unwrap(),
        "# shipped by the OS\n"
    );
    assert_eq!(
        fs::metadata(&os_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Taking it over again and removing it again works the same; a file
    // ferry created is simply deleted.
    f.publish(&[file(
        "/etc/mosquitto/mosquitto.conf",
        "managed v3\n",
        "0644",
    )]);
    f.ok(&["apply"]);
    f.ok(&["gc"]);
    assert!(!f.root.join("etc/new").exists());
    f.publish(&[]);
    f.ok(&["apply"]);
    assert_eq!(
        fs::read_to_string(&os_file).unwrap(),
        "# shipped by the OS\n"
    );
    // A rollback to a generation that managed it takes it over again.
    f.ok(&["rollback"]);
    assert_eq!(fs::read_to_string(&os_file).unwrap(), "managed v3\n");
    f.ok(&["audit", "verify"]);
}

/// Regression: a pre-existing state directory kept its mode, so with 0755
/// `state.db` was 0644 and a blob rendered from a secret was readable by
/// every user.
#[test]
fn a_pre_existing_open_state_dir_is_made_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    fs::create_dir_all(&f.state).unwrap();
    fs::set_permissions(&f.state, fs::Permissions::from_mode(0o755)).unwrap();
    f.publish(&[file("/etc/a.conf", "secret-ish\n", "0600")]);
    f.ok(&["apply"]);
    let mode = |p: &std::path::Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&f.state), 0o700);
    for name in ["state.db", "lock"] {
        assert_eq!(mode(&f.state.join(name)), 0o600, "{name}");
    }
    for e in fs::read_dir(f.state.join("store")).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is readable by others", p.display());
    }
    // Opened again after someone loosened it: closed again.
    fs::set_permissions(&f.state, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(f.state.join("state.db"), fs::Permissions::from_mode(0o644)).unwrap();
    f.ok(&["gc"]);
    assert_eq!(mode(&f.state), 0o700);
    assert_eq!(mode(&f.state.join("state.db")), 0o600);
}

/// `images/init.d/ferry`, the init script for systems without systemd:
/// `early` recovers, `start` runs the firmware check then the agent in the
/// background, `reload` and `stop` reach it, `status` tells.
#[test]
fn the_init_script_starts_reloads_and_stops_the_agent() {
    let f = Fixture::new();
    let sock = f.dir.path().join("ferry.sock");
    f.append_config(&format!(
        "[agent]\npoll_interval = \"1h\"\ncontrol_socket = {sock:?}\n"
    ));
    f.publish(&[file("/etc/app.conf", "from the init script\n", "0644")]);
    let pidfile = f.dir.path().join("run/ferry.pid");
    let log = f.dir.path().join("ferry.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/init.d/ferry");
    let init = |action: &str| {
        std::process::Command::new("sh")
            .arg(&script)
            .arg(action)
            .env("FERRY", FERRY)
            .env("FERRY_CONFIG", &f.config)
            .env("FERRY_PIDFILE", &pidfile)
            .env("FERRY_LOG", &log)
            .env("FERRY_FIRMWARE_WAIT", "5")
            .env_remove("FERRY_STATE_DIR")
            .output()
            .unwrap()
    };
    assert!(init("early").status.success());
    assert_eq!(init("status").status.code(), Some(3), "not running yet");
    assert!(init("start").status.success());
    // The agent's first reconcile applies the source.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::read_to_string(f.root.join("etc/app.conf"))
        .ok()
        .as_deref()
        != Some("from the init script\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = f.json(&["status", "--json"]);
    assert_eq!(status["agent"]["pid"], pid, "{status:#}");
    let out = init("status");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("running (pid {pid})")));
    assert!(init("reload").status.success());
    assert!(init("stop").status.success());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the agent is gone"
    );
    assert!(!pidfile.exists());
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains("configuration reloaded"),
        "SIGHUP reached the agent"
    );
    assert_eq!(init("status").status.code(), Some(3));
}

/// A configuration that needs a subsystem this build leaves out is refused
/// at load, naming the feature; with it built in, the same configuration
/// loads. (The TUF-only build runs this test too.)
#[test]
fn a_config_needing_a_feature_this_build_lacks_is_refused_naming_it() {
    let cases = [
        (
            "sigstore",
            cfg!(feature = "sigstore"),
            "sigstore.require",
            "[[sigstore.require]]\nkind = \"firmware\"\nidentity = \"release@example.com\"\nissuer = \"https://accounts.example.com\"\n",
        ),
        (
            "fleet",
            cfg!(feature = "fleet"),
            "fleet.broker",
            "[fleet]\nbroker = \"mqtt://127.0.0.1:1883\"\n",
        ),
        (
            "rules",
            cfg!(feature = "rules"),
            "rules.socket",
            "[rules]\nsocket = \"/run/ferry-events.sock\"\n",
        ),
        (
            "ingest",
            cfg!(feature = "ingest"),
            "rules.coap",
            "[rules.coap]\nbind = \"127.0.0.1:5683\"\n",
        ),
    ];
    for (feature, built_in, key, section) in cases {
        let f = Fixture::new();
        f.append_config(section);
        f.publish(&[file("/etc/app.conf", "v1\n", "0644")]);
        let out = f.run(&["plan"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if built_in {
            assert!(out.status.success(), "{feature}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{feature}: {stderr}");
            assert!(
                stderr.contains(key) && stderr.contains(&format!("cargo feature `{feature}`")),
                "{feature}: {stderr}"
            );
        }
    }
    // So is a manifest asking for a kind the build cannot run, at its JSON
    // pointer, and the generation in place stays.
    let f = Fixture::new();
    f.publish(&[file("/etc/app.conf", "v1\n", "0644")]);
    f.ok(&["apply"]);
    // Without the runtime a rule set's kind is refused before its sources.
    let (ingest_pointer, ingest_feature) = if cfg!(feature = "rules") {
        ("/resources/1/ingest", "ingest")
    } else {
        ("/resources/1/kind", "rules")
    };
    let kinds = [
        (
            "rules",
            cfg!(feature = "rules"),
            "/resources/1/kind",
            "  - {kind: ruleset, name: hot, source: files/hot.rules}\n",
        ),
        (
            ingest_feature,
            cfg!(feature = "ingest"),
            ingest_pointer,
            "  - kind: ruleset\n    name: hot\n    source: files/hot.rules\n    ingest: {coap: {bind: \"127.0.0.1:5683\"}}\n",
        ),
    ];
    for (feature, built_in, pointer, resource) in kinds {
        f.publish_raw(
            &format!(
                "apiVersion: ferry.dev/v1\nresources:\n  - {{kind: file, path: /etc/app.conf, source: files/app.conf}}\n{resource}"
            ),
            &[
                ("files/app.conf".into(), "v1\n".into()),
                ("files/hot.rules".into(), "ON t > 1 THEN alert(\"hot\")\n".into()),
            ],
        );
        let out = f.run(&["plan"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if built_in {
            assert!(out.status.success(), "{feature}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(3), "{feature}: {stderr}");
            assert!(
                stderr.contains(pointer) && stderr.contains(&format!("cargo feature `{feature}`")),
                "{feature}: {stderr}"
            );
        }
    }
    assert_eq!(f.current_link(), Some(1));
    // Its commands say so too.
    if !cfg!(feature = "delta") {
        let out = f.run(&["chunk", "/nonexistent.img", "--out", "/nonexistent"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("`delta` feature"), "{}", stderr(&out));
    }
    if !cfg!(feature = "rules") {
        let out = f.run(&[
            "rules",
            "run",
            "/nonexistent.rules",
            "--socket",
            "/nonexistent.sock",
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("`rules` feature"), "{}", stderr(&out));
    }
    if !cfg!(feature = "fleet") {
        let f = Fixture::new();
        let out = f.run(&["fleet", "report"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("`fleet` feature"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Staging reads what changed through the revision's verified readers (the
/// dir source's addresses come from the one hashing of its tree), and the
/// `staged` audit entry counts the bytes and blobs it fetched.
#[test]
fn staging_counts_the_bytes_it_fetches() {
    let f = Fixture::new();
    f.publish(&[
        file("/etc/a.conf", "aaaa\n", "0644"),
        file("/etc/b.conf", "bb\n", "0644"),
    ]);
    f.ok(&["apply"]);
    assert_eq!(f.last_fetched(), (5 + 3, 2));
    f.publish(&[
        file("/etc/a.conf", "aaaa\n", "0644"),
        file("/etc/b.conf", "bbbbbbb\n", "0644"),
    ]);
    f.ok(&["apply"]);
    assert_eq!(f.last_fetched(), (8, 1), "only the changed file");
    let audit = f.audit_len();
    assert!(f.ok(&["apply"]).contains("no changes"));
    assert_eq!(f.audit_len(), audit, "a no-change apply stages nothing");
}
