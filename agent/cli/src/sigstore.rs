//! `ferry sigstore verify-bundle`: verify a Sigstore bundle offline.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use ferry_sigstore::{
    IdentityMatch, IdentityPolicy, Requirement, SigstoreError, TrustedRoot, verify_with,
};
use sha2::{Digest, Sha256};

use crate::cli::SigstoreAction;
use crate::exit::Code;

pub fn run(action: SigstoreAction) -> Result<Code> {
    let SigstoreAction::VerifyBundle {
        bundle,
        certificate_identity,
        certificate_identity_regexp,
        certificate_oidc_issuer,
        key,
        trusted_root,
        verified_times,
        artifact,
        out,
    } = action;
    let fail = |e: SigstoreError| -> Result<Code> {
        let code = match &e {
            SigstoreError::TrustedRoot { .. } | SigstoreError::Key { .. } => Code::Config,
            _ => Code::Verification,
        };
        if out.json {
            let v =
                serde_json::json!({"verified": false, "check": e.check(), "error": e.to_string()});
            println!("{v}");
        }
        eprintln!("ferry: refused: {e}");
        Ok(code)
    };
    let requirement = match (key, certificate_identity, certificate_identity_regexp) {
        (Some(key), _, _) => match Requirement::key_file(&key) {
            Ok(r) => r,
            Err(e) => return fail(e),
        },
        (None, exact, regex) => {
            let identity = match (exact, regex) {
                (Some(i), _) => IdentityMatch::Exact(i),
                (None, Some(r)) => IdentityMatch::regex(&r)
                    .with_context(|| format!("--certificate-identity-regexp {r:?}"))?,
                (None, None) => unreachable!("clap requires an identity or a key"),
            };
            Requirement::Identity(IdentityPolicy {
                identity,
                issuer: certificate_oidc_issuer.unwrap_or_default(),
                claims: vec![],
            })
        }
    };
    let loaded;
    let root = match &trusted_root {
        Some(path) => match TrustedRoot::load(path) {
            Ok(r) => {
                loaded = r;
                &loaded
            }
            Err(e) => return fail(e),
        },
        None => TrustedRoot::production(),
    };
    let digest = match artifact_digest(&artifact) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            return Ok(Code::InvalidInput);
        }
    };
    let bytes = match read_bounded(&bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            return Ok(Code::InvalidInput);
        }
    };
    let name = bundle.display().to_string();
    match verify_with(
        &bytes,
        &name,
        &digest,
        root,
        &requirement,
        verified_times as usize,
    ) {
        Ok(v) => {
            if out.json {
                let mut j = serde_json::to_value(&v)?;
                j["verified"] = true.into();
                j["digest"] = format!("sha256:{}", hex::encode(digest)).into();
                println!("{j}");
            } else {
                let how = match &v.issuer {
                    Some(i) => format!("{} ({i})", v.signer),
                    None => format!("key {}", v.signer),
                };
                println!(
                    "verified: sha256:{} signed by {how}, {} entry {}",
                    hex::encode(digest),
                    v.log,
                    v.log_index
                );
            }
            Ok(Code::Success)
        }
        Err(e) => fail(e),
    }
}

/// `sha256:<hex>` as given, or the SHA-256 of the file, streamed.
fn artifact_digest(artifact: &str) -> Result<[u8; 32]> {
    if let Some(hex) = artifact.strip_prefix("sha256:") {
        let bytes = hex::decode(hex)
            .ok()
            .filter(|b| b.len() == 32 && hex.len() == 64)
            .with_context(|| format!("{artifact}: not sha256: and 64 hex digits"))?;
        return Ok(bytes.try_into().expect("32 bytes"));
    }
    let mut file =
        std::fs::File::open(artifact).with_context(|| format!("opening artifact {artifact}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading artifact {artifact}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    ferry_sigstore::read_bounded(path)
        .map_err(|e| anyhow::anyhow!("bundle {}: {e}", path.display()))
}
