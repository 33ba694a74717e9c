//! Commit signatures: SSH signatures (`sshsig`, namespace `git`) checked
//! against an `allowed_signers` file, and OpenPGP signatures checked against
//! a keyring. The verdicts follow `git verify-commit`: an SSH key must be
//! listed for the `git` namespace and valid (`valid-after`/`valid-before`)
//! at the commit's committer time, as git passes `-Overify-time`.

use std::io::Cursor;
use std::path::Path;

use pgp::composed::{Deserializable as _, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails as _;
use ssh_key::{HashAlg, PublicKey, SshSig};

/// Signature namespace git uses for commits.
pub const GIT_NAMESPACE: &str = "git";
/// Trust files larger than this are refused.
const MAX_TRUST_FILE: u64 = 4 << 20;

/// Who signed a commit, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// `ssh:SHA256:…` or `openpgp:<40 hex>`: what the policy names.
    pub key_id: String,
    /// The allowed_signers principals of an SSH key; the user id of an
    /// OpenPGP key.
    pub who: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("not signed")]
    Unsigned,
    #[error("signature is malformed: {0}")]
    Malformed(String),
    #[error("signed by {0}, which is not a trusted key")]
    UnknownKey(String),
    #[error("signed by {key_id}, which is not valid at the commit time ({window})")]
    OutsideValidity { key_id: String, window: String },
    #[error("SSH signature namespace is {0:?}, not \"git\"")]
    WrongNamespace(String),
    #[error("signed by {0}, which allowed_signers does not allow for the \"git\" namespace")]
    NamespaceNotAllowed(String),
    #[error("signature by {0} does not match the commit (forged or altered)")]
    Bad(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct TrustError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One line of an allowed_signers file.
#[derive(Debug, Clone)]
struct AllowedSigner {
    principals: String,
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    key: PublicKey,
}

/// The keys a device trusts to sign commits.
#[derive(Debug, Default)]
pub struct Trust {
    ssh: Vec<AllowedSigner>,
    pgp: Vec<SignedPublicKey>,
}

impl Trust {
    /// The trust an `allowed_signers` text and keyring bytes describe
    /// (what `load` reads from files); errors as `(line, message)`.
    pub fn parse(
        allowed_signers: Option<&str>,
        keyring: Option<&[u8]>,
    ) -> Result<Trust, (usize, String)> {
        let mut trust = Trust::default();
        if let Some(text) = allowed_signers {
            trust.ssh = parse_allowed_signers(text)?;
        }
        if let Some(bytes) = keyring {
            trust.pgp = parse_keyring(bytes).map_err(|m| (0, m))?;
        }
        Ok(trust)
    }

    /// Reads `allowed_signers` and `keyring.asc` (or `keyring.gpg`) from
    /// `dir`; either may be missing, not both.
    pub fn load(dir: &Path) -> Result<Trust, TrustError> {
        let mut trust = Trust::default();
        let signers = dir.join("allowed_signers");
        if let Some(text) = read_bounded(&signers)? {
            let text = String::from_utf8(text).map_err(|_| TrustError {
                file: signers.display().to_string(),
                line: 0,
                message: "not UTF-8".into(),
            })?;
            trust.ssh = parse_allowed_signers(&text).map_err(|(line, message)| TrustError {
                file: signers.display().to_string(),
                line,
                message,
            })?;
        }
        for name in ["keyring.asc", "keyring.gpg"] {
            let path = dir.join(name);
            if let Some(bytes) = read_bounded(&path)? {
                trust
                    .pgp
                    .extend(parse_keyring(&bytes).map_err(|message| TrustError {
                        file: path.display().to_string(),
                        line: 0,
                        message,
                    })?);
            }
        }
        if trust.ssh.is_empty() && trust.pgp.is_empty() {
            return Err(TrustError {
                file: dir.display().to_string(),
                line: 0,
                message: "no trusted keys (allowed_signers, keyring.asc or keyring.gpg)".into(),
            });
        }
        Ok(trust)
    }

    pub fn is_empty(&self) -> bool {
        self.ssh.is_empty() && self.pgp.is_empty()
    }

    /// Verifies `signature` (the commit's `gpgsig` header) over `data`
    /// (the commit without it), at `commit_time` (committer time, Unix s).
    pub fn verify(
        &self,
        signature: &[u8],
        data: &[u8],
        commit_time: i64,
    ) -> Result<Signer, SigError> {
        let text =
            std::str::from_utf8(signature).map_err(|_| SigError::Malformed("not text".into()))?;
        if text.contains("-----BEGIN SSH SIGNATURE-----") {
            self.verify_ssh(text, data, commit_time)
        } else if text.contains("-----BEGIN PGP SIGNATURE-----") {
            self.verify_pgp(text, data, commit_time)
        } else {
            Err(SigError::Malformed(
                "neither an SSH nor an OpenPGP signature".into(),
            ))
        }
    }

    fn verify_ssh(&self, text: &str, data: &[u8], at: i64) -> Result<Signer, SigError> {
        let sig = SshSig::from_pem(text.trim()).map_err(|e| SigError::Malformed(e.to_string()))?;
        let key_id = format!(
            "ssh:{}",
            PublicKey::from(sig.public_key().clone()).fingerprint(HashAlg::Sha256)
        );
        if sig.namespace() != GIT_NAMESPACE {
            return Err(SigError::WrongNamespace(sig.namespace().to_owned()));
        }
        let listed: Vec<&AllowedSigner> = self
            .ssh
            .iter()
            .filter(|s| s.key.key_data() == sig.public_key())
            .collect();
        if listed.is_empty() {
            return Err(SigError::UnknownKey(key_id));
        }
        let for_git: Vec<&&AllowedSigner> = listed
            .iter()
            .filter(|s| {
                s.namespaces
                    .as_ref()
                    .is_none_or(|ns| ns.iter().any(|n| n == GIT_NAMESPACE))
            })
            .collect();
        if for_git.is_empty() {
            return Err(SigError::NamespaceNotAllowed(key_id));
        }
        let valid = for_git.iter().find(|s| {
            s.valid_after.is_none_or(|t| at >= t) && s.valid_before.is_none_or(|t| at <= t)
        });
        let Some(signer) = valid else {
            let s = for_git[0];
            let window = match (s.valid_after, s.valid_before) {
                (Some(a), Some(b)) => format!("valid {} to {}", ts(a), ts(b)),
                (Some(a), None) => format!("valid after {}", ts(a)),
                (None, Some(b)) => format!("valid before {}", ts(b)),
                (None, None) => String::new(),
            };
            return Err(SigError::OutsideValidity { key_id, window });
        };
        signer
            .key
            .verify(GIT_NAMESPACE, data, &sig)
            .map_err(|_| SigError::Bad(key_id.clone()))?;
        Ok(Signer {
            key_id,
            who: signer.principals.clone(),
        })
    }

    fn verify_pgp(&self, text: &str, data: &[u8], at: i64) -> Result<Signer, SigError> {
        let (sig, _) = DetachedSignature::from_armor_single(Cursor::new(text.as_bytes()))
            .map_err(|e| SigError::Malformed(e.to_string()))?;
        let fingerprints: Vec<Vec<u8>> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .collect();
        let key_ids: Vec<Vec<u8>> = sig
            .signature
            .issuer_key_id()
            .iter()
            .map(|k| k.as_ref().to_vec())
            .collect();
        let named = |fp: &[u8], kid: &[u8]| {
            fingerprints.iter().any(|f| f == fp) || key_ids.iter().any(|k| k == kid)
        };
        let issuer = fingerprints
            .first()
            .map(hex::encode_upper)
            .or_else(|| key_ids.first().map(hex::encode_upper))
            .unwrap_or_else(|| "an unnamed key".into());
        for key in &self.pgp {
            let primary = key.fingerprint();
            let who = key
                .details
                .users
                .first()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .unwrap_or_default();
            let key_id = format!("openpgp:{}", hex::encode_upper(primary.as_bytes()));
            let primary_window = pgp_window(
                key.primary_key.created_at().as_secs(),
                key.details
                    .users
                    .iter()
                    .flat_map(|u| u.signatures.iter())
                    .chain(&key.details.direct_signatures),
                &key.details.revocation_signatures,
            );
            if named(primary.as_bytes(), key.legacy_key_id().as_ref()) {
                primary_window.check(&key_id, at)?;
                return sig
                    .verify(&key.primary_key, data)
                    .map(|()| Signer {
                        key_id: key_id.clone(),
                        who,
                    })
                    .map_err(|_| SigError::Bad(key_id));
            }
            for sub in &key.public_subkeys {
                if named(
                    sub.key.fingerprint().as_bytes(),
                    sub.key.legacy_key_id().as_ref(),
                ) {
                    // A subkey is valid while it and its primary key are.
                    primary_window.check(&key_id, at)?;
                    let revocations: Vec<_> = sub
                        .signatures
                        .iter()
                        .filter(|s| s.typ() == Some(pgp::packet::SignatureType::SubkeyRevocation))
                        .cloned()
                        .collect();
                    pgp_window(
                        sub.key.created_at().as_secs(),
                        sub.signatures
                            .iter()
                            .filter(|s| s.typ() == Some(pgp::packet::SignatureType::SubkeyBinding)),
                        &revocations,
                    )
                    .check(&key_id, at)?;
                    return sig
                        .verify(&sub.key, data)
                        .map(|()| Signer {
                            key_id: key_id.clone(),
                            who,
                        })
                        .map_err(|_| SigError::Bad(key_id));
                }
            }
        }
        Err(SigError::UnknownKey(format!("openpgp:{issuer}")))
    }
}

/// When an OpenPGP key (or subkey) may sign: from its creation to its
/// expiry (the newest self-signature's key expiration time) and not after
/// a revocation. Judged at the time the caller gives (the later of the
/// committer time and the device's secure time floor), like SSH's
/// `valid-before`.
#[derive(Debug, Clone, Copy)]
struct PgpWindow {
    created: i64,
    expires: Option<i64>,
    revoked: Option<i64>,
}

fn pgp_window<'a>(
    created: u32,
    self_sigs: impl Iterator<Item = &'a pgp::packet::Signature>,
    revocations: &[pgp::packet::Signature],
) -> PgpWindow {
    let created = i64::from(created);
    let newest = self_sigs.max_by_key(|s| s.created().map_or(0, |t| t.as_secs()));
    let expires = newest
        .and_then(|s| s.key_expiration_time())
        .map(|d| i64::from(d.as_secs()))
        .filter(|&d| d > 0)
        .map(|d| created + d);
    let revoked = revocations
        .iter()
        .map(|s| s.created().map_or(0, |t| i64::from(t.as_secs())))
        .min();
    PgpWindow {
        created,
        expires,
        revoked,
    }
}

impl PgpWindow {
    fn check(&self, key_id: &str, at: i64) -> Result<(), SigError> {
        let outside = |window: String| SigError::OutsideValidity {
            key_id: key_id.to_owned(),
            window,
        };
        if at < self.created {
            return Err(outside(format!("created {}", ts(self.created))));
        }
        if let Some(r) = self.revoked
            && at >= r
        {
            return Err(outside(format!("revoked {}", ts(r))));
        }
        if let Some(e) = self.expires
            && at >= e
        {
            return Err(outside(format!("expired {}", ts(e))));
        }
        Ok(())
    }
}

fn ts(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, TrustError> {
    use std::io::Read as _;
    let err = |message: String| TrustError {
        file: path.display().to_string(),
        line: 0,
        message,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut buf = Vec::new();
    f.take(MAX_TRUST_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_TRUST_FILE {
        return Err(err(format!("larger than {MAX_TRUST_FILE} bytes")));
    }
    Ok(Some(buf))
}

/// The next field of an allowed_signers line: up to whitespace outside
/// double quotes.
fn field(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], &s[i..]),
            _ => {}
        }
    }
    (s, "")
}

/// ssh-keygen(1) ALLOWED SIGNERS: `principals [options] keytype base64 [comment]`.
/// Errors are (line, message).
/// OpenPGP public keys (armored or binary) whose self-signatures verify.
fn parse_keyring(bytes: &[u8]) -> Result<Vec<SignedPublicKey>, String> {
    let keys: Vec<_> = if bytes.starts_with(b"-----BEGIN") {
        let (iter, _) =
            SignedPublicKey::from_armor_many(Cursor::new(bytes)).map_err(|e| e.to_string())?;
        iter.collect::<Result<_, _>>().map_err(|e| e.to_string())?
    } else {
        SignedPublicKey::from_bytes_many(Cursor::new(bytes))
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    };
    for k in &keys {
        k.verify_bindings().map_err(|e| {
            format!(
                "key {}: self-signatures do not verify: {e}",
                hex::encode_upper(k.fingerprint().as_bytes())
            )
        })?;
    }
    Ok(keys)
}

fn parse_allowed_signers(text: &str) -> Result<Vec<AllowedSigner>, (usize, String)> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (principals, rest) = field(l);
        let principals = principals.trim_matches('"').to_owned();
        let (next, after) = field(rest);
        let (options, key_text) = if is_key_type(next) {
            ("", rest.trim())
        } else {
            (next, after.trim())
        };
        let key =
            PublicKey::from_openssh(key_text).map_err(|e| (line, format!("public key: {e}")))?;
        let mut signer = AllowedSigner {
            principals,
            namespaces: None,
            valid_after: None,
            valid_before: None,
            key,
        };
        let mut cert_authority = false;
        for opt in split_options(options) {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(v.trim_matches('"'))),
                None => (opt.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("namespaces", Some(v)) => {
                    signer.namespaces = Some(v.split(',').map(|s| s.trim().to_owned()).collect())
                }
                ("valid-after", Some(v)) => {
                    signer.valid_after =
                        Some(parse_time(v).map_err(|m| (line, format!("valid-after: {m}")))?)
                }
                ("valid-before", Some(v)) => {
                    signer.valid_before =
                        Some(parse_time(v).map_err(|m| (line, format!("valid-before: {m}")))?)
                }
                ("cert-authority", None) => cert_authority = true,
                _ => return Err((line, format!("unknown option {opt:?}"))),
            }
        }
        // Certificate authorities sign certificates, not commits; ferry
        // trusts plain keys only (a certificate-signed commit is "unknown").
        if !cert_authority {
            out.push(signer);
        }
    }
    Ok(out)
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

fn split_options(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]`; without `Z` in local time, as
/// ssh-keygen reads it.
fn parse_time(v: &str) -> Result<i64, String> {
    let (digits, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (v, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not YYYYMMDD[HHMM[SS]][Z]"));
    }
    let num = |r: std::ops::Range<usize>| -> i64 { digits[r].parse().unwrap_or(0) };
    let (h, m, s) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10), num(10..12), 0),
        14 => (num(8..10), num(10..12), num(12..14)),
        _ => return Err(format!("{v:?} is not YYYYMMDD[HHMM[SS]][Z]")),
    };
    let dt = jiff::civil::DateTime::new(
        num(0..4) as i16,
        num(4..6) as i8,
        num(6..8) as i8,
        h as i8,
        m as i8,
        s as i8,
        0,
    )
    .map_err(|e| format!("{v:?}: {e}"))?;
    let tz = if utc {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::system()
    };
    dt.to_zoned(tz)
        .map(|z| z.timestamp().as_second())
        .map_err(|e| format!("{v:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGwJJqTN/vLibnCP8UUcR6Yjq58lRbJg5kvG6eEK0Ani admin@example";

    #[test]
    fn allowed_signers_lines_parse_with_options_and_report_line_numbers() {
        let text = format!(
            "# comment\n\nadmin@example {KEY}\n\"a@x,b@y\" namespaces=\"git,file\",valid-after=\"20240101\",valid-before=\"20300101Z\" {KEY}\nca@x cert-authority {KEY}\n"
        );
        let s = parse_allowed_signers(&text).expect("parse");
        assert_eq!(s.len(), 2, "cert-authority lines are not signing keys");
        assert_eq!(s[0].principals, "admin@example");
        assert!(s[0].namespaces.is_none());
        assert_eq!(s[1].principals, "a@x,b@y");
        assert_eq!(
            s[1].namespaces.as_deref(),
            Some(&["git".to_owned(), "file".to_owned()][..])
        );
        assert_eq!(s[1].valid_before, Some(1_893_456_000));
        let e = parse_allowed_signers(&format!("x {KEY}\ny bogus=1 {KEY}\n")).expect_err("bad");
        assert_eq!(e.0, 2);
        assert!(e.1.contains("unknown option"), "{e:?}");
        let e = parse_allowed_signers("x ssh-ed25519 AAAAnotbase64\n").expect_err("bad key");
        assert_eq!(e.0, 1);
        assert!(parse_time("2024").is_err());
        assert_eq!(parse_time("19700102Z"), Ok(86_400));
        assert_eq!(parse_time("197001020001Z"), Ok(86_460));
    }
}
