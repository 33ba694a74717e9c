//! Templates, device facts and plan: a sample fleet repository
//! (integration/fleet/repo) rendered for three devices gives the expected
//! desired states and plans; template errors are precise and nothing is
//! applied; secrets never leave the device's files.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;

const DEVICES: &[&str] = &["gw-a", "gw-b", "gw-c"];

fn facts(device: &str) -> PathBuf {
    data_dir().join(format!("fleet/facts/{device}.toml"))
}

fn fleet() -> Fixture {
    let f = Fixture::new();
    f.write_config("ferry.yaml.j2");
    f.publish_tree(&data_dir().join("fleet/repo"));
    f
}

fn run_for(f: &Fixture, device: &str, args: &[&str]) -> String {
    let facts = facts(device);
    let mut all = vec!["--facts", facts.to_str().unwrap()];
    all.extend_from_slice(args);
    f.ok(&all)
}

fn plan_schema() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(data_dir().join("../schemas/plan.schema.json")).unwrap(),
    )
    .unwrap();
    jsonschema::draft202012::new(&schema).unwrap()
}

fn assert_valid_plan(json: &str) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let validator = plan_schema();
    let errors: Vec<String> = validator
        .iter_errors(&v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "plan --json does not match schemas/plan.schema.json: {errors:?}"
    );
}

#[test]
fn golden_render_and_plan_for_three_devices() {
    for device in DEVICES {
        let f = fleet();
        golden(
            &format!("{device}.render.json"),
            &run_for(&f, device, &["render", "--json"]),
        );
        golden(
            &format!("{device}.plan.txt"),
            &run_for(&f, device, &["plan"]),
        );
        let json = run_for(&f, device, &["plan", "--json"]);
        assert_valid_plan(&json);
        golden(&format!("{device}.plan.json"), &json);
    }
}

#[test]
fn golden_plan_of_a_later_revision_after_apply() {
    let f = fleet();
    run_for(&f, "gw-a", &["apply"]);
    let v2 = data_dir().join("fleet/repo-v2");
    let v2 = v2.to_str().unwrap();
    golden(
        "gw-a.plan-v2.txt",
        &run_for(&f, "gw-a", &["plan", "--revision", v2]),
    );
    let json = run_for(&f, "gw-a", &["plan", "--json", "--revision", v2]);
    assert_valid_plan(&json);
    golden("gw-a.plan-v2.json", &json);
    // Planning against another revision applied nothing.
    let again = run_for(&f, "gw-a", &["plan"]);
    assert!(again.ends_with("no changes\n"), "{again}");
}

#[test]
fn selection_follows_device_labels_and_facts() {
    let resources = |device: &str| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&run_for(&fleet(), device, &["render", "--json"])).unwrap();
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let a = resources("gw-a");
    assert!(
        a.contains(&"/etc/gateway/serial.conf".to_owned())
            && !a.contains(&"/etc/gateway/can.conf".to_owned())
    );
    assert!(a.contains(&"/etc/collector/lines/line-2.conf".to_owned()));
    let b = resources("gw-b");
    assert!(
        b.contains(&"/etc/gateway/can.conf".to_owned())
            && !b.contains(&"/etc/gateway/serial.conf".to_owned())
    );
    assert!(b.contains(&"/etc/collector/lines/line-a.conf".to_owned()));
    let c = resources("gw-c");
    assert!(!c.iter().any(|n| n.starts_with("/etc/gateway/")));
}

#[test]
fn applied_files_are_the_rendered_templates() {
    let f = fleet();
    run_for(&f, "gw-c", &["apply"]);
    let collector = fs::read_to_string(f.root.join("etc/collector/collector.toml")).unwrap();
    assert!(
        collector.contains("log_level = \"debug\""),
        "device vars override the fleet's:\n{collector}"
    );
    assert!(
        collector.contains("os = \"Poky 4.0 (kirkstone)\""),
        "{collector}"
    );
    let bridge = fs::read_to_string(f.root.join("etc/mosquitto/conf.d/bridge.conf")).unwrap();
    assert!(
        bridge.contains("address broker.plant-7.example:8883"),
        "site vars:\n{bridge}"
    );
    assert!(
        bridge.contains("topic telemetry/# out 1") && !bridge.contains("bottling"),
        "no group vars for gw-c:\n{bridge}"
    );
    let creds = fs::read_to_string(f.root.join("etc/collector/credentials")).unwrap();
    assert!(creds.contains("gw-c03-S3CRET-c0de"));
    // A second apply renders the same bytes: nothing to do.
    let out = run_for(&f, "gw-c", &["apply", "--json"]);
    assert!(out.contains("\"no-change\""), "{out}");
}

/// Replaces the manifest (and optionally adds files) of the fleet repo.
fn with_manifest(f: &Fixture, manifest: &str, files: &[(&str, &str)]) {
    fs::write(f.repo.join("ferry.yaml.j2"), manifest).unwrap();
    for (p, c) in files {
        let p = f.repo.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, c).unwrap();
    }
}

/// Expects `apply` to fail with exit 3 and one stderr line containing `needles`,
/// with nothing applied.
fn refused(f: &Fixture, needles: &[&str]) {
    let facts = facts("gw-a");
    for cmd in [&["plan"][..], &["apply"][..]] {
        let mut args = vec!["--facts", facts.to_str().unwrap()];
        args.extend_from_slice(cmd);
        let out = f.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{cmd:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} missing from: {err}");
        }
    }
    assert!(f.snapshot().is_empty(), "nothing applied");
    assert!(!f.state.join("current").exists());
}

const HEAD: &str = "apiVersion: ferry.dev/v1\nresources:\n";

/// A manifest of one file, /etc/x, rendered from the template `text`.
fn with_template(f: &Fixture, text: &str) {
    with_manifest(
        f,
        &format!("{HEAD}  - {{kind: file, path: /etc/x, template: t/x.j2}}\n"),
        &[("t/x.j2", text)],
    );
}

#[test]
fn template_syntax_error_names_template_line_and_column() {
    let f = fleet();
    with_template(&f, "line one\nvalue = {{ device.hostname }\n");
    refused(
        &f,
        &[
            "/resources/0/template",
            "template t/x.j2: line 2, column",
            "syntax error",
        ],
    );
    with_manifest(
        &f,
        "apiVersion: ferry.dev/v1\nresources:\n{% for x in %}\n",
        &[],
    );
    refused(
        &f,
        &[
            "manifest ferry.yaml.j2",
            "template ferry.yaml.j2: line 3",
            "syntax error",
        ],
    );
}

#[test]
fn undefined_variable_is_an_error() {
    let f = fleet();
    with_template(&f, "ok\nport = {{ vars.no_such_var }}\n");
    refused(&f, &["template t/x.j2: line 2", "undefined"]);
    with_manifest(
        &f,
        &format!(
            "{HEAD}  - {{kind: file, path: /etc/{{{{ device.serial_number }}}}, source: files/motd}}\n"
        ),
        &[],
    );
    refused(&f, &["template ferry.yaml.j2: line 3", "undefined"]);
}

#[test]
fn rendered_schema_violation_names_the_pointer() {
    let f = fleet();
    with_manifest(
        &f,
        &format!(
            "{HEAD}  - {{kind: file, path: /etc/x, source: files/motd}}\n  - {{kind: file, path: /etc/y, source: files/motd, template: t/y.j2}}\n"
        ),
        &[],
    );
    refused(
        &f,
        &["/resources/1", "exactly one of `source` or `template`"],
    );
}

#[test]
fn duplicates_unknown_kinds_and_missing_files_in_rendered_manifests() {
    let f = fleet();
    with_manifest(
        &f,
        &format!(
            "{HEAD}{{% for i in [1, 2] %}}\n  - {{kind: file, path: /etc/same, source: files/motd}}\n{{% endfor %}}\n"
        ),
        &[],
    );
    refused(&f, &["/resources/1", "duplicate resource file /etc/same"]);
    with_manifest(&f, &format!("{HEAD}  - {{kind: service, name: x}}\n"), &[]);
    refused(
        &f,
        &["/resources/0/kind", "unknown resource kind \"service\""],
    );
    with_manifest(
        &f,
        &format!("{HEAD}  - {{kind: file, path: /etc/x, template: templates/missing.j2}}\n"),
        &[],
    );
    refused(
        &f,
        &["/resources/0/template", "templates/missing.j2", "not found"],
    );
    with_manifest(
        &f,
        &format!("{HEAD}  - {{kind: file, path: /etc/x, source: files/missing}}\n"),
        &[],
    );
    refused(&f, &["/resources/0/source", "files/missing", "not found"]);
}

#[test]
fn templates_cannot_read_outside_the_revision() {
    let f = fleet();
    fs::write(f.dir.path().join("outside.j2"), "stolen").unwrap();
    with_template(&f, "{% include \"../outside.j2\" %}\n");
    refused(&f, &["template", "outside the revision"]);
    with_template(&f, "{% include \"/etc/passwd\" %}\n");
    refused(&f, &["outside the revision"]);
}

#[test]
fn runaway_renders_are_bounded() {
    let f = fleet();
    with_template(
        &f,
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\n",
    );
    refused(&f, &["template t/x.j2", "work limit"]);
    // Cheap to compute, too large to keep.
    with_template(&f, "{{ 'x' * 20000000 }}\n");
    refused(
        &f,
        &["template t/x.j2", "output is larger than 16777216 bytes"],
    );
}

/// The peak resident memory (KiB) of `ferry ARGS`, and its output.
fn peak_rss(f: &Fixture, args: &[&str]) -> (u64, std::process::Output) {
    let script = "import resource, subprocess, sys\n\
                  p = subprocess.run(sys.argv[1:], capture_output=True)\n\
                  sys.stderr.buffer.write(p.stderr)\n\
                  print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
                  sys.exit(p.returncode)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, common::FERRY, "--config"])
        .arg(&f.config)
        .args(args)
        .output()
        .unwrap();
    let kib = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (kib, out)
}

/// Intermediate strings count against the render's budget: a template
/// that doubles a string until it passes the output cap is refused after
/// using about the cap, not 30 times it (a gateway with 512 MiB would
/// otherwise be killed by the OOM killer instead of refusing the revision).
#[test]
fn a_refused_template_costs_about_its_cap_in_memory() {
    let f = fleet();
    with_template(
        &f,
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}\n",
    );
    let facts = facts("gw-a");
    let (kib, out) = peak_rss(&f, &["--facts", facts.to_str().unwrap(), "plan"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("template t/x.j2"), "{}", stderr(&out));
    assert!(kib < 160 * 1024, "peak {} MiB", kib / 1024);
}

#[test]
fn secrets_never_appear_in_plans_logs_journal_or_audit() {
    let f = fleet();
    let secret = "gw-a01-S3CRET-7f2b";
    let facts = facts("gw-a");
    let facts = facts.to_str().unwrap();
    // Every command's stdout and stderr (at trace level) is collected.
    let run = |facts: &str, args: &[&str]| -> String {
        let mut all = vec!["--log-level", "trace", "--facts", facts];
        all.extend_from_slice(args);
        let out = f.run(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out))
    };
    let mut seen = String::new();
    for args in [
        &["plan"][..],
        &["plan", "--json"],
        &["render", "--json"],
        &["render"],
        &["apply"],
    ] {
        seen.push_str(&run(facts, args));
    }
    // A change of the secret itself: planned and applied, still redacted.
    let facts2 = f.dir.path().join("facts2.toml");
    fs::write(
        &facts2,
        fs::read_to_string(facts)
            .unwrap()
            .replace(secret, "rotated-S3CRET-0001"),
    )
    .unwrap();
    for args in [&["plan"][..], &["plan", "--json"], &["apply"]] {
        seen.push_str(&run(facts2.to_str().unwrap(), args));
    }
    assert!(
        seen.contains("content changed (secret)"),
        "the change is shown, redacted:\n{seen}"
    );
    for args in [
        &["audit", "list", "--json"][..],
        &["audit", "list"],
        &["status", "--json"],
        &["generations", "--json"],
    ] {
        seen.push_str(&run(facts, args));
    }
    for s in [secret, "rotated-S3CRET-0001"] {
        assert!(
            !seen.contains(s),
            "secret {s} leaked into command output or logs"
        );
    }
    // The audit table and the rest of the database, byte for byte.
    let db = fs::read(f.state.join("state.db")).unwrap();
    let wal = fs::read(f.state.join("state.db-wal")).unwrap_or_default();
    for s in [secret, "rotated-S3CRET-0001"] {
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "secret {s} in state.db"
            );
        }
    }
    // The file itself does carry it: that is its job.
    let creds = fs::read_to_string(f.root.join("etc/collector/credentials")).unwrap();
    assert!(creds.contains("rotated-S3CRET-0001"));
}

/// Regression: `{% include secrets.x %}` printed the secret inside
/// "tried to include non-existing template …", on stderr and in the
/// `revision-refused` audit entry that is exported to the fleet.
#[test]
fn a_failed_render_that_read_secrets_is_redacted() {
    let secret = "gw-a01-S3CRET-7f2b";
    for body in [
        "{% include secrets.mqtt_password %}\n",
        "{{ secrets.mqtt_password ~ undefined_thing }}\n",
        "{{ secrets.mqtt_password | int(strict) }}\n",
        "{% set x = secrets.mqtt_password %}{{ x.missing.deeper }}\n",
    ] {
        let f = fleet();
        with_manifest(
            &f,
            &format!("{HEAD}  - {{kind: file, path: /etc/x, template: t/x.j2}}\n"),
            &[("t/x.j2", body)],
        );
        refused(&f, &["template t/x.j2", "details redacted"]);
        let facts = facts("gw-a");
        let audit = f.ok(&[
            "--facts",
            facts.to_str().unwrap(),
            "audit",
            "list",
            "--json",
        ]);
        assert!(audit.contains("revision-refused"), "{audit}");
        assert!(
            !audit.contains(secret),
            "{body}: secret in the audit: {audit}"
        );
        let out = f.run(&["--facts", facts.to_str().unwrap(), "plan"]);
        assert!(!stderr(&out).contains(secret), "{body}: {}", stderr(&out));
    }
    // A render that did not read secrets keeps its details.
    let f = fleet();
    with_template(&f, "{% include 'missing.j2' %}\n");
    refused(&f, &["template t/x.j2", "missing.j2"]);
}

#[test]
fn the_manifest_itself_may_not_read_secrets() {
    let f = fleet();
    with_manifest(
        &f,
        &format!(
            "{HEAD}  - {{kind: file, path: /etc/{{{{ secrets.mqtt_password }}}}, source: files/motd}}\n"
        ),
        &[],
    );
    refused(&f, &["may not read `secrets`"]);
}

#[test]
fn bad_facts_file_is_a_configuration_error() {
    let f = fleet();
    let bad = f.dir.path().join("bad-facts.toml");
    fs::write(&bad, "hostname = \"x\"\n[labels]\nsite = 7\n").unwrap();
    let out = f.run(&["--facts", bad.to_str().unwrap(), "plan"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad-facts.toml") && err.contains("line 3"),
        "{err}"
    );
}
