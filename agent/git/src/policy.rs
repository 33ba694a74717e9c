//! The signers policy: which trusted keys may change which paths. Kept in
//! the repository (`ferry/signers.toml` by default; a commit is checked
//! against the policy of its first parent, so changing the policy itself
//! takes a signer the previous policy allowed to change that file) and,
//! optionally, on the device (`source.git.device_policy`, baked into the
//! image): a change must be allowed by both, so the repository can narrow
//! what the device allows but never widen it.

use serde::Deserialize;

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(rename = "signer", default)]
    pub signers: Vec<SignerRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerRule {
    pub name: String,
    /// Key ids: `SHA256:…` (SSH, as `ssh-keygen -l` prints) or a 40-hex
    /// OpenPGP fingerprint.
    #[serde(default)]
    pub keys: Vec<String>,
    /// SSH signers named by their principal in `allowed_signers` (the
    /// first field, e.g. `admin@example.com`), whatever their key.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Path patterns in the repository: `*` within a name, `**` across
    /// directories, `?` one character.
    pub paths: Vec<String>,
}

/// A signers policy that cannot be used; the caller names the file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML of the policy's shape (the message names the line).
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    #[error("signer[{index}] ({name}): needs keys or principals, and paths")]
    Incomplete { index: usize, name: String },
    #[error(
        "signer[{index}] ({name}): {key:?} is neither SHA256:… (SSH) nor a 40-hex OpenPGP fingerprint"
    )]
    BadKey {
        index: usize,
        name: String,
        key: String,
    },
}

impl Policy {
    /// Parses the policy; errors name the line.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let p: Policy = toml::from_str(text)?;
        for (index, s) in p.signers.iter().enumerate() {
            if (s.keys.is_empty() && s.principals.is_empty()) || s.paths.is_empty() {
                return Err(PolicyError::Incomplete {
                    index,
                    name: s.name.clone(),
                });
            }
            for k in &s.keys {
                if normalise_key(k).is_none() {
                    return Err(PolicyError::BadKey {
                        index,
                        name: s.name.clone(),
                        key: k.clone(),
                    });
                }
            }
        }
        Ok(p)
    }

    /// The rules naming `signer`: by key id (as
    /// [`super::sig::Signer::key_id`]) or, for SSH keys, by one of its
    /// `allowed_signers` principals.
    pub fn rules_for(&self, signer: &super::sig::Signer) -> Vec<&SignerRule> {
        let principals: Vec<&str> = if signer.key_id.starts_with("ssh:") {
            signer.who.split(',').map(str::trim).collect()
        } else {
            Vec::new()
        };
        self.signers
            .iter()
            .filter(|s| {
                s.keys
                    .iter()
                    .any(|k| normalise_key(k).as_deref() == Some(signer.key_id.as_str()))
                    || s.principals
                        .iter()
                        .any(|p| principals.contains(&p.as_str()))
            })
            .collect()
    }

    /// The first of `paths` that `signer` may not change, if any.
    pub fn first_forbidden<'p>(
        &self,
        signer: &super::sig::Signer,
        paths: &'p [String],
    ) -> Option<&'p String> {
        let rules = self.rules_for(signer);
        paths.iter().find(|p| {
            !rules
                .iter()
                .any(|r| r.paths.iter().any(|pat| glob_match(pat, p)))
        })
    }
}

/// `SHA256:x` → `ssh:SHA256:x`; 40 hex → `openpgp:<UPPER>`.
fn normalise_key(k: &str) -> Option<String> {
    let k = k.trim();
    if let Some(rest) = k.strip_prefix("SHA256:") {
        return (!rest.is_empty()).then(|| format!("ssh:SHA256:{rest}"));
    }
    let hex: String = k.chars().filter(|c| !c.is_whitespace()).collect();
    (hex.len() == 40 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("openpgp:{}", hex.to_ascii_uppercase()))
}

/// Glob over `/`-separated paths ([`ferry_core::glob::scope`]): `**`
/// matches any number of whole segments, `*` any characters but `/`, `?`
/// one character but `/`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    ferry_core::glob::scope(pattern, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, s, want) in [
            ("sites/plant-7/**", "sites/plant-7/a.conf", true),
            ("sites/plant-7/**", "sites/plant-7/x/y/z", true),
            ("sites/plant-7/**", "sites/plant-8/a.conf", false),
            ("sites/plant-7/**", "sites/plant-7", true),
            ("**", "anything/at/all", true),
            ("ferry/signers.toml", "ferry/signers.toml", true),
            ("ferry/*.toml", "ferry/x/signers.toml", false),
            ("sites/*/rules/*.rules", "sites/p1/rules/a.rules", true),
            ("file-?.txt", "file-1.txt", true),
            ("file-?.txt", "file-10.txt", false),
            ("**/**/x/**", "a/b/x", true),
            ("a/**/b/**/c", "a/1/b/2/3/c", true),
            ("a/**/b/**/c", "a/1/2/3/c", false),
        ] {
            assert_eq!(glob_match(p, s), want, "{p} vs {s}");
        }
        // Regression: exponential backtracking on patterns like these.
        let long = "a".repeat(5_000);
        assert!(!glob_match("*a*a*a*a*a*a*a*a*a*a*b", &long));
        let deep = vec!["a"; 2_000].join("/");
        assert!(!glob_match("**/a/**/a/**/a/**/a/**/a/**/b", &deep));
    }

    #[test]
    fn the_example_policy_parses_and_matches_its_schema() {
        let text = include_str!("../../../policies/git-signers.toml");
        let p = Policy::parse(text).expect("example");
        assert_eq!(p.signers.len(), 2);
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../schemas/git-signers.schema.json"))
                .expect("schema");
        let doc =
            serde_json::to_value(toml::from_str::<toml::Value>(text).expect("toml")).expect("json");
        let v = jsonschema::validator_for(&schema).expect("validator");
        assert!(v.is_valid(&doc));
        assert!(!v.is_valid(
            &serde_json::json!({"signer": [{"name": "x", "keys": ["nope"], "paths": ["**"]}]})
        ));
    }

    #[test]
    fn policy_parses_and_scopes_keys() {
        let p = Policy::parse(
            r#"
[[signer]]
name = "fleet-admins"
keys = ["SHA256:abc", "0123456789abcdef0123456789abcdef01234567"]
paths = ["**"]

[[signer]]
name = "site-7"
keys = ["SHA256:site7"]
paths = ["sites/plant-7/**"]
"#,
        )
        .expect("policy");
        let paths = vec!["sites/plant-7/a".to_owned(), "ferry.yaml".to_owned()];
        let signer = |key_id: &str, who: &str| crate::sig::Signer {
            key_id: key_id.to_owned(),
            who: who.to_owned(),
        };
        assert_eq!(
            p.first_forbidden(&signer("ssh:SHA256:abc", ""), &paths),
            None
        );
        assert_eq!(
            p.first_forbidden(
                &signer("openpgp:0123456789ABCDEF0123456789ABCDEF01234567", ""),
                &paths
            ),
            None
        );
        assert_eq!(
            p.first_forbidden(&signer("ssh:SHA256:site7", ""), &paths),
            Some(&"ferry.yaml".to_owned())
        );
        assert_eq!(
            p.first_forbidden(&signer("ssh:SHA256:unknown", ""), &paths[..1]),
            Some(&"sites/plant-7/a".to_owned())
        );
        // By allowed_signers principal, for SSH keys only.
        let by_name = Policy::parse(
            "[[signer]]\nname = \"ops\"\nprincipals = [\"ops@example.com\"]\npaths = [\"sites/**\"]\n",
        )
        .expect("principals");
        let ops = signer("ssh:SHA256:any", "admin@example.com,ops@example.com");
        assert_eq!(by_name.first_forbidden(&ops, &paths[..1]), None);
        assert_eq!(
            by_name.first_forbidden(&ops, &paths),
            Some(&"ferry.yaml".to_owned())
        );
        let pgp = signer(
            "openpgp:0123456789ABCDEF0123456789ABCDEF01234567",
            "ops@example.com",
        );
        assert!(by_name.first_forbidden(&pgp, &paths[..1]).is_some());
        let e = Policy::parse("[[signer]]\nname = \"x\"\nkeys = [\"nope\"]\npaths = [\"**\"]\n")
            .expect_err("bad key");
        assert!(matches!(&e, PolicyError::BadKey { index: 0, key, .. } if key == "nope"));
        assert!(e.to_string().contains("neither SHA256"), "{e}");
        let e = Policy::parse("[[signer]]\nname = \"x\"\nbogus = 1\n").expect_err("unknown");
        assert!(matches!(e, PolicyError::Syntax(_)));
        let e = e.to_string();
        assert!(e.contains("line 3") || e.contains("bogus"), "{e}");
    }
}
