//! Sigstore bundle verification against real bundles (integration/fixtures/sigstore,
//! see its README): accepted as signed, refused with the failed check named
//! when anything about them is off.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ferry_sigstore::{
    IdentityMatch, IdentityPolicy, Requirement, SigstoreError, TrustedRoot, Verified, verify,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BEACON: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const GITHUB: &str = "https://token.actions.githubusercontent.com";
const KUBEWARDEN: &str = "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../integration/fixtures/sigstore")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn a_txt() -> [u8; 32] {
    sha(&read("a.txt"))
}

fn v03_digest() -> [u8; 32] {
    hex::decode("c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172")
        .unwrap()
        .try_into()
        .unwrap()
}

fn identity(id: &str, issuer: &str) -> Requirement {
    Requirement::Identity(IdentityPolicy {
        identity: IdentityMatch::Exact(id.to_owned()),
        issuer: issuer.to_owned(),
        claims: vec![],
    })
}

fn check(
    bundle: &[u8],
    digest: &[u8; 32],
    root: &TrustedRoot,
    req: &Requirement,
) -> Result<Verified, SigstoreError> {
    verify(bundle, "bundle.sigstore.json", digest, root, req)
}

/// Fixture `name` without the log's signed entry timestamp.
fn without_promise(name: &str) -> Vec<u8> {
    edit(name, |v| {
        v.pointer_mut("/verificationMaterial/tlogEntries/0")
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove("inclusionPromise");
    })
}

/// Edits a bundle's JSON.
fn edit(name: &str, f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&read(name)).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn refused(r: Result<Verified, SigstoreError>, check: &str, needle: &str) -> SigstoreError {
    let e = r.expect_err("must be refused");
    assert_eq!(e.check(), check, "{e}");
    assert!(e.to_string().contains(needle), "{e:?} lacks {needle:?}");
    e
}

#[test]
fn a_keyless_message_signature_is_accepted() {
    let v = check(
        &read("a.txt.sigstore.json"),
        &a_txt(),
        TrustedRoot::production(),
        &identity(BEACON, GITHUB),
    )
    .unwrap();
    assert_eq!(v.kind, "certificate");
    assert_eq!(v.signer, BEACON);
    assert_eq!(v.issuer.as_deref(), Some(GITHUB));
    assert_eq!(v.signed_time, Some(1686853273));
    assert_eq!(v.log, "https://rekor.sigstore.dev");
}

#[test]
fn a_keyless_v03_dsse_attestation_is_accepted_and_claims_are_checked() {
    let bundle = read("dsse-v03.sigstore.json");
    let root = TrustedRoot::production();
    let mut policy = IdentityPolicy {
        identity: IdentityMatch::regex("https://github.com/kubewarden/.*").unwrap(),
        issuer: GITHUB.to_owned(),
        claims: vec![("github_workflow_ref", "refs/tags/v1.34.0".to_owned())],
    };
    let v = check(
        &bundle,
        &v03_digest(),
        root,
        &Requirement::Identity(policy.clone()),
    )
    .unwrap();
    assert_eq!(v.signer, KUBEWARDEN);
    // The regex is anchored: a prefix alone does not match.
    policy.identity = IdentityMatch::regex("https://github.com/kubewarden").unwrap();
    refused(
        check(
            &bundle,
            &v03_digest(),
            root,
            &Requirement::Identity(policy.clone()),
        ),
        "identity",
        "kubewarden-controller",
    );
    policy.identity = IdentityMatch::Exact(KUBEWARDEN.to_owned());
    policy.claims = vec![("github_workflow_ref", "refs/heads/main".to_owned())];
    refused(
        check(&bundle, &v03_digest(), root, &Requirement::Identity(policy)),
        "identity",
        "github_workflow_ref",
    );
}

#[test]
fn wrong_identity_or_issuer_is_refused() {
    let bundle = read("a.txt.sigstore.json");
    let root = TrustedRoot::production();
    let e = refused(
        check(
            &bundle,
            &a_txt(),
            root,
            &identity(
                "https://github.com/acme/gw/.github/workflows/release.yml@refs/heads/main",
                GITHUB,
            ),
        ),
        "identity",
        "acme/gw",
    );
    assert!(
        e.to_string().contains(BEACON),
        "names the actual identity: {e}"
    );
    refused(
        check(
            &bundle,
            &a_txt(),
            root,
            &identity(BEACON, "https://accounts.google.com"),
        ),
        "identity",
        "OIDC issuer",
    );
}

#[test]
fn a_tampered_artifact_is_refused() {
    let mut other = read("a.txt");
    other.push(b'!');
    for (name, digest, req) in [
        ("a.txt.sigstore.json", sha(&other), identity(BEACON, GITHUB)),
        (
            "dsse-v03.sigstore.json",
            sha(&other),
            identity(KUBEWARDEN, GITHUB),
        ),
    ] {
        refused(
            check(&read(name), &digest, TrustedRoot::production(), &req),
            "digest",
            &hex::encode(digest),
        );
    }
    // The digest form: the same check, no file.
    refused(
        check(
            &read("key-dsse/bundle.sigstore.json"),
            &[0u8; 32],
            &key_root(),
            &key_req(),
        ),
        "digest",
        "sha256:0000",
    );
}

#[test]
fn tampered_bundles_are_refused() {
    let root = TrustedRoot::production();
    let req = identity(BEACON, GITHUB);
    let entry = "/verificationMaterial/tlogEntries/0";
    // The log's signed entry timestamp.
    let b = edit("a.txt.sigstore.json", |v| {
        *v.pointer_mut(&format!("{entry}/inclusionPromise/signedEntryTimestamp")).unwrap() =
            "MEQCIDcupnedojCKUU7gaEGjVH/Qy3AJJDcD9VFWEjf76MpYAiAxk84qGkktsko5cyR/ygmkssR5KWM2fa5crN7a2ue9XA==".into();
    });
    refused(
        check(&b, &a_txt(), root, &req),
        "tlog",
        "signed entry timestamp",
    );
    // The integrated time (the SET no longer covers it).
    let b = edit("a.txt.sigstore.json", |v| {
        *v.pointer_mut(&format!("{entry}/integratedTime")).unwrap() = "1686853274".into();
    });
    refused(
        check(&b, &a_txt(), root, &req),
        "tlog",
        "signed entry timestamp",
    );
    // A hash of the inclusion proof.
    let b = edit("a.txt.sigstore.json", |v| {
        *v.pointer_mut(&format!("{entry}/inclusionProof/hashes/3"))
            .unwrap() = "r37EOMDlYDvOqey/QNqmud6ONMdtNTi1e6tKXohojNA=".into();
    });
    refused(check(&b, &a_txt(), root, &req), "tlog", "inclusion proof");
    // The signature.
    let b = edit("a.txt.sigstore.json", |v| {
        let s = v.pointer_mut("/messageSignature/signature").unwrap();
        let t = s.as_str().unwrap().replacen("MGYCMQCU", "MGYCMQCV", 1);
        *s = t.into();
    });
    refused(
        check(&b, &a_txt(), root, &req),
        "signature",
        "does not verify",
    );
    // The checkpoint of a v0.3 bundle.
    let b = edit("key-dsse/bundle.sigstore.json", |v| {
        let c = v
            .pointer_mut(&format!("{entry}/inclusionProof/checkpoint/envelope"))
            .unwrap();
        let t = c
            .as_str()
            .unwrap()
            .replacen("rekor.test\n1\n", "rekor.test\n2\n", 1);
        *c = t.into();
    });
    refused(
        check(&b, &a_txt(), &key_root(), &key_req()),
        "tlog",
        "checkpoint",
    );
    // Not a bundle at all; another media type.
    let e = refused(
        check(b"{\n  \"mediaType\": 3\n}", &a_txt(), root, &req),
        "bundle",
        "line 2",
    );
    assert!(
        e.to_string().starts_with("bundle bundle.sigstore.json:"),
        "{e}"
    );
    let b = edit("a.txt.sigstore.json", |v| {
        v["mediaType"] = "application/json".into()
    });
    refused(check(&b, &a_txt(), root, &req), "bundle", "/mediaType");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn the_tampered_body_is_refused_by_the_proofs() {
    // Body tampering must fail at the log, whatever else would notice.
    let entry = "/verificationMaterial/tlogEntries/0";
    let b = edit("dsse-v03.sigstore.json", |v| {
        let body = v
            .pointer_mut(&format!("{entry}/canonicalizedBody"))
            .unwrap();
        let mut bytes = base64_decode(body.as_str().unwrap());
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        *body = base64_encode(&bytes).into();
    });
    refused(
        check(
            &b,
            &v03_digest(),
            TrustedRoot::production(),
            &identity(KUBEWARDEN, GITHUB),
        ),
        "tlog",
        "signed entry timestamp",
    );
}

#[test]
fn an_expired_certificate_without_a_signed_log_time_is_refused() {
    // The v0.3 bundle has an inclusion proof with checkpoint and an RFC
    // 3161 timestamp: without the log's inclusion promise, the timestamp
    // authority's verified time places the signature.
    let b = without_promise("dsse-v03.sigstore.json");
    let v = check(
        &b,
        &v03_digest(),
        TrustedRoot::production(),
        &identity(KUBEWARDEN, GITHUB),
    )
    .unwrap();
    assert_eq!(
        v.time_sources,
        ["timestamp authority sigstore-tsa-selfsigned"]
    );
    // Without the timestamp too, nothing signs the time of signing: the
    // ten-minute certificate has long expired.
    let mut bare: Value = serde_json::from_slice(&b).unwrap();
    bare["verificationMaterial"]
        .as_object_mut()
        .unwrap()
        .remove("timestampVerificationData");
    refused(
        check(
            &serde_json::to_vec(&bare).unwrap(),
            &v03_digest(),
            TrustedRoot::production(),
            &identity(KUBEWARDEN, GITHUB),
        ),
        "time",
        "nothing signed a time",
    );
    // A v0.1 bundle must carry the promise.
    let b = without_promise("a.txt.sigstore.json");
    refused(
        check(
            &b,
            &a_txt(),
            TrustedRoot::production(),
            &identity(BEACON, GITHUB),
        ),
        "tlog",
        "neither",
    );
}

#[test]
fn a_wrong_trusted_root_is_refused() {
    // Another Sigstore instance (staging): its log does not know the entry.
    let staging = TrustedRoot::load(&fixture("trusted_root.staging.json")).unwrap();
    refused(
        check(
            &read("a.txt.sigstore.json"),
            &a_txt(),
            &staging,
            &identity(BEACON, GITHUB),
        ),
        "tlog",
        "is not in the trusted root",
    );
    // The production log, but not the Fulcio CA that issued the certificate.
    let mut root: Value = serde_json::from_slice(ferry_sigstore::PRODUCTION_TRUSTED_ROOT).unwrap();
    root["certificateAuthorities"]
        .as_array_mut()
        .unwrap()
        .remove(1);
    let root =
        TrustedRoot::from_json(&serde_json::to_vec(&root).unwrap(), "no-2022-ca.json").unwrap();
    refused(
        check(
            &read("a.txt.sigstore.json"),
            &a_txt(),
            &root,
            &identity(BEACON, GITHUB),
        ),
        "certificate-chain",
        "certificate",
    );
    // A trusted root that is not one.
    let e = TrustedRoot::from_json(b"{\"mediaType\": \"x\"}", "x.json").unwrap_err();
    assert_eq!(e.check(), "trusted-root");
    assert!(e.to_string().contains("x.json: /mediaType"), "{e}");
}

fn key_root() -> TrustedRoot {
    TrustedRoot::load(&fixture("key-dsse/trusted_root.json")).unwrap()
}

fn key_req() -> Requirement {
    Requirement::key_file(&fixture("key-dsse/key.pub")).unwrap()
}

#[test]
fn a_key_based_bundle_is_accepted_with_its_key_only() {
    let bundle = read("key-dsse/bundle.sigstore.json");
    let v = check(&bundle, &a_txt(), &key_root(), &key_req()).unwrap();
    assert_eq!(v.kind, "key");
    assert!(v.signer.ends_with("key.pub"));
    assert_eq!(v.signed_time, None);
    // Another key: the log key of the same root, as a PEM file.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.pub");
    std::fs::write(
        &other,
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEXlYI/a1XM9LYk54J0H/lm4EeboY1\nvhheo0TbTln8aWofhvUYUH9fIKz10uhbCDlTfOF+ymQlkiuDReSCMA2zAw==\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let other = Requirement::key_file(&other).unwrap();
    refused(
        check(&bundle, &a_txt(), &key_root(), &other),
        "signature",
        "other.pub",
    );
    // A certificate identity cannot be met by a key, nor a key by a certificate.
    refused(
        check(&bundle, &a_txt(), &key_root(), &identity(BEACON, GITHUB)),
        "identity",
        "signed with a key",
    );
    refused(
        check(
            &read("a.txt.sigstore.json"),
            &a_txt(),
            TrustedRoot::production(),
            &key_req(),
        ),
        "key",
        "signed with a certificate",
    );
    // A key file that is not one.
    std::fs::write(dir.path().join("bad.pub"), "hello").unwrap();
    let e = Requirement::key_file(&dir.path().join("bad.pub")).unwrap_err();
    assert_eq!(e.check(), "key");
    assert!(e.to_string().contains("bad.pub"), "{e}");
}

// ---- the public conformance suite's bundles ------------------------------------------

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../integration/conformance/vendor/sigstore-conformance/test/assets/bundle-verify")
}

/// Case `dir` of the suite's bundle-verify assets, verified as the suite's
/// client does (identity or key, trusted root, artifact).
fn verify_asset(
    dir: &std::path::Path,
    bundle: &[u8],
    root_json: Option<&[u8]>,
) -> Result<Verified, SigstoreError> {
    let root = match root_json {
        Some(json) => Some(TrustedRoot::from_json(json, "trusted_root.json")?),
        None => std::fs::read(dir.join("trusted_root.json"))
            .ok()
            .map(|j| TrustedRoot::from_json(&j, "trusted_root.json"))
            .transpose()?,
    };
    let root = root.as_ref().unwrap_or_else(|| TrustedRoot::production());
    let artifact = std::fs::read(dir.join("artifact"))
        .unwrap_or_else(|_| std::fs::read(assets().join("a.txt")).unwrap());
    let req = if dir.join("key.pub").exists() {
        Requirement::key_file(&dir.join("key.pub"))?
    } else {
        let text = |f: &str, d: &str| {
            std::fs::read_to_string(dir.join(f)).map_or(d.to_owned(), |s| s.trim().to_owned())
        };
        identity(&text("identity", BEACON), &text("issuer", GITHUB))
    };
    check(bundle, &sha(&artifact), root, &req)
}

/// Acceptance: every must-accept bundle of the public suite verifies (Rekor
/// v1 and v2, RFC 3161 timestamps, cosigned checkpoints, both v0.3 media
/// types), every must-reject one is refused naming the failed check.
#[test]
fn the_public_suite_bundles_verify_or_are_refused_naming_the_check() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(assets())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("bundle.sigstore.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 70, "{}", dirs.len());
    let checks = [
        "bundle",
        "trusted-root",
        "key",
        "certificate-chain",
        "sct",
        "identity",
        "digest",
        "signature",
        "tlog",
        "time",
        "unsupported",
    ];
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let bundle = std::fs::read(dir.join("bundle.sigstore.json")).unwrap();
        let result = verify_asset(&dir, &bundle, None);
        if name.ends_with("_fail") {
            let e = result.expect_err(&name);
            assert!(checks.contains(&e.check()), "{name}: {e}");
        } else {
            let v = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            if name.starts_with("rekor2-") {
                assert!(
                    v.time_sources
                        .iter()
                        .any(|s| s.starts_with("timestamp authority")),
                    "{name}: {v:?}"
                );
            }
        }
    }
}

fn asset_json(case: &str, file: &str) -> Value {
    serde_json::from_slice(&std::fs::read(assets().join(case).join(file)).unwrap()).unwrap()
}

/// Tampered variants of the new forms are refused, naming the check.
#[test]
fn tampered_rekor_v2_timestamps_and_checkpoints_are_refused() {
    let case = assets().join("rekor2-happy-path");
    let bundle = asset_json("rekor2-happy-path", "bundle.sigstore.json");
    // A timestamp over other bytes: the token of another bundle.
    let mut b = bundle.clone();
    b["verificationMaterial"]["timestampVerificationData"] = asset_json(
        "rekor2-timestamp-with-embedded-cert",
        "bundle.sigstore.json",
    )["verificationMaterial"]["timestampVerificationData"]
        .clone();
    let e = verify_asset(&case, &serde_json::to_vec(&b).unwrap(), None).unwrap_err();
    assert_eq!(e.check(), "time", "{e}");
    assert!(e.to_string().contains("stamps other bytes"), "{e}");
    // The TSA not in the trusted root.
    let mut root = asset_json("rekor2-happy-path", "trusted_root.json");
    root["timestampAuthorities"] = Value::Array(vec![]);
    let e = verify_asset(
        &case,
        &serde_json::to_vec(&bundle).unwrap(),
        Some(&serde_json::to_vec(&root).unwrap()),
    )
    .unwrap_err();
    assert_eq!(e.check(), "time", "{e}");
    assert!(e.to_string().contains("not in the trusted root"), "{e}");
    // A cosigned checkpoint with the log's own signature removed.
    let cosigned = asset_json("rekor2-checkpoint-cosigned", "bundle.sigstore.json");
    let note = cosigned["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]["envelope"]
        .as_str()
        .unwrap()
        .to_owned();
    let lines: Vec<&str> = note.lines().collect();
    let origin = lines[0];
    let kept: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with(&format!("\u{2014} {origin} ")))
        .collect();
    assert!(
        kept.len() < lines.len(),
        "the log's signature line is there to remove"
    );
    let mut b = cosigned.clone();
    b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]["envelope"] =
        Value::from(format!("{}\n", kept.join("\n")));
    let e = verify_asset(
        &assets().join("rekor2-checkpoint-cosigned"),
        &serde_json::to_vec(&b).unwrap(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.check(), "tlog", "{e}");
    assert!(e.to_string().contains("not signed by log key"), "{e}");
    // A Rekor v2 entry without any timestamp: no verified time.
    let mut b = bundle.clone();
    b["verificationMaterial"]
        .as_object_mut()
        .unwrap()
        .remove("timestampVerificationData");
    let e = verify_asset(&case, &serde_json::to_vec(&b).unwrap(), None).unwrap_err();
    assert_eq!(e.check(), "time", "{e}");
}

/// Sigstore 0.15 encodes the Fulcio root's key for the SCT check with a
/// short-form DER length, so a root that issues the leaf directly with a key
/// longer than 127 bytes (RSA) fails there (upstream: sigstore-rs,
/// `CertificateEmbeddedSCT::new_with_verified_path`, "anchor is the leaf's
/// issuer"). ferry verifies such SCTs itself (agent/sigstore/src/sct.rs),
/// then the identity and the signature; this is the suite case with such a
/// root and an SCT that carries extensions.
const UPSTREAM_SCT_GAP: &str = "bundle-with-sct-with-extensions";

#[test]
fn the_sct_workaround_accepts_the_upstream_gap_and_refuses_what_it_must() {
    let case = assets().join(UPSTREAM_SCT_GAP);
    let bundle = std::fs::read(case.join("bundle.sigstore.json")).unwrap();
    let v = verify_asset(&case, &bundle, None).unwrap();
    assert_eq!(v.kind, "certificate");
    let root = asset_json(UPSTREAM_SCT_GAP, "trusted_root.json");
    let root_json = serde_json::to_vec(&root).unwrap();
    let artifact = sha(&std::fs::read(assets().join("a.txt")).unwrap());
    let trusted = TrustedRoot::from_json(&root_json, "trusted_root.json").unwrap();

    // Another identity or issuer: refused after the SCT passed.
    for req in [
        identity("https://example.com/other", GITHUB),
        identity(BEACON, "https://accounts.example.com"),
    ] {
        refused(check(&bundle, &artifact, &trusted, &req), "identity", "");
    }
    // No CT log at all: the trusted root is refused.
    let mut no_logs = root.clone();
    no_logs["ctlogs"] = Value::Array(vec![]);
    let e = verify_asset(&case, &bundle, Some(&serde_json::to_vec(&no_logs).unwrap())).unwrap_err();
    assert_eq!(e.check(), "trusted-root", "{e}");
    // The log's key valid now but not yet at the SCT's time: refused.
    let mut expired = root.clone();
    for log in expired["ctlogs"].as_array_mut().unwrap() {
        log["publicKey"]["validFor"] = serde_json::json!({"start": "2026-06-01T00:00:00Z"});
    }
    let e = verify_asset(&case, &bundle, Some(&serde_json::to_vec(&expired).unwrap())).unwrap_err();
    assert_eq!(e.check(), "sct", "{e}");
    assert!(
        e.to_string().contains("predates its log key's validity"),
        "{e}"
    );
    // Only another instance's CT log: the SCT's log is not trusted.
    let mut other_log = root.clone();
    other_log["ctlogs"] = serde_json::from_slice::<Value>(&read("trusted_root.staging.json"))
        .unwrap()["ctlogs"]
        .clone();
    let e = verify_asset(
        &case,
        &bundle,
        Some(&serde_json::to_vec(&other_log).unwrap()),
    )
    .unwrap_err();
    assert_eq!(e.check(), "sct", "{e}");
    assert!(e.to_string().contains("not in the trusted root"), "{e}");
    // The message signature replaced: refused (its timestamp no longer
    // stamps it, and the certificate's key does not verify it).
    let mut b: Value = serde_json::from_slice(&bundle).unwrap();
    let sig = b["messageSignature"]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut raw = base64_decode(&sig);
    let last = raw.len() - 1;
    raw[last] ^= 1;
    b["messageSignature"]["signature"] = Value::from(base64_encode(&raw));
    assert!(verify_asset(&case, &serde_json::to_vec(&b).unwrap(), None).is_err());
    // Another artifact: refused before any signature is checked.
    refused(
        check(&bundle, &sha(b"other"), &trusted, &identity(BEACON, GITHUB)),
        "digest",
        "",
    );
}
