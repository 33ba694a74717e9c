//! The rule engine in `ferry run`, end to end with a real mosquitto: rule
//! sets arrive as `ruleset` resources, events come in over MQTT and the
//! local event socket, actions go out over MQTT; new sets are swapped in,
//! broken ones are refused with `line:col` and the running set stays.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{FERRY, Fixture};
use mosquitto::Mosquitto;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mosquitto_sub` or `mosquitto_pub` for `topic` on the broker, QoS 1.
fn client(program: &str, broker: &Mosquitto, topic: &str) -> Command {
    let mut c = Command::new(program);
    let port = broker.port.to_string();
    c.args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic]);
    c
}

/// `mosquitto_sub` on `topic`; each message arrives as a line.
fn subscribe(broker: &Mosquitto, topic: &str) -> (Proc, mpsc::Receiver<String>) {
    let mut child = client("mosquitto_sub", broker, topic)
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Proc(child), rx)
}

fn publish(broker: &Mosquitto, topic: &str, payload: &str) {
    let ok = client("mosquitto_pub", broker, topic)
        .args(["-m", payload])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub failed");
}

/// Sends JSON-lines events to the agent's event socket.
fn send(socket: &Path, lines: &[&str]) {
    let mut s = UnixStream::connect(socket).unwrap();
    for l in lines {
        writeln!(s, "{l}").unwrap();
    }
}

fn next(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("no MQTT message within 20 s")
}

fn nothing_more(rx: &mpsc::Receiver<String>) {
    if let Ok(m) = rx.recv_timeout(Duration::from_millis(500)) {
        panic!("unexpected message {m:?}");
    }
}

struct Site {
    fx: Fixture,
    broker: Mosquitto,
    socket: PathBuf,
}

impl Site {
    fn new() -> Site {
        let fx = Fixture::new();
        let broker = Mosquitto::start();
        let socket = fx.dir.path().join("events.sock");
        let control = fx.dir.path().join("ferry.sock");
        let mut config = fs::read_to_string(&fx.config).unwrap();
        config.push_str(&format!(
            "[agent]\npoll_interval = \"1h\"\njitter = \"0s\"\ncontrol_socket = {control:?}\n\
             [rules]\nmqtt = \"{}\"\nsocket = {socket:?}\nclient_id = \"ferry-test\"\n",
            broker.url()
        ));
        fs::write(&fx.config, config).unwrap();
        Site { fx, broker, socket }
    }

    /// Publishes a revision whose rule set is `rules` plus a `ping` rule
    /// that answers with `tag` (so tests can tell which set runs).
    fn publish_rules(&self, rules: &str, tag: &str) {
        let ping = format!(
            r#"RULE ping ON exists(ping) THEN publish("plant/alerts", "pong-{tag} {{ping}}")"#
        );
        self.fx.publish_raw(
            "apiVersion: ferry.dev/v1\nresources:\n  - kind: ruleset\n    name: site\n    source: rules/site.rules\n",
            &[("rules/site.rules".to_owned(), format!("{rules}\n{ping}\n"))],
        );
    }

    fn start(&self) -> Proc {
        let child = Command::new(FERRY)
            .arg("--config")
            .arg(&self.fx.config)
            .args(["--log-level", "info", "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// Pings through the event socket until the answer comes back over
    /// MQTT from the set tagged `tag`: the agent runs, has connected, and
    /// runs that set.
    fn until_running(&self, rx: &mpsc::Receiver<String>, tag: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "the agent's rule engine never answered {tag:?}"
            );
            n += 1;
            if self.socket.exists() && UnixStream::connect(&self.socket).is_ok() {
                send(
                    &self.socket,
                    &[&format!(r#"{{"payload": {{"ping": {n}}}}}"#)],
                );
            }
            if let Ok(m) = rx.recv_timeout(Duration::from_millis(300))
                && m == format!("pong-{tag} {n}")
            {
                // Drain answers to earlier pings.
                while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
                return;
            }
        }
    }
}

#[test]
fn mqtt_and_socket_events_drive_windows_and_rate_limits_end_to_end() {
    let site = Site::new();
    site.publish_rules(
        r#"
        FIELD temperature: number
        RULE overheat
        ON topic ~ "plant/+/temp" and avg(temperature, 30s) > 80
        THEN publish("plant/alerts", "avg over 80 at {temperature}")
        EVERY 60s
        "#,
        "v1",
    );
    site.fx.ok(&["apply"]);
    let (_sub, rx) = subscribe(&site.broker, "plant/alerts");
    let _agent = site.start();
    site.until_running(&rx, "v1");

    // Time given explicitly: the window and the rate limit, deterministically.
    send(
        &site.socket,
        &[
            r#"{"topic": "plant/1/temp", "time": 0, "payload": {"temperature": 100}}"#, // fires
            r#"{"topic": "plant/1/temp", "time": 10, "payload": {"temperature": 99}}"#, // EVERY 60s
            r#"{"topic": "plant/1/hum", "time": 15, "payload": {"temperature": 99}}"#, // other topic
            r#"{"topic": "plant/1/temp", "time": 20, "payload": {"temperature": 20}}"#, // avg 73
            r#"{"topic": "plant/1/temp", "time": 70, "payload": {"temperature": 90}}"#, // window (40,70]: 90
        ],
    );
    assert_eq!(next(&rx), "avg over 80 at 100");
    assert_eq!(next(&rx), "avg over 80 at 90");
    nothing_more(&rx);
    // And over MQTT, on the wall clock (long after the explicit times).
    publish(&site.broker, "plant/3/temp", r#"{"temperature": 95}"#);
    assert_eq!(next(&rx), "avg over 80 at 95");
    publish(&site.broker, "plant/3/temp", r#"{"temperature": 99}"#);
    nothing_more(&rx);
}

#[test]
fn new_sets_are_swapped_in_and_broken_ones_refused_while_the_old_keeps_running() {
    let site = Site::new();
    let v = |tag: &str| {
        format!(
            r#"RULE fwd ON topic ~ "in/#" and exists(n) THEN publish("plant/alerts", "{tag} {{n}}")"#
        )
    };
    site.publish_rules(&v("v1"), "v1");
    site.fx.ok(&["apply"]);
    let (_sub, rx) = subscribe(&site.broker, "plant/alerts");
    let _agent = site.start();
    site.until_running(&rx, "v1");
    publish(&site.broker, "in/x", r#"{"n": 1}"#);
    assert_eq!(next(&rx), "v1 1");

    // A new revision: applied from the command line, picked up by the agent.
    site.publish_rules(&v("v2"), "v2");
    site.fx.ok(&["apply"]);
    site.until_running(&rx, "v2");
    publish(&site.broker, "in/x", r#"{"n": 2}"#);
    assert_eq!(next(&rx), "v2 2");
    let audit_before = site.fx.audit_len();

    // Broken sets: each refused with line:col, transition rolled back,
    // audited, generation 2 stays, and the v2 set keeps answering.
    for (broken, want) in [
        ("RULE bad ON n > THEN alert(\"x\")", "site:1:17: expected"),
        (
            "FIELD n: number\nRULE bad ON n == \"one\" THEN alert(\"x\")",
            "site:2:13: `==` compares a number with a string",
        ),
        (
            "RULE bad ON n > 1 THEN reboot()",
            "site:1:24: unknown action reboot()",
        ),
    ] {
        site.publish_rules(broken, "broken");
        let out = site.fx.run(&["apply"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(7), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(site.fx.current_link(), Some(2));
        publish(&site.broker, "in/x", r#"{"n": 3}"#);
        assert_eq!(next(&rx), "v2 3");
    }
    let audit = site.fx.json(&["audit", "list", "--json"]);
    let entries = audit.as_array().unwrap();
    let refusals: Vec<&serde_json::Value> = entries[audit_before..]
        .iter()
        .filter(|e| e.to_string().contains("site:"))
        .collect();
    assert_eq!(refusals.len(), 3, "{entries:#?}");
    site.fx.ok(&["audit", "verify"]);
    nothing_more(&rx);
}

#[test]
fn rules_check_and_test_report_problems_and_actions() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("site.rules");
    fs::write(
        &rules,
        "RULE hot ON t > 85 THEN alert(\"hot {t}\") EVERY 60s\n",
    )
    .unwrap();
    let ferry = |args: &[&str]| Command::new(FERRY).args(args).output().unwrap();

    let out = ferry(&["rules", "check", rules.to_str().unwrap()]);
    assert!(out.status.success());
    let out = ferry(&["rules", "check", "--json", rules.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (j["ok"].as_bool(), j["rules"][0].as_str()),
        (Some(true), Some("hot"))
    );

    let events = dir.path().join("events.jsonl");
    fs::write(
        &events,
        "{\"time\": 0, \"payload\": {\"t\": 90}}\n{\"time\": 30, \"payload\": {\"t\": 95}}\n\n{\"time\": 61, \"payload\": {\"t\": 99}}\n",
    )
    .unwrap();
    let out = ferry(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let actions: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, u64)> = actions
        .iter()
        .map(|a| {
            (
                a["message"].as_str().unwrap().to_owned(),
                a["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("hot 90".to_owned(), 1), ("hot 99".to_owned(), 4)]);

    // Errors: FILE:LINE:COL with the line and a caret; exit 3.
    fs::write(&rules, "RULE hot\nON t > 85 THEN alarm(\"hot\")\n").unwrap();
    let out = ferry(&["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("site.rules:2:16: unknown action alarm()"),
        "{err}"
    );
    assert!(
        err.contains("  | ON t > 85 THEN alarm(\"hot\")\n  |                ^"),
        "{err}"
    );
    let out = ferry(&["rules", "check", "--json", rules.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            j["errors"][0]["line"].as_u64(),
            j["errors"][0]["col"].as_u64()
        ),
        (Some(2), Some(16))
    );

    // A bad event line names the events file and line.
    fs::write(&rules, "ON t > 1 THEN alert(\"x\")\n").unwrap();
    fs::write(&events, "{\"payload\": {\"t\": 2}}\n{\"payload\": [1]}\n").unwrap();
    let out = ferry(&[
        "rules",
        "test",
        rules.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("events.jsonl:2: "), "{err}");
}

#[test]
fn the_sample_rule_sets_compile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/rules");
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rules") {
            let out = Command::new(FERRY)
                .args(["rules", "check"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 2, "sample rule sets in {}", dir.display());
}
