//! The rule engine in `ferry run`, end to end with a real mosquitto: rule
//! sets arrive as `ruleset` resources, events come in over MQTT and the
//! local event socket, actions go out over MQTT; new sets are swapped in,
//! broken ones are refused with `line:col` and the running set stays.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/site.rs"]
mod site;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::FERRY;
use site::{Site, next, nothing_more, publish, send, subscribe};

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
