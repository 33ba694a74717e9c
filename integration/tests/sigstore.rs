//! Sigstore: `ferry sigstore verify-bundle` (the conformance entry point)
//! and `[[sigstore.require]]` on resources, with real bundles from
//! integration/fixtures/sigstore.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{FERRY, Fixture};

const BEACON: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const GITHUB: &str = "https://token.actions.githubusercontent.com";
const A_TXT: &str = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../integration/fixtures/sigstore")
        .join(name)
}

fn verify_bundle(args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(["sigstore", "verify-bundle"])
        .args(args)
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn verify_bundle_exits_0_only_when_verified() {
    let bundle = fixture("a.txt.sigstore.json");
    let bundle = bundle.to_str().unwrap();
    let a_txt = fixture("a.txt");
    let a_txt = a_txt.to_str().unwrap();
    let id = [
        "--certificate-identity",
        BEACON,
        "--certificate-oidc-issuer",
        GITHUB,
    ];
    // File and digest forms, embedded production root.
    for artifact in [a_txt, A_TXT] {
        let o = verify_bundle(&[&["--bundle", bundle], &id[..], &[artifact]].concat());
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    // JSON names the signer and the log entry.
    let o = verify_bundle(&[&["--bundle", bundle, "--json"], &id[..], &[A_TXT]].concat());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["signer"], BEACON);
    assert_eq!(v["log_index"], 23891210);
    // Regex identity.
    let o = verify_bundle(&[
        "--bundle",
        bundle,
        "--certificate-identity-regexp",
        "https://github.com/sigstore-conformance/.*",
        "--certificate-oidc-issuer",
        GITHUB,
        A_TXT,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // This bundle has one verified time (the log's SET): asking for two
    // refuses it, naming what vouched; zero is not a valid demand.
    let o = verify_bundle(
        &[
            &["--bundle", bundle, "--verified-times", "2", "--json"],
            &id[..],
            &[A_TXT],
        ]
        .concat(),
    );
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["check"], "time");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("1 verified signing time(s) (log https://rekor.sigstore.dev), 2 required"),
        "{error}"
    );
    let o = verify_bundle(
        &[
            &["--bundle", bundle, "--verified-times", "0"],
            &id[..],
            &[A_TXT],
        ]
        .concat(),
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // Refusals: 4, with the failed check named.
    let tampered = tempfile::NamedTempFile::new().unwrap();
    fs::write(tampered.path(), b"DO NOT MODIFY ME!\n").unwrap();
    for (args, needle) in [
        (
            vec![
                "--certificate-identity",
                "https://github.com/acme/x",
                "--certificate-oidc-issuer",
                GITHUB,
                A_TXT,
            ],
            "identity mismatch",
        ),
        (
            vec![
                "--certificate-identity",
                BEACON,
                "--certificate-oidc-issuer",
                "https://accounts.google.com",
                A_TXT,
            ],
            "OIDC issuer",
        ),
        (
            vec![
                "--certificate-identity",
                BEACON,
                "--certificate-oidc-issuer",
                GITHUB,
                tampered.path().to_str().unwrap(),
            ],
            "digest mismatch",
        ),
        (
            vec![
                "--certificate-identity",
                BEACON,
                "--certificate-oidc-issuer",
                GITHUB,
                "--trusted-root",
                fixture("trusted_root.staging.json").to_str().unwrap(),
                A_TXT,
            ],
            "not in the trusted root",
        ),
    ] {
        let o = verify_bundle(&[&["--bundle", bundle][..], &args].concat());
        assert_eq!(code(&o), 4, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    // Key-based, with its own trusted root.
    let key_args = |key: &Path| {
        verify_bundle(&[
            "--bundle",
            fixture("key-dsse/bundle.sigstore.json").to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--trusted-root",
            fixture("key-dsse/trusted_root.json").to_str().unwrap(),
            a_txt,
        ])
    };
    assert_eq!(code(&key_args(&fixture("key-dsse/key.pub"))), 0);
    // Usage errors are not verifications: no signer, a bad digest, no bundle.
    assert_eq!(code(&verify_bundle(&["--bundle", bundle, A_TXT])), 2);
    let o = verify_bundle(&[&["--bundle", bundle], &id[..], &["sha256:abc"]].concat());
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let o = verify_bundle(&[&["--bundle", "/nonexistent.json"], &id[..], &[A_TXT]].concat());
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    // A trusted root or key file that does not parse is named.
    let o = verify_bundle(
        &[
            &["--bundle", bundle, "--trusted-root", bundle],
            &id[..],
            &[A_TXT],
        ]
        .concat(),
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("trusted root") && stderr(&o).contains("a.txt.sigstore.json"),
        "{}",
        stderr(&o)
    );
}

// ---- `[[sigstore.require]]` on a firmware resource ----------------------------------

/// A device with GRUB A/B slots whose configuration requires firmware to
/// be signed by `rule` (TOML lines of a `[[sigstore.require]]` table).
fn device(rule: &str) -> Fixture {
    let f = Fixture::new();
    let (_, cmdline) = common::grub_firmware(&f);
    fs::write(f.dir.path().join("slot-a.img"), b"running firmware\n").unwrap();
    fs::write(f.dir.path().join("slot-b.img"), b"").unwrap();
    fs::write(&cmdline, "quiet rauc.slot=A\n").unwrap();
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        format!("{text}[[sigstore.require]]\nkind = \"firmware\"\n{rule}\n"),
    )
    .unwrap();
    f.ok(&["firmware", "mark-good"]);
    f
}

fn identity_rule(identity: &str) -> String {
    format!("identity = {identity:?}\nissuer = {GITHUB:?}\n")
}

/// Publishes firmware `image` with `bundle` beside it (if any) and a file.
fn publish(f: &Fixture, image: &str, bundle: Option<&str>) {
    let mut files = vec![
        ("images/os.img".to_owned(), image.to_owned()),
        ("files/motd".to_owned(), "hello\n".to_owned()),
    ];
    if let Some(b) = bundle {
        files.push(("images/os.img.sigstore.json".to_owned(), b.to_owned()));
    }
    f.publish_raw(
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/motd, source: files/motd}\n  - {kind: firmware, name: os, version: \"2\", source: images/os.img}\n",
        &files,
    );
}

fn last_audit(f: &Fixture) -> serde_json::Value {
    let a = f.json(&["audit", "list", "--json"]);
    a.as_array().unwrap().last().unwrap().clone()
}

fn refused(f: &Fixture, check: &str, needle: &str) {
    let o = f.run(&["apply", "--no-reboot"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("firmware os: ")
            && stderr(&o).contains("bundle images/os.img.sigstore.json"),
        "{}",
        stderr(&o)
    );
    let e = last_audit(f);
    assert_eq!(e["event"], "revision-refused", "{e}");
    assert_eq!(e["details"]["check"], check, "{e}");
    assert_eq!(e["details"]["resource"], "firmware os", "{e}");
    // Nothing was applied: no generation, the file is not there, slot B empty.
    assert_eq!(
        f.json(&["status", "--json"])["generation"],
        serde_json::Value::Null
    );
    assert!(!f.root.join("etc/motd").exists());
    assert_eq!(fs::read(f.dir.path().join("slot-b.img")).unwrap(), b"");
    f.ok(&["audit", "verify"]);
}

#[test]
fn firmware_requiring_an_identity_is_refused_without_its_bundle() {
    let f = device(&identity_rule(BEACON));
    let a_txt = fs::read_to_string(fixture("a.txt")).unwrap();
    let bundle = fs::read_to_string(fixture("a.txt.sigstore.json")).unwrap();
    publish(&f, &a_txt, None);
    refused(&f, "bundle", "missing");
    // A bundle for other bytes.
    publish(&f, &format!("{a_txt}!"), Some(&bundle));
    refused(&f, "digest", "digest mismatch");
    // A bundle that is not one.
    publish(&f, &a_txt, Some("{\"mediaType\": \"x\"}"));
    refused(
        &f,
        "bundle",
        "missing field `verificationMaterial` at line 1",
    );
    // Signed, bundle and all: applied, the image is in slot B.
    publish(&f, &a_txt, Some(&bundle));
    let o = f.run(&["apply", "--no-reboot", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(f.dir.path().join("slot-b.img")).unwrap()[..a_txt.len()],
        *a_txt.as_bytes()
    );
    assert_eq!(
        fs::read_to_string(f.root.join("etc/motd")).unwrap(),
        "hello\n"
    );
}

#[test]
fn firmware_signed_by_another_identity_or_issuer_is_refused() {
    let a_txt = fs::read_to_string(fixture("a.txt")).unwrap();
    let bundle = fs::read_to_string(fixture("a.txt.sigstore.json")).unwrap();
    for (rule, needle) in [
        (
            identity_rule(
                "https://github.com/acme/gw/.github/workflows/release.yml@refs/heads/main",
            ),
            "identity mismatch",
        ),
        (
            format!("identity = {BEACON:?}\nissuer = \"https://accounts.google.com\"\n"),
            "OIDC issuer",
        ),
        (
            format!(
                "{}github_workflow_repository = \"acme/gw\"\n",
                identity_rule(BEACON)
            ),
            "github_workflow_repository",
        ),
        (
            format!("key = {:?}\n", fixture("key-dsse/key.pub")),
            "signed with a certificate",
        ),
    ] {
        let f = device(&rule);
        publish(&f, &a_txt, Some(&bundle));
        let check = if rule.starts_with("key") {
            "key"
        } else {
            "identity"
        };
        refused(&f, check, needle);
    }
    // A regex over the workflow identity and the repository claim that match.
    let f = device(&format!(
        "identity_regex = \"https://github.com/sigstore-conformance/.*\"\nissuer = {GITHUB:?}\ngithub_workflow_repository = \"sigstore-conformance/extremely-dangerous-public-oidc-beacon\"\n"
    ));
    publish(&f, &a_txt, Some(&bundle));
    f.ok(&["apply", "--no-reboot"]);
}

#[test]
fn a_tampered_bundle_or_another_trusted_root_is_refused_and_audited() {
    let a_txt = fs::read_to_string(fixture("a.txt")).unwrap();
    let bundle = fs::read_to_string(fixture("a.txt.sigstore.json")).unwrap();
    // The log's signed entry timestamp altered.
    let tampered = bundle.replacen("MEQCIDcupned", "MEQCIDcupnee", 1);
    assert_ne!(tampered, bundle);
    let f = device(&identity_rule(BEACON));
    publish(&f, &a_txt, Some(&tampered));
    refused(&f, "tlog", "signed entry timestamp does not verify");
    // The device trusts another Sigstore instance (staging).
    let f = device(&identity_rule(BEACON));
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        format!(
            "{text}[sigstore]\ntrusted_root = {:?}\n",
            fixture("trusted_root.staging.json")
        ),
    )
    .unwrap();
    publish(&f, &a_txt, Some(&bundle));
    refused(&f, "tlog", "is not in the trusted root");
}

#[test]
fn sigstore_rules_are_validated_at_load() {
    for (rule, needle) in [
        (
            "issuer = \"x\"\n",
            "exactly one of `identity`, `identity_regex`, `key`",
        ),
        ("identity = \"x\"\n", "`issuer` is required"),
        ("identity_regex = \"(\"\nissuer = \"x\"\n", "identity_regex"),
        ("key = \"/k.pub\"\nissuer = \"x\"\n", "not with `key`"),
    ] {
        let f = Fixture::new();
        let text = fs::read_to_string(&f.config).unwrap();
        fs::write(
            &f.config,
            format!("{text}[[sigstore.require]]\nkind = \"firmware\"\n{rule}"),
        )
        .unwrap();
        let o = f.run(&["plan"]);
        assert_eq!(code(&o), 2, "{rule}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("sigstore.require: [0]") && stderr(&o).contains(needle),
            "{rule}: {}",
            stderr(&o)
        );
    }
    let f = Fixture::new();
    let text = fs::read_to_string(&f.config).unwrap();
    fs::write(
        &f.config,
        format!("{text}[[sigstore.require]]\nkind = \"docker\"\nkey = \"/k.pub\"\n"),
    )
    .unwrap();
    let o = f.run(&["plan"]);
    assert!(
        stderr(&o).contains("kind: unknown resource kind"),
        "{}",
        stderr(&o)
    );
}

// ---- over TUF: the bundle is a signed target beside the artifact -------------------

#[test]
fn over_tuf_the_bundle_travels_as_a_signed_sibling_target() {
    let d = common::tuf::Device::new(&[]);
    *d.extra.borrow_mut() = format!(
        "[[sigstore.require]]\npath = \"firmware/*.txt\"\n{}",
        identity_rule(BEACON)
    );
    d.configure(&d.repo.root_v1());
    let a_txt = fs::read(fixture("a.txt")).unwrap();
    let bundle = fs::read(fixture("a.txt.sigstore.json")).unwrap();
    d.repo.target("firmware/a.txt", &a_txt, "targets");
    d.repo.target(
        "ferry/manifest.yaml",
        b"apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /opt/a.txt, source: firmware/a.txt}\n",
        "targets",
    );
    // Signed by TUF, but without its Sigstore bundle.
    let err = d.refused(&["firmware/a.txt.sigstore.json", "missing"]);
    assert!(err.contains("file /opt/a.txt"), "{err}");
    // The bundle is a TUF target like any other: served altered, TUF
    // refuses its bytes before they are parsed.
    d.repo
        .target("firmware/a.txt.sigstore.json", &bundle, "targets");
    let t = d.repo.read_json("targets.json");
    let sha = t["signed"]["targets"]["firmware/a.txt.sigstore.json"]["hashes"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let served = d
        .repo
        .dir
        .join(format!("targets/firmware/{sha}.a.txt.sigstore.json"));
    let text = fs::read_to_string(&served)
        .unwrap()
        .replace("23891210", "23891211");
    fs::write(&served, text).unwrap();
    let err = d.refused(&["firmware/a.txt.sigstore.json"]);
    assert!(
        !err.contains("Sigstore bundle"),
        "refused by TUF, not parsed: {err}"
    );
    assert!(!d.fx.root.join("opt/a.txt").exists());
    // Served as signed: applied.
    d.repo
        .target("firmware/a.txt.sigstore.json", &bundle, "targets");
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(fs::read(d.fx.root.join("opt/a.txt")).unwrap(), a_txt);
}

/// Acceptance: a device requiring an identity for its firmware accepts a
/// Rekor v2 bundle (no log time; an RFC 3161 timestamp places the
/// signature) end to end over TUF, and audits the verified time source.
#[test]
fn a_rekor_v2_bundle_for_firmware_is_accepted_over_tuf_and_its_time_source_audited() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../integration/conformance/vendor/sigstore-conformance/test/assets/bundle-verify",
    );
    let d = common::tuf::Device::new(&[]);
    let (_, cmdline) = common::grub_firmware(&d.fx);
    fs::write(d.fx.dir.path().join("slot-a.img"), b"running firmware\n").unwrap();
    fs::write(d.fx.dir.path().join("slot-b.img"), b"").unwrap();
    fs::write(&cmdline, "quiet rauc.slot=A\n").unwrap();
    let firmware = fs::read_to_string(&d.fx.config).unwrap();
    let firmware = &firmware[firmware.find("[firmware]").unwrap()..];
    *d.extra.borrow_mut() = format!(
        "{firmware}[sigstore]\ntrusted_root = {:?}\n[[sigstore.require]]\nkind = \"firmware\"\n{}",
        assets.join("rekor2-happy-path/trusted_root.json"),
        identity_rule(BEACON)
    );
    d.configure(&d.repo.root_v1());
    d.fx.ok(&["firmware", "mark-good"]);
    let image = fs::read(assets.join("a.txt")).unwrap();
    let bundle = fs::read(assets.join("rekor2-happy-path/bundle.sigstore.json")).unwrap();
    d.repo.target("images/os.img", &image, "targets");
    d.repo
        .target("images/os.img.sigstore.json", &bundle, "targets");
    d.repo.target(
        "ferry/manifest.yaml",
        b"apiVersion: ferry.dev/v1\nresources:\n  - {kind: firmware, name: os, version: \"2\", source: images/os.img}\n",
        "targets",
    );
    let o = d.fx.run(&["apply", "--no-reboot"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(d.fx.dir.path().join("slot-b.img")).unwrap()[..image.len()],
        image[..]
    );
    let audit =
        d.fx.json(&["audit", "list", "--event", "sigstore-verified", "--json"]);
    let e = &audit.as_array().unwrap()[0];
    assert_eq!(e["details"]["resource"], "firmware os", "{e}");
    assert_eq!(e["details"]["signer"], BEACON, "{e}");
    assert_eq!(
        e["details"]["log"], "https://log2025-alpha1.rekor.sigstage.dev",
        "{e}"
    );
    assert_eq!(
        e["details"]["time_sources"],
        serde_json::json!(["timestamp authority sigstore-tsa-selfsigned"]),
        "{e}"
    );
    d.fx.ok(&["audit", "verify"]);
}
