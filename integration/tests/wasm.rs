//! WASM modules end to end: `wasm` resources activated by `ferry apply`,
//! served by `ferry run` to rule actions, fed binary frames over a real
//! mosquitto, swapped under a numbered stream; bad modules refused with the
//! running one still serving; faults and cache tampering audited; and
//! `ferry wasm run` against WASI preview-1 basics.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../wasm/fixtures.rs"]
mod fixtures;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/site.rs"]
mod site;

use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::FERRY;
use fixtures::{FAULTS, decoder};
use site::{Site, subscribe};

const WASI_BASICS: &str = include_str!("../wasm/wasi-basics.wat");

const RULES: &str = r#"
RULE decode ON topic ~ "modbus/+/raw" THEN call("decoder", "decode")
RULE boom ON topic ~ "boom" THEN call("faults", "spin")
"#;

/// A frame of the numbered streams: 21.5 °C, 48 %, no alarm.
fn frame(seq: u32) -> Vec<u8> {
    fixtures::frame(seq, 215, 480, false)
}

/// Publishes a revision: the rules above, the decoder as `module`, and the
/// faults module; `settings` are extra YAML lines of the decoder resource.
fn publish(site: &Site, tag: &str, module: &[u8], settings: &str) {
    site.publish_with(
        RULES,
        tag,
        &format!(
            "  - kind: wasm\n    name: decoder\n    source: modules/decoder.wasm\n{settings}\
             \x20 - kind: wasm\n    name: faults\n    source: modules/faults.wasm\n    limits: {{ fuel_per_event: 100000 }}\n"
        ),
    );
    let dir = site.fx.repo.join("modules");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("decoder.wasm"), module).unwrap();
    fs::write(dir.join("faults.wasm"), wat::parse_str(FAULTS).unwrap()).unwrap();
}

struct Mqtt {
    client: rumqttc::Client,
}

impl Mqtt {
    fn connect(site: &Site) -> Mqtt {
        let mut opts = rumqttc::MqttOptions::new("wasm-test", "127.0.0.1", site.broker.port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = rumqttc::Client::new(opts, 1000);
        std::thread::spawn(move || {
            for n in connection.iter() {
                if n.is_err() {
                    return;
                }
            }
        });
        Mqtt { client }
    }

    fn send(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .unwrap();
    }
}

fn decoded(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    let line = site::next(rx);
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn audit_events(site: &Site) -> Vec<serde_json::Value> {
    site.fx
        .json(&["audit", "list", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn modules_decode_binary_events_end_to_end_and_swap_without_loss() {
    let site = Site::new();
    publish(&site, "v1", &decoder(1), "");
    site.fx.ok(&["apply"]);
    let (_alerts, pings) = subscribe(&site.broker, "plant/alerts");
    let (_out, rx) = subscribe(&site.broker, "modbus/decoded");
    let _agent = site.start();
    site.until_running(&pings, "v1");

    // A numbered stream of binary frames, paced, until told to stop.
    let mqtt = Mqtt::connect(&site);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let mut publisher = Some({
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) && seq < 20_000 {
                mqtt.send("modbus/plant7/raw", frame(seq));
                seq += 1;
                sent.store(seq, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    });
    let mut seqs = Vec::new();
    let mut versions = Vec::new();
    let mut applied = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "stream did not finish");
        if stop.load(Ordering::SeqCst) {
            // Only once the publisher has finished is `sent` final (it may
            // be between sending a frame and counting it).
            if let Some(p) = publisher.take() {
                p.join().unwrap();
            }
            if seqs.len() as u32 == sent.load(Ordering::SeqCst) {
                break;
            }
        }
        let v = decoded(&rx);
        assert_eq!(v["temperature_c"], 21.5);
        assert_eq!(v["humidity_pct"], 48.0);
        seqs.push(v["seq"].as_u64().unwrap());
        versions.push(v["v"].as_u64().unwrap());
        if seqs.len() == 300 && !applied {
            // v2 arrives as a new signed revision while frames flow.
            publish(&site, "v2", &decoder(2), "");
            site.fx.ok(&["apply"]);
            applied = true;
        }
        let after_v2 = versions.iter().filter(|&&v| v == 2).count();
        if after_v2 >= 300 {
            stop.store(true, Ordering::SeqCst);
        }
    }
    let expected: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every frame decoded exactly once, in order");
    let first_v2 = versions.iter().position(|&v| v == 2).unwrap();
    assert!(first_v2 >= 300);
    assert!(
        versions[first_v2..].iter().all(|&v| v == 2),
        "no v1 after v2"
    );
    site::nothing_more(&rx);

    // The activation was audited with the module digest and cache outcome.
    let audit = audit_events(&site);
    let activated: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["event"] == "activated" && e["details"]["kind"] == "wasm")
        .collect();
    assert!(activated.len() >= 3, "{audit:#?}");
    assert!(
        activated
            .iter()
            .all(|e| e["details"]["notes"]["module_sha256"].as_str().is_some())
    );
}

#[test]
fn bad_modules_are_refused_faults_contained_and_tampering_audited() {
    let site = Site::new();
    publish(&site, "v1", &decoder(1), "");
    site.fx.ok(&["apply"]);
    let (_alerts, pings) = subscribe(&site.broker, "plant/alerts");
    let (_out, rx) = subscribe(&site.broker, "modbus/decoded");
    let agent = site.start();
    site.until_running(&pings, "v1");
    let mqtt = Mqtt::connect(&site);
    let mut seq = 0;
    let mut still_serving = |what: &str| {
        seq += 1;
        mqtt.send("modbus/plant7/raw", frame(seq));
        let v = decoded(&rx);
        assert_eq!(
            (v["seq"].as_u64(), v["v"].as_u64()),
            (Some(seq as u64), Some(1)),
            "{what}"
        );
    };
    still_serving("start");

    let faults = wat::parse_str(FAULTS).unwrap();
    let no_grant = wat::parse_str(
        r#"(module (import "env" "socket" (func (param i32) (result i32))) (memory (export "memory") 1))"#,
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "import",
            no_grant,
            "",
            "imports env::socket which is not granted",
        ),
        (
            "probe spins",
            faults.clone(),
            "    probe: { export: spin }\n",
            "ran out of fuel",
        ),
        (
            "probe traps",
            faults.clone(),
            "    probe: { export: trap }\n",
            "unreachable instruction executed",
        ),
        (
            "memory",
            wat::parse_str(r#"(module (memory 100))"#).unwrap(),
            "    limits: { memory_mib: 1 }\n",
            "memory cap (limits.memory_mib) exceeded",
        ),
        (
            "garbage",
            b"MZ not wasm at all".to_vec(),
            "",
            "not a WebAssembly binary",
        ),
        (
            "too big",
            decoder(2),
            "    limits: { max_module_bytes: 100 }\n",
            "limits.max_module_bytes is 100",
        ),
    ];
    for (what, module, settings, want) in cases {
        let before = site.fx.audit_len();
        publish(&site, "broken", &module, settings);
        let out = site.fx.run(&["apply"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(7), "{what}: {err}");
        assert!(
            err.contains("wasm decoder") && err.contains(want),
            "{what}: {err}"
        );
        assert_eq!(site.fx.current_link(), Some(1), "{what}");
        let audit = audit_events(&site);
        assert!(
            audit[before..].iter().any(|e| e.to_string().contains(want)),
            "{what}: not audited: {:#?}",
            &audit[before..]
        );
        still_serving(what);
    }

    // Settings are checked when the manifest is read, with a pointer.
    publish(&site, "bad", &decoder(2), "    limits: { memory_mib: 0 }\n");
    let out = site.fx.run(&["apply"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("/resources/1/limits"), "{err}");

    // A module that spins at run time: stopped, audited, others unharmed.
    mqtt.send("boom", b"x".to_vec());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let audit = audit_events(&site);
        if let Some(f) = audit.iter().find(|e| e["event"] == "wasm-fault") {
            assert_eq!(f["details"]["module"], "faults");
            assert!(
                f["details"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("ran out of fuel")
            );
            break;
        }
        assert!(Instant::now() < deadline, "no wasm-fault audit entry");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The entry came through the audit spool: the agent never opened the
    // state database, and nothing waits in the spool.
    let fds = fs::read_dir(format!("/proc/{}/fd", agent.0.id())).unwrap();
    for fd in fds {
        let target = fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert!(
            !target.to_string_lossy().contains("state.db"),
            "the agent holds {}",
            target.display()
        );
    }
    let spool = site.fx.state.join("audit-spool");
    assert_eq!(fs::read_dir(&spool).unwrap().count(), 0, "{spool:?}");
    still_serving("after a runtime fault");

    // Native code in the cache tampered with: detected, recompiled, audited
    // on the next activation of that module.
    let cache = site.fx.state.join("wasm-cache");
    let mut tampered = 0;
    for e in fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "cwasm") {
            let mut d = fs::read(&p).unwrap();
            let mid = d.len() / 2;
            d[mid] ^= 0xff;
            fs::write(&p, d).unwrap();
            tampered += 1;
        }
    }
    assert!(tampered >= 2, "artifacts in {}", cache.display());
    publish(
        &site,
        "v1b",
        &decoder(1),
        "    limits: { fuel_per_event: 2000000 }\n",
    );
    site.fx.ok(&["apply"]);
    site.until_running(&pings, "v1b");
    let audit = audit_events(&site);
    let noted = audit
        .iter()
        .find(|e| {
            e["event"] == "activated"
                && e["details"]["resource"] == "decoder"
                && e["details"]["notes"]["cache"] == "rejected"
        })
        .unwrap_or_else(|| panic!("tampering not audited: {audit:#?}"));
    assert!(
        noted["details"]["notes"]["cache_rejected"]
            .as_str()
            .unwrap()
            .contains("seal does not verify")
    );
    still_serving("after recompiling");
    site.fx.ok(&["audit", "verify"]);
}

fn wasm_run(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(FERRY)
        .args(["wasm", "run"])
        .args(args)
        .env("FROM_HOST", "inherited")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wasm_run_passes_wasi_preview1_basics() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("basics.wasm");
    fs::write(&module, wat::parse_str(WASI_BASICS).unwrap()).unwrap();
    let m = module.to_str().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("in.txt"), "from the host\n").unwrap();
    fs::write(dir.path().join("secret.txt"), "outside\n").unwrap();
    let grant = format!("{}::/data", data.display());

    // Arguments, exactly (argv[0] is the file name); hyphens pass through.
    let (code, out, _) = wasm_run(&[m, "args", "one", "--two", "three four"], "");
    assert_eq!(code, Some(0));
    assert_eq!(out, "basics.wasm\nargs\none\n--two\nthree four\n");
    // Environment: only what is granted; NAME alone takes the host's value.
    let (code, out, _) = wasm_run(&["--env", "A=1", "--env", "FROM_HOST", m, "env"], "");
    assert_eq!(code, Some(0));
    assert_eq!(out, "A=1\nFROM_HOST=inherited\n");
    let (_, out, _) = wasm_run(&[m, "env"], "");
    assert_eq!(out, "", "no ambient environment");
    // stdin to stdout.
    let (code, out, _) = wasm_run(&[m, "cat"], "line 1\nline 2\n");
    assert_eq!((code, out.as_str()), (Some(0), "line 1\nline 2\n"));
    // Preopened directory: read one file, write another.
    let (code, _, err) = wasm_run(&["--dir", &grant, m, "file", "in.txt", "out.txt"], "");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        fs::read_to_string(data.join("out.txt")).unwrap(),
        "from the host\n"
    );
    // Outside the preopen: refused by WASI (EPERM 63 / ENOTCAPABLE 76), not read.
    let (code, _, _) = wasm_run(
        &["--dir", &grant, m, "file", "../secret.txt", "leak.txt"],
        "",
    );
    assert!(matches!(code, Some(63) | Some(76)), "{code:?}");
    assert!(!data.join("leak.txt").exists());
    // No --dir: no directory at all (EBADF 8).
    let (code, _, _) = wasm_run(&[m, "file", "in.txt", "out2.txt"], "");
    assert_eq!(code, Some(8));
    // Exit statuses pass through.
    // (WASI preview 1 allows 0..=125; larger statuses trap.)
    for status in ["0", "3", "42", "125"] {
        let (code, _, _) = wasm_run(&[m, "status", status], "");
        assert_eq!(code, Some(status.parse().unwrap()));
    }
    // Traps exit 134 with the reason; ferry's own failures 125.
    let faults = dir.path().join("faults.wasm");
    let spin = FAULTS.replace(r#"(export "spin")"#, r#"(export "_start")"#).replace(
        "(func (export \"_start\") (param i32 i32) (result i32)\n    (loop $forever (br $forever))\n    (i32.const 0))",
        "(func (export \"_start\")\n    (loop $forever (br $forever)))",
    );
    fs::write(&faults, wat::parse_str(&spin).unwrap()).unwrap();
    let (code, _, err) = wasm_run(&["--fuel", "100000", faults.to_str().unwrap()], "");
    assert_eq!(code, Some(134), "{err}");
    assert!(err.contains("ran out of fuel"), "{err}");
    // Text is not parsed on a device: ferry carries no WAT parser.
    let text = dir.path().join("faults.wat");
    fs::write(&text, &spin).unwrap();
    let (code, _, err) = wasm_run(&[text.to_str().unwrap()], "");
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("assemble it with wat2wasm"), "{err}");
    let (code, _, err) = wasm_run(&[dir.path().join("missing.wasm").to_str().unwrap()], "");
    assert_eq!(code, Some(125));
    assert!(err.contains("missing.wasm"), "{err}");
    fs::write(dir.path().join("bad.wasm"), b"\0asm\x01\0\0\0\x99").unwrap();
    let (code, _, err) = wasm_run(&[dir.path().join("bad.wasm").to_str().unwrap()], "");
    assert_eq!(code, Some(125));
    assert!(err.contains("invalid module"), "{err}");
    let (code, _, err) = wasm_run(&["--dir", "/nonexistent-dir", m, "args"], "");
    assert_eq!(code, Some(125));
    assert!(err.contains("--dir"), "{err}");
    // Memory beyond the cap traps.
    let grow = dir.path().join("grow.wasm");
    fs::write(
        &grow,
        wat::parse_str(
            r#"(module (memory 1) (func (export "_start") (drop (memory.grow (i32.const 100)))))"#,
        )
        .unwrap(),
    )
    .unwrap();
    let (code, _, err) = wasm_run(&["--max-memory-mib", "2", grow.to_str().unwrap()], "");
    assert_eq!(code, Some(134), "{err}");
    assert!(err.contains("memory cap"), "{err}");
}
