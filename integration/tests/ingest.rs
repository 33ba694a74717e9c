//! Field ingestion end to end: a real CoAP client (libcoap's coap-client)
//! posting JSON and CBOR to `ferry rules run`, whose rules publish to a
//! real mosquitto; and a real Modbus TCP device (pymodbus, with registers
//! that change on every read) configured by a `ruleset` resource's
//! `ingest`, read by `ferry run`, driving a rule that writes a register
//! back and a WASM decoder fed the raw frames, surviving the device going
//! away and coming back; a revision writing a register nobody listed is
//! refused at load.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../wasm/fixtures.rs"]
mod fixtures;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "../modbus/sim.rs"]
mod sim;
#[path = "support/site.rs"]
mod site;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::FERRY;
use mosquitto::{Mosquitto, free_port};
use sim::Sim;
use site::{Proc, Site, next, subscribe};

fn coap_client(args: &[&str]) -> String {
    let out = Command::new("coap-client-notls")
        .args(["-B", "10"])
        .args(args)
        .output()
        .expect("coap-client-notls (apt-get install libcoap3-bin)");
    assert!(out.status.success(), "{out:?}");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_owned()
}

/// A confirmable JSON POST; what coap-client printed.
fn post_json(url: &str, body: &str) -> String {
    coap_client(&["-m", "post", "-t", "json", "-e", body, url])
}

/// `ferry rules run` with `args`; returns the process and the CoAP
/// address it printed.
fn rules_run(args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(FERRY)
        .args(["rules", "run"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("coap: listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (Proc(child), addr)
}

#[test]
fn coap_json_and_cbor_posts_fire_rules_that_publish_to_mosquitto() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("plant.rules");
    std::fs::write(
        &rules,
        r#"RULE hot ON topic ~ "coap/plant/+" and temperature > 85 THEN publish("alerts/{sensor.id}", "{topic} {temperature}")"#,
    )
    .unwrap();
    let (_alerts, rx) = subscribe(&broker, "alerts/#");
    let (_engine, addr) = rules_run(&[
        rules.to_str().unwrap(),
        "--coap",
        "127.0.0.1:0",
        "--mqtt",
        &broker.url(),
    ]);
    let url = |path: &str| format!("coap://{addr}/{path}");
    // Subscribed before the first event: the publish cannot be missed.
    std::thread::sleep(Duration::from_millis(300));

    let out = post_json(
        &url("plant/t1"),
        r#"{"temperature": 90, "sensor": {"id": "t1"}}"#,
    );
    assert_eq!(out, "");
    assert_eq!(next(&rx), "coap/plant/t1 90");

    // CBOR {"temperature": 100, "sensor": {"id": "t2"}} as a confirmable PUT.
    let mut cbor = vec![0xa2, 0x6b];
    cbor.extend_from_slice(b"temperature");
    cbor.extend_from_slice(&[0x18, 100, 0x66]);
    cbor.extend_from_slice(b"sensor");
    cbor.extend_from_slice(&[0xa1, 0x62, b'i', b'd', 0x62, b't', b'2']);
    let file = dir.path().join("t2.cbor");
    std::fs::write(&file, &cbor).unwrap();
    let out = coap_client(&[
        "-m",
        "put",
        "-t",
        "cbor",
        "-f",
        file.to_str().unwrap(),
        &url("plant/t2"),
    ]);
    assert_eq!(out, "");
    assert_eq!(next(&rx), "coap/plant/t2 100");

    // Cool readings, bad requests and malformed datagrams fire nothing and
    // harm nothing.
    assert_eq!(
        coap_client(&[
            "-m",
            "post",
            "-t",
            "json",
            "-e",
            r#"{"temperature": 20, "sensor": {"id": "t3"}}"#,
            &url("plant/t3")
        ]),
        ""
    );
    assert!(
        coap_client(&["-m", "post", "-t", "json", "-e", "{", &url("plant/t4")]).starts_with("4.00")
    );
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 100_000]).unwrap();
    assert!(
        coap_client(&[
            "-m",
            "post",
            "-b",
            "1024",
            "-f",
            big.to_str().unwrap(),
            &url("plant/t5")
        ])
        .starts_with("4.13")
    );
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in [&b"\xff\xff\xff"[..], b"", &[0x4f; 300]] {
        sock.send_to(d, &addr).unwrap();
    }
    let out = post_json(
        &url("plant/t6"),
        r#"{"temperature": 99, "sensor": {"id": "t6"}}"#,
    );
    assert_eq!(out, "");
    assert_eq!(next(&rx), "coap/plant/t6 99");
    site::nothing_more(&rx);
}

// ---- Modbus -----------------------------------------------------------------

const RULES: &str = r#"
RULE decode ON topic ~ "modbus/+/raw" THEN call("decoder", "decode")
RULE cool ON topic ~ "modbus/plc1/temps" and temperature > 35 THEN modbus_write("plc1", 10, 1), publish("plant/hot", "{temperature}") EVERY 1h
"#;

/// A revision whose rule set brings its Modbus device; `rules` replaces
/// the rules above.
fn publish(site: &Site, port: u16, rules: &str, tag: &str) {
    publish_blocks(site, port, rules, tag, "");
}

/// Like `publish`, with `blocks` (YAML list items) added to the device's.
fn publish_blocks(site: &Site, port: u16, rules: &str, tag: &str, blocks: &str) {
    let ping =
        format!(r#"RULE ping ON exists(ping) THEN publish("plant/alerts", "pong-{tag} {{ping}}")"#);
    let manifest = format!(
        "apiVersion: ferry.dev/v1\nresources:\n  - kind: ruleset\n    name: site\n    source: rules/site.rules\n    ingest:\n      modbus:\n        - name: plc1\n          address: \"127.0.0.1:{port}\"\n          timeout: 300ms\n          writable: [10]\n          blocks:\n            - {{ name: temps, kind: holding, start: 0, count: 5, period: 100ms, fields: [{{ name: temperature, offset: 2, type: i16, scale: 0.1 }}] }}\n            - {{ name: raw, kind: holding, start: 0, count: 5, period: 100ms, topic: modbus/plc1/raw, payload: frame }}\n{blocks}  - kind: wasm\n    name: decoder\n    source: modules/decoder.wasm\n"
    );
    site.fx.publish_raw(
        &manifest,
        &[("rules/site.rules".to_owned(), format!("{rules}\n{ping}\n"))],
    );
    let dir = site.fx.repo.join("modules");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("decoder.wasm"), fixtures::decoder(1)).unwrap();
}

fn decoded(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    let line = next(rx);
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn a_modbus_device_from_signed_state_drives_rules_a_decoder_and_writes_back() {
    let port = free_port();
    let sim = Sim::start(port);
    let site = Site::new();
    let metrics = free_port();
    let mut config = std::fs::read_to_string(&site.fx.config).unwrap();
    config.push_str(&format!(
        "alert_topic = \"ferry/alerts\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
    ));
    std::fs::write(&site.fx.config, config).unwrap();
    publish(&site, port, RULES, "v1");
    site.fx.ok(&["apply"]);

    let (_p, pings) = subscribe(&site.broker, "plant/alerts");
    let (_d, frames) = subscribe(&site.broker, "modbus/decoded");
    let (_h, hot) = subscribe(&site.broker, "plant/hot");
    let (_a, alerts) = subscribe(&site.broker, "ferry/alerts");
    let _agent = site.start();
    site.until_running(&pings, "v1");

    // Raw frames through the WASM decoder: unit 1, changing sequence.
    let a = decoded(&frames);
    let b = decoded(&frames);
    assert_eq!(a["unit"], 1, "{a}");
    assert_eq!(a["humidity_pct"], 48.0, "{a}");
    assert!(b["seq"].as_u64() > a["seq"].as_u64(), "{a} then {b}");

    // The temperature climbs past 35: the rule writes the setpoint back.
    let t: f64 = next(&hot).parse().unwrap();
    assert!(t > 35.0, "{t}");
    assert_eq!(
        sim.writes.recv_timeout(Duration::from_secs(20)).unwrap(),
        "10 1"
    );

    // The device goes away (once it has answered the write: the simulator
    // records a write before it sends the echo): one alert; it comes
    // back: frames again.
    std::thread::sleep(Duration::from_secs(1));
    drop(sim);
    let alert: serde_json::Value = serde_json::from_str(&next(&alerts)).unwrap();
    assert_eq!(alert["rule"], "modbus:plc1", "{alert}");
    assert!(
        alert["message"].as_str().unwrap().contains("not answering"),
        "{alert}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let _sim = Sim::start(port);
    while frames.try_recv().is_ok() {}
    let deadline = Instant::now() + Duration::from_secs(20);
    let again = loop {
        let v = decoded(&frames);
        // Frames from before the outage may still be on their way.
        if v["seq"].as_u64() < Some(20) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no frame from the restarted device"
        );
    };
    assert_eq!(again["unit"], 1);
    assert!(
        alerts.recv_timeout(Duration::from_millis(500)).is_err(),
        "one alert per outage"
    );
    let text = scrape(metrics);
    for line in [
        "ferry_modbus_outages_total{device=\"plc1\"} 1",
        "ferry_modbus_up{device=\"plc1\"} 1",
        "ferry_modbus_writes_total{device=\"plc1\"} 1",
        "ferry_modbus_write_errors_total{device=\"plc1\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    // A revision that writes a register the device does not list is
    // refused at load, naming where; v1 keeps running.
    let bad = RULES.replace(
        "modbus_write(\"plc1\", 10, 1)",
        "modbus_write(\"plc1\", 11, 1)",
    );
    publish(&site, port, &bad, "v2");
    let out = site.fx.run(&["apply"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("site:3:") && err.contains("register 11 of plc1 is not writable"),
        "{err}"
    );
    site.until_running(&pings, "v1");

    // A bad ingest setting is refused with its JSON pointer.
    publish(&site, port, RULES, "v3");
    let manifest = std::fs::read_to_string(site.fx.repo.join("ferry.yaml")).unwrap();
    std::fs::write(
        site.fx.repo.join("ferry.yaml"),
        manifest.replace(
            "count: 5, period: 100ms, topic",
            "count: 500, period: 100ms, topic",
        ),
    )
    .unwrap();
    let out = site.fx.run(&["apply"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/resources/0/ingest/modbus/0/blocks/1/count"),
        "{err}"
    );

    // A revision that adds a block and a rule for it, applied from the
    // command line while the agent runs: both are swapped in.
    let (_f, fast) = subscribe(&site.broker, "plant/fast");
    publish_blocks(
        &site,
        port,
        &format!(
            "{RULES}\nRULE fast ON topic ~ \"modbus/plc1/fast\" THEN publish(\"plant/fast\", \"{{seq}}\") EVERY 1h"
        ),
        "v4",
        "            - { name: fast, kind: input, start: 0, count: 2, period: 50ms, topic: modbus/plc1/fast, fields: [{ name: seq, offset: 0, type: u32 }] }\n",
    );
    site.fx.ok(&["apply"]);
    site.until_running(&pings, "v4");
    let seq: u64 = next(&fast).parse().unwrap();
    assert!(seq > 0);
}

/// The agent's metrics text.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn bad_field_source_settings_in_ferry_toml_name_their_key() {
    let fx = common::Fixture::new();
    let base = std::fs::read_to_string(&fx.config).unwrap();
    for (extra, want) in [
        (
            "[rules.coap]\nbind = \"localhost:5683\"\n",
            "config: rules.coap.bind: \"localhost:5683\" is not ip:port",
        ),
        (
            "[[rules.modbus]]\nname = \"plc1\"\naddress = \"127.0.0.1:502\"\n[[rules.modbus.blocks]]\nname = \"t\"\nkind = \"input\"\nstart = 0\ncount = 126\nperiod = \"1s\"\n",
            "config: rules.modbus[0].blocks[0].count: 126 is outside 1..=125",
        ),
        (
            "[[rules.modbus]]\nname = \"plc1\"\naddress = \"127.0.0.1:502\"\nwritable = [1]\nspeed = 9600\n",
            "unknown field `speed`",
        ),
    ] {
        std::fs::write(&fx.config, format!("{base}[rules]\n{extra}")).unwrap();
        let out = fx.run(&["status"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra}: {err}");
    }
}

/// `ferry rules ACTION RULES --modbus PLC`, run to its end.
fn rules_with_modbus(action: &str, rules: &Path, plc: &Path) -> std::process::Output {
    Command::new(FERRY)
        .args(["rules", action])
        .arg(rules)
        .arg("--modbus")
        .arg(plc)
        .output()
        .unwrap()
}

#[test]
fn rules_run_polls_modbus_from_a_file_and_refuses_unlisted_writes() {
    let port = free_port();
    let sim = Sim::start(port);
    let dir = tempfile::tempdir().unwrap();
    let plc = dir.path().join("plc.toml");
    std::fs::write(
        &plc,
        format!(
            "[[modbus]]\nname = \"plc1\"\naddress = \"127.0.0.1:{port}\"\nwritable = [12]\n\
             [[modbus.blocks]]\nname = \"temps\"\nkind = \"holding\"\nstart = 0\ncount = 5\nperiod = \"50ms\"\n\
             fields = [{{ name = \"temperature\", offset = 2, type = \"i16\", scale = 0.1 }}]\n"
        ),
    )
    .unwrap();
    let rules = dir.path().join("plc.rules");
    let write_rule = |register: u16| {
        std::fs::write(
            &rules,
            format!(
                "RULE warm ON topic ~ \"modbus/plc1/temps\" and temperature > 25 THEN modbus_write(\"plc1\", {register}, temperature * 10) EVERY 1h\n"
            ),
        )
        .unwrap();
    };

    // Register 13 is not listed: refused before anything runs.
    write_rule(13);
    let out = rules_with_modbus("run", &rules, &plc);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plc.rules:1:") && err.contains("register 13 of plc1 is not writable"),
        "{err}"
    );

    let check = rules_with_modbus("check", &rules, &plc);
    assert_eq!(check.status.code(), Some(3), "{check:?}");
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("plc.rules:1:") && err.contains("register 13 of plc1 is not writable"),
        "{err}"
    );

    // Register 12 is: the rule writes the temperature it saw, in tenths.
    write_rule(12);
    let check = rules_with_modbus("check", &rules, &plc);
    assert!(check.status.success(), "{check:?}");
    let mut child = Command::new(FERRY)
        .args([
            "rules",
            "run",
            rules.to_str().unwrap(),
            "--modbus",
            plc.to_str().unwrap(),
            "--print",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _engine = Proc(child);
    let action: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(action["action"], "modbus_write", "{action}");
    assert_eq!(action["register"], 12, "{action}");
    let value = action["value"].as_f64().unwrap();
    assert!(value > 250.0, "{action}");
    let written = sim.writes.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(written, format!("12 {value}"));
}
