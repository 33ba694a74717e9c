//! The rule language: what parses, what is refused and where, and what
//! rules do with events over (explicitly given) time.

use ferry_rules::{Compiled, Output, compile_source};

fn set(src: &str) -> Compiled {
    match compile_source(src) {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render("test.rules", src)),
    }
}

/// Runs events `(seconds, topic, payload)` through a set; returns the
/// outputs as compact strings (`alert:msg`, `publish:topic=payload`).
fn run(c: &Compiled, events: &[(f64, &str, &str)]) -> Vec<String> {
    let mut state = c.new_state();
    let mut out = Vec::new();
    for (t, topic, payload) in events {
        let ev = c
            .decode(topic, (t * 1000.0) as u64, payload.as_bytes())
            .expect("decode");
        c.eval(&mut state, &ev, &mut out);
    }
    out.iter()
        .map(|o| match o {
            Output::Alert { message, .. } => format!("alert:{message}"),
            Output::Publish { topic, payload, .. } => {
                format!("publish:{topic}={}", String::from_utf8_lossy(payload))
            }
            Output::Call { module, export, .. } => format!("call:{module}.{export}"),
            Output::ModbusWrite {
                device,
                register,
                value,
                ..
            } => format!("modbus_write:{device}.{register}={value}"),
        })
        .collect()
}

fn error_of(src: &str) -> String {
    match compile_source(src) {
        Ok(_) => panic!("accepted: {src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn threshold_rule_fires_only_above_the_threshold() {
    let c = set(r#"ON temperature > 85 THEN alert("overheat {temperature}")"#);
    let out = run(
        &c,
        &[
            (0.0, "t", r#"{"temperature": 80}"#),
            (1.0, "t", r#"{"temperature": 90.5}"#),
            (2.0, "t", r#"{"humidity": 90}"#),
            (3.0, "t", r#"{"temperature": "hot"}"#),
        ],
    );
    assert_eq!(out, ["alert:overheat 90.5"]);
}

#[test]
fn nested_fields_topics_and_templates() {
    let c = set(r#"
        # a comment
        RULE fwd
        ON topic ~ "plant/+/temp" and sensor.id == "th-1" and not (temperature < 0)
        THEN publish("alerts/{sensor.id}", "{topic}: {temperature} {{ok}}")
        "#);
    assert_eq!(c.subscriptions()[0].as_str(), "plant/+/temp");
    let out = run(
        &c,
        &[
            (
                0.0,
                "plant/7/temp",
                r#"{"sensor": {"id": "th-1", "x": [1,2]}, "temperature": 21}"#,
            ),
            (
                0.0,
                "plant/7/hum",
                r#"{"sensor": {"id": "th-1"}, "temperature": 21}"#,
            ),
            (
                0.0,
                "plant/7/temp",
                r#"{"sensor": {"id": "th-2"}, "temperature": 21}"#,
            ),
        ],
    );
    assert_eq!(out, ["publish:alerts/th-1=plant/7/temp: 21 {ok}"]);
}

#[test]
fn publish_without_payload_forwards_the_event() {
    let c = set(r#"ON x == 1 THEN publish("copy")"#);
    assert_eq!(
        run(&c, &[(0.0, "in", r#"{"x":1}"#)]),
        [r#"publish:copy={"x":1}"#]
    );
}

#[test]
fn arithmetic_and_precedence() {
    let c = set(r#"ON a + b * 2 == 7 and -a < 0 or a % 2 == 0 and false THEN alert("yes")"#);
    assert_eq!(run(&c, &[(0.0, "", r#"{"a":1,"b":3}"#)]), ["alert:yes"]);
    assert_eq!(
        run(&c, &[(0.0, "", r#"{"a":2,"b":3}"#)]),
        Vec::<String>::new()
    );
}

#[test]
fn missing_values_never_fire_a_rule_even_under_not() {
    let c = set(r#"ON not (temperature > 80) THEN alert("cool")"#);
    assert_eq!(
        run(&c, &[(0.0, "", r#"{"other": 1}"#)]),
        Vec::<String>::new()
    );
    assert_eq!(
        run(&c, &[(0.0, "", r#"{"temperature": 20}"#)]),
        ["alert:cool"]
    );
    let c = set(r#"ON x / 0 > 1 or exists(y) THEN alert("y")"#);
    assert_eq!(run(&c, &[(0.0, "", r#"{"x": 5}"#)]), Vec::<String>::new());
    assert_eq!(
        run(&c, &[(0.0, "", r#"{"x": 5, "y": null}"#)]),
        Vec::<String>::new()
    );
    assert_eq!(run(&c, &[(0.0, "", r#"{"y": false}"#)]), ["alert:y"]);
}

#[test]
fn average_window_covers_exactly_its_length() {
    let c = set(r#"ON avg(t, 30s) > 80 THEN alert("avg {t}")"#);
    let out = run(
        &c,
        &[
            (0.0, "", r#"{"t": 100}"#),  // avg 100 → fires
            (10.0, "", r#"{"t": 40}"#),  // avg 70
            (29.0, "", r#"{"t": 100}"#), // avg 80, not > 80
            (30.0, "", r#"{"t": 100}"#), // the 0 s sample has left: avg 80
            (39.0, "", r#"{"t": 78}"#),  // (40 + 100 + 100 + 78) / 4 = 79.5
            (40.0, "", r#"{"t": 82}"#),  // the 10 s sample has left: avg 90
        ],
    );
    assert_eq!(out, ["alert:avg 100", "alert:avg 82"]);
}

#[test]
fn min_max_count_and_sum_windows() {
    let c = set(r#"
        ON count(t, 10s) >= 3 and max(t, 10s) - min(t, 10s) > 5 and sum(t, 10s) > 0
        THEN alert("spread {t}")
        "#);
    let out = run(
        &c,
        &[
            (0.0, "", r#"{"t": 1}"#),
            (1.0, "", r#"{"t": 9}"#),
            (2.0, "", r#"{"t": 5}"#),  // count 3, spread 8 → fires
            (11.5, "", r#"{"t": 5}"#), // only 5, 5 remain
            (12.0, "", r#"{"t": 6}"#), // 5, 5, 6: spread 1
        ],
    );
    assert_eq!(out, ["alert:spread 5"]);
}

#[test]
fn every_limits_a_rule_to_once_per_period() {
    let c = set(r#"ON t > 85 THEN alert("hot") EVERY 60s"#);
    let events: Vec<(f64, &str, &str)> = [0.0, 10.0, 59.9, 60.0, 61.0, 200.0]
        .iter()
        .map(|&t| (t, "", r#"{"t": 90}"#))
        .collect();
    assert_eq!(run(&c, &events), ["alert:hot", "alert:hot", "alert:hot"]);
}

#[test]
fn set_variables_are_seen_by_later_rules_and_later_events() {
    let c = set(r#"
        RULE arm    ON cmd == "arm"    THEN set(armed, true)
        RULE disarm ON cmd == "disarm" THEN set($armed, false)
        RULE count  ON $armed and door == "open" THEN set(opened, $opened + 1), alert("intrusion {$opened}")
        RULE init   ON cmd == "reset" THEN set(opened, 0)
        "#);
    let out = run(
        &c,
        &[
            (0.0, "", r#"{"door": "open"}"#),
            (1.0, "", r#"{"cmd": "reset"}"#),
            (2.0, "", r#"{"cmd": "arm", "door": "open"}"#),
            (3.0, "", r#"{"door": "open"}"#),
            (4.0, "", r#"{"cmd": "disarm"}"#),
            (5.0, "", r#"{"door": "open"}"#),
        ],
    );
    assert_eq!(out, ["alert:intrusion 1", "alert:intrusion 2"]);
}

#[test]
fn string_functions_and_concatenation() {
    let c = set(
        r#"ON starts_with(id, "th-") and contains(id + "/x", "1/") and not ends_with(id, "z") and abs(v) > 2
           THEN alert(id + "!"), call("decoder", "decode")"#,
    );
    assert_eq!(
        run(&c, &[(0.0, "", r#"{"id": "th-1", "v": -3}"#)]),
        ["alert:th-1!", "call:decoder.decode"]
    );
}

#[test]
fn state_carries_over_a_swap() {
    let a = set(r#"RULE r ON avg(t, 60s) > 50 THEN alert("a") EVERY 1h"#);
    let b = set(r#"RULE r ON avg(t, 60s) > 50 THEN alert("b") EVERY 1h"#);
    let mut state = a.new_state();
    let mut out = Vec::new();
    a.eval(
        &mut state,
        &a.decode("", 0, br#"{"t": 100}"#).expect("decode"),
        &mut out,
    );
    let mut state = b.migrate_state(&a, state);
    // Window kept (avg (100 + 20) / 2 = 60 > 50), rate limit kept: no alert.
    b.eval(
        &mut state,
        &b.decode("", 1000, br#"{"t": 20}"#).expect("decode"),
        &mut out,
    );
    assert_eq!(out.len(), 1);
}

#[test]
fn syntax_errors_name_line_and_column_and_what_was_expected() {
    let e = error_of("ON temperature > 85\nTHEN alert(\"x\"\n");
    assert!(e.starts_with("3:1: expected"), "{e}");
    let e = error_of("ON temperature >> 85 THEN alert(\"x\")");
    assert!(e.starts_with("1:17:"), "{e}");
    let e = error_of("RULE a ON x > 1 THEN alert(\"x\") EVERY 10 s");
    assert!(e.starts_with("1:39: expected a duration"), "{e}");
    let e = error_of("ON x > 1e999 THEN alert(\"x\")");
    assert!(e.contains("1:8: number 1e999 is out of range"), "{e}");
}

#[test]
fn type_errors_name_line_and_column() {
    let e = error_of("FIELD temperature: number\nON temperature == \"hot\" THEN alert(\"x\")");
    assert_eq!(e, "2:4: `==` compares a number with a string");
    let e = error_of("ON \"a\" > 5 THEN alert(\"x\")");
    assert_eq!(e, "1:4: `>` compares a string with a number");
    let e = error_of("ON x + 1 THEN alert(\"x\")");
    assert_eq!(
        e,
        "1:4: a rule's condition must be a bool, this is a number"
    );
    let e = error_of("FIELD id: string\nON avg(id, 10s) > 1 THEN alert(\"x\")");
    assert_eq!(e, "2:8: avg() needs a number, found a string");
    let e = error_of("ON avg(x + 1, 10s) > 1 THEN alert(\"x\")");
    assert!(e.starts_with("1:8: avg() takes an event field"), "{e}");
    let e = error_of("ON x > 10s THEN alert(\"x\")");
    assert!(e.starts_with("1:8: a duration is only allowed"), "{e}");
    let e = error_of("ON $ghost THEN alert(\"x\")");
    assert!(e.starts_with("1:4: variable $ghost is never set"), "{e}");
}

#[test]
fn unknown_actions_functions_and_bad_arguments_are_refused() {
    let e = error_of("ON x > 1 THEN reboot()");
    assert_eq!(
        e,
        "1:15: unknown action reboot() (known: alert, publish, set, call, modbus_write)"
    );
    let e = error_of("ON median(x, 5s) > 1 THEN alert(\"x\")");
    assert!(e.starts_with("1:4: unknown function median()"), "{e}");
    let e = error_of("ON x > 1 THEN alert(\"a\", \"b\")");
    assert_eq!(e, "1:15: alert() takes 1 argument(s), found 2");
    let e = error_of("ON topic ~ \"a/#/b\" THEN alert(\"x\")");
    assert!(e.starts_with("1:12: `#` must be the last level"), "{e}");
    let e = error_of("ON x > 1 THEN publish(\"a/+\", \"p\")");
    assert!(e.starts_with("1:23: a publish topic"), "{e}");
    let e = error_of("ON x > 1 THEN alert(\"open {brace\")");
    assert!(e.contains("unclosed `{`"), "{e}");
    let e = error_of("ON x > 1 THEN alert(\"{1x}\")");
    assert!(e.contains("is not a field"), "{e}");
    let e = error_of("RULE a ON x > 1 THEN alert(\"x\")\nRULE a ON x > 2 THEN alert(\"y\")");
    assert_eq!(e, "2:1: rule a is already defined at 1:1");
    let e = error_of("ON x > 1 THEN alert(\"x\") EVERY 0s");
    assert!(e.contains("EVERY needs a duration above zero"), "{e}");
    let e = error_of("ON avg(x, 25h) > 1 THEN alert(\"x\")");
    assert!(e.contains("at most 24h"), "{e}");
}

#[test]
fn all_problems_are_reported_in_source_order() {
    let src = "ON x > 1 THEN nope()\nON y == \"a\" + 1 THEN alert(\"x\")\n";
    let e = compile_source(src).expect_err("refused");
    assert_eq!(e.0.len(), 2, "{e}");
    assert_eq!((e.0[0].pos.line, e.0[1].pos.line), (1, 2));
    let rendered = e.render("site.rules", src);
    assert!(
        rendered.starts_with("site.rules:1:15: unknown action nope()"),
        "{rendered}"
    );
    assert!(rendered.contains("  |               ^\n"), "{rendered}");
}

#[test]
fn bad_event_payloads_are_errors_not_panics() {
    let c = set(r#"ON t > 1 THEN alert("x")"#);
    for bad in ["", "[1]", "{", r#"{"t": 1} trailing"#, "42"] {
        assert!(c.decode("", 0, bad.as_bytes()).is_err(), "{bad:?}");
    }
    let big = format!(
        r#"{{"t": 1, "pad": "{}"}}"#,
        "x".repeat(ferry_rules::decode::MAX_EVENT_BYTES)
    );
    assert!(matches!(
        c.decode("", 0, big.as_bytes()),
        Err(ferry_rules::DecodeError::TooLarge(_))
    ));
}

#[test]
fn envelopes_carry_topic_time_and_payload() {
    let e = ferry_rules::Envelope::parse(br#"{"topic": "a/b", "time": 1.5, "payload": {"t": 2}}"#)
        .expect("parse");
    assert_eq!(
        (e.topic.as_str(), e.time_ms, e.payload.as_slice()),
        ("a/b", Some(1500), &br#"{"t": 2}"#[..])
    );
    for bad in [
        &br#"{"payload": 3}"#[..],
        br#"{"topic": "x"}"#,
        br#"{"payload": {}, "time": -1}"#,
        br#"{"payload": {}, "extra": 1}"#,
    ] {
        assert!(
            ferry_rules::Envelope::parse(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// Regression: a long one-line rule set took quadratic time and memory to
/// check (every unnamed rule was `rule@1`, and each of thousands of
/// "already defined" errors carried the whole 4 MiB line; 79 s for 4 MiB).
#[test]
fn a_long_single_line_is_checked_in_linear_time_with_short_errors() {
    let rule = r#"ON temperature > 85 AND humidity < 3 THEN alert("x{temperature}") "#;
    let n = (1 << 20) / rule.len();
    let src = rule.repeat(n);
    let c = set(&src);
    assert_eq!(c.rule_names().count(), n);
    // Many errors: at most MAX_DIAGNOSTICS shown, each with a short excerpt.
    let bad = r#"RULE a ON temperature > 85 THEN alert("x") "#.repeat(n / 2);
    let e = compile_source(&bad).unwrap_err();
    assert_eq!(e.0.len(), ferry_rules::compile::MAX_DIAGNOSTICS + 1);
    assert!(
        e.0.last()
            .unwrap()
            .message
            .contains("more problems not shown"),
        "{e}"
    );
    let text = e.render("x.rules", &bad);
    assert!(text.len() < 64 * 1024, "{} bytes of errors", text.len());
    // A syntax error at the end of a long line: exact column, short excerpt.
    let late = format!("{src}ON x >> 1 THEN alert(\"y\")");
    let e = compile_source(&late).unwrap_err();
    let col = src.chars().count() + 7;
    assert!(e.to_string().starts_with(&format!("1:{col}:")), "{e}");
    assert!(e.render("x.rules", &late).len() < 2048);
}

#[test]
fn modbus_write_evaluates_its_value_and_is_checked_against_writable_registers() {
    let c = set(r#"
        RULE fan ON temperature > 30 THEN modbus_write("plc1", 10, 1), modbus_write("plc1", 11, temperature * 10)
    "#);
    let out = run(
        &c,
        &[
            (0.0, "t", r#"{"temperature": 25}"#),
            (1.0, "t", r#"{"temperature": 31.5}"#),
        ],
    );
    assert_eq!(out, ["modbus_write:plc1.10=1", "modbus_write:plc1.11=315"]);
    let writes: Vec<(String, u16)> = c
        .register_writes()
        .iter()
        .map(|w| (w.device.to_string(), w.register))
        .collect();
    assert_eq!(writes, [("plc1".to_owned(), 10), ("plc1".to_owned(), 11)]);
    // Only register 10 is writable: the second write is refused, at its place.
    let e = c
        .check_writes(|_, r| {
            if r == 10 {
                Ok(())
            } else {
                Err(format!("register {r} is not writable"))
            }
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "2:72: register 11 is not writable");
    assert!(
        error_of(r#"ON x > 1 THEN modbus_write("plc1", 70000, 1)"#)
            .contains("register must be a number literal in 0..=65535")
    );
    assert!(
        error_of(r#"ON x > 1 THEN modbus_write(dev, 1, 1)"#)
            .contains("device name must be a non-empty string literal")
    );
    assert!(
        error_of(r#"ON x > 1 THEN modbus_write("plc1", 1, "on")"#)
            .contains("value must be a number")
    );
    assert!(error_of(r#"ON x > 1 THEN modbus_write("plc1", 1)"#).contains("modbus_write"));
}

#[test]
fn register_words_from_values() {
    use ferry_rules::Value;
    assert_eq!(Value::Num(1.0).to_register(), Ok(1));
    assert_eq!(Value::Num(-1.0).to_register(), Ok(0xffff));
    assert_eq!(Value::Num(65535.0).to_register(), Ok(65535));
    assert_eq!(Value::Bool(true).to_register(), Ok(1));
    assert!(Value::Num(65536.0).to_register().is_err());
    assert!(Value::Num(1.5).to_register().is_err());
    assert!(Value::Missing.to_register().is_err());
}
