//! TUF metadata: parsing and signature verification over the exact bytes
//! received.
//!
//! Why not `tough::Repository`: the TUF specification (§5, "Detailed client
//! workflow") asks for things tough 0.24 does not do — it re-serialises
//! metadata into its cache instead of keeping the signed bytes, loads every
//! delegated role eagerly (§5.6.7 walks delegations on demand, per target),
//! builds wrong consistent-snapshot target URLs for targets in
//! subdirectories (§5.7.3: `dirname/HASH.basename`), requires sha256 among
//! target hashes (§4.4 allows any), and mishandles a delegated role missing
//! from snapshot (§5.6.1 must refuse it). So ferry keeps the workflow and the
//! trusted-metadata bookkeeping here, and uses tough for what it does well:
//! the key types and the signature algorithms (`tough::schema::key::Key`).
//!
//! Signatures are checked over the canonical JSON (OLPC) of the `signed`
//! value as parsed from the received bytes, so fields ferry does not know are
//! covered too.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use tough::schema::key::Key;

/// A problem with one piece of metadata. The client wraps it with the role
/// and version it was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// A metadata file as received: its `signed` part and its signatures.
#[derive(Debug)]
pub struct Envelope {
    pub signed: Value,
    /// keyid → signature (hex). Duplicate key ids make the file invalid.
    pub signatures: HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    signed: Value,
    signatures: Vec<RawSignature>,
}

#[derive(Deserialize)]
struct RawSignature {
    keyid: String,
    sig: String,
}

impl Envelope {
    pub fn parse(bytes: &[u8]) -> Result<Self, Invalid> {
        let raw: RawEnvelope =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not TUF metadata: {e}")))?;
        let mut signatures = HashMap::with_capacity(raw.signatures.len());
        for s in raw.signatures {
            if signatures.insert(s.keyid.clone(), s.sig).is_some() {
                return Err(invalid(format!("two signatures by key {}", s.keyid)));
            }
        }
        Ok(Envelope {
            signed: raw.signed,
            signatures,
        })
    }

    /// The `_type` of the signed part.
    pub fn role_type(&self) -> Option<&str> {
        self.signed.get("_type").and_then(Value::as_str)
    }

    /// Parses the signed part as `T`, checking `_type` and `spec_version`.
    pub fn decode<T: for<'de> Deserialize<'de>>(&self, expected_type: &str) -> Result<T, Invalid> {
        match self.role_type() {
            Some(t) if t == expected_type => {}
            Some(t) => return Err(invalid(format!("is a {t} role, expected {expected_type}"))),
            None => return Err(invalid("has no _type")),
        }
        let spec = self
            .signed
            .get("spec_version")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("has no spec_version"))?;
        // §4.2: clients support metadata of the same major spec version.
        let major = spec.split('.').next().unwrap_or("");
        if major != "1" || spec.split('.').count() < 2 {
            return Err(invalid(format!("unsupported spec_version {spec:?}")));
        }
        T::deserialize(&self.signed).map_err(|e| invalid(format!("malformed: {e}")))
    }

    /// Counts the valid signatures of `role` keys over the canonical form of
    /// `signed` and refuses when fewer than the role's threshold verify.
    pub fn verify(&self, keys: &KeyRing, role: &RoleKeys) -> Result<Vec<String>, Invalid> {
        let mut good = Vec::new();
        for keyid in &role.keyids {
            let (Some(Some(key)), Some(sig)) = (keys.0.get(keyid), self.signatures.get(keyid))
            else {
                continue;
            };
            if signature_verifies(&self.signed, keyid, key, sig) {
                good.push(keyid.clone());
            }
        }
        if (good.len() as u64) < role.threshold {
            return Err(invalid(format!(
                "signature threshold not met: {} of {} required valid signatures",
                good.len(),
                role.threshold
            )));
        }
        Ok(good)
    }
}

/// The signed part as parsed, for tough's verifier: it serialises exactly
/// the value received (unknown fields included) in canonical form.
#[derive(serde::Serialize)]
#[serde(transparent)]
struct SignedValue<'a>(&'a Value);

impl tough::schema::Role for SignedValue<'_> {
    // The verifier below builds a one-role root for this type; which
    // top-level type is used does not matter.
    const TYPE: tough::schema::RoleType = tough::schema::RoleType::Root;
    fn expires(&self) -> jiff::Timestamp {
        jiff::Timestamp::UNIX_EPOCH
    }
    fn version(&self) -> std::num::NonZeroU64 {
        std::num::NonZeroU64::MIN
    }
    fn filename(&self, _: bool) -> String {
        String::new()
    }
}

/// Whether `sig` is `key`'s valid signature over the canonical form of
/// `signed`. tough keeps single-key verification private, so this asks its
/// public threshold check about a root holding just this key, threshold 1.
fn signature_verifies(signed: &Value, keyid: &str, key: &Key, sig: &str) -> bool {
    use tough::schema::decoded::{Decoded, Hex};
    let (Ok(id), Ok(sig)) = (keyid.parse::<Decoded<Hex>>(), sig.parse::<Decoded<Hex>>()) else {
        return false;
    };
    let root = tough::schema::Root {
        spec_version: "1.0.0".to_owned(),
        consistent_snapshot: false,
        version: std::num::NonZeroU64::MIN,
        expires: jiff::Timestamp::UNIX_EPOCH,
        keys: HashMap::from([(id.clone(), key.clone())]),
        roles: HashMap::from([(
            tough::schema::RoleType::Root,
            tough::schema::RoleKeys {
                keyids: vec![id.clone()],
                threshold: std::num::NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        )]),
        _extra: HashMap::new(),
    };
    let doc = tough::schema::Signed {
        signed: SignedValue(signed),
        signatures: vec![tough::schema::Signature { keyid: id, sig }],
    };
    root.verify_role(&doc).is_ok()
}

/// Public keys by key id. Keys of a type ferry cannot use are kept as `None`:
/// they never count towards a threshold, but do not make the file invalid.
#[derive(Debug, Default, Clone)]
pub struct KeyRing(pub HashMap<String, Option<Key>>);

impl<'de> Deserialize<'de> for KeyRing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: HashMap<String, Value> = HashMap::deserialize(d)?;
        let mut keys = HashMap::with_capacity(raw.len());
        for (id, v) in raw {
            if !v.is_object()
                || !v.get("keytype").is_some_and(Value::is_string)
                || !v.get("scheme").is_some_and(Value::is_string)
                || !v.get("keyval").is_some_and(Value::is_object)
            {
                return Err(de::Error::custom(format!(
                    "key {id}: needs keytype, scheme and keyval"
                )));
            }
            keys.insert(id, serde_json::from_value::<Key>(v).ok());
        }
        Ok(KeyRing(keys))
    }
}

/// The keys and threshold of a role.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleKeys {
    #[serde(deserialize_with = "unique_strings")]
    pub keyids: Vec<String>,
    #[serde(deserialize_with = "positive")]
    pub threshold: u64,
}

impl RoleKeys {
    fn same_keys(&self, other: &RoleKeys) -> bool {
        let a: HashSet<&String> = self.keyids.iter().collect();
        let b: HashSet<&String> = other.keyids.iter().collect();
        a == b && self.threshold == other.threshold
    }
}

fn unique_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v: Vec<String> = Vec::deserialize(d)?;
    let mut seen = HashSet::new();
    for s in &v {
        if !seen.insert(s) {
            return Err(de::Error::custom(format!("key id {s} listed twice")));
        }
    }
    Ok(v)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(v)
}

/// An RFC 3339 UTC time (`2030-01-01T00:00:00Z`) as Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expires(pub i64);

impl<'de> Deserialize<'de> for Expires {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.ends_with('Z') {
            return Err(de::Error::custom(format!("expires {s:?} is not UTC (…Z)")));
        }
        let t: jiff::Timestamp = s
            .parse()
            .map_err(|e| de::Error::custom(format!("expires {s:?}: {e}")))?;
        Ok(Expires(t.as_second()))
    }
}

impl fmt::Display for Expires {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_second(self.0) {
            Ok(t) => write!(f, "{t}"),
            Err(_) => write!(f, "{}s", self.0),
        }
    }
}

impl Expires {
    /// §5.3.10 and friends: metadata is expired when `now >= expires`.
    pub fn is_expired(self, now: i64) -> bool {
        now >= self.0
    }
}

/// Hash algorithm → hex digest, in the order the file lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hashes(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Hashes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Hashes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of hash algorithm to hex digest")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Hashes, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.iter().any(|(a, _)| *a == k) {
                        return Err(de::Error::custom(format!("hash {k} listed twice")));
                    }
                    out.push((k, v));
                }
                Ok(Hashes(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Hashes {
    pub fn get(&self, algorithm: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(a, _)| a == algorithm)
            .map(|(_, h)| h.as_str())
    }
}

/// `META` entries of timestamp and snapshot (§4.4, §4.5).
#[derive(Debug, Clone, Deserialize)]
pub struct MetaFile {
    #[serde(deserialize_with = "positive")]
    pub version: u64,
    #[serde(default)]
    pub length: Option<u64>,
    #[serde(default)]
    pub hashes: Option<Hashes>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Root {
    #[serde(deserialize_with = "positive")]
    pub version: u64,
    pub expires: Expires,
    pub consistent_snapshot: bool,
    pub keys: KeyRing,
    pub roles: HashMap<String, RoleKeys>,
}

pub const TOP_LEVEL: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

impl Root {
    pub fn parse(env: &Envelope) -> Result<Root, Invalid> {
        let root: Root = env.decode("root")?;
        for r in TOP_LEVEL {
            if !root.roles.contains_key(r) {
                return Err(invalid(format!("names no keys for the {r} role")));
            }
        }
        if let Some(extra) = root.roles.keys().find(|r| !TOP_LEVEL.contains(&r.as_str())) {
            return Err(invalid(format!(
                "names an unknown top-level role {extra:?}"
            )));
        }
        Ok(root)
    }

    pub fn role(&self, name: &str) -> &RoleKeys {
        // Presence of all four is checked in `parse`.
        &self.roles[name]
    }

    /// Whether `role`'s keys or threshold differ in `other` (§5.3.11).
    pub fn role_changed(&self, other: &Root, role: &str) -> bool {
        !self.role(role).same_keys(other.role(role))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Timestamp {
    #[serde(deserialize_with = "positive")]
    pub version: u64,
    pub expires: Expires,
    pub meta: HashMap<String, MetaFile>,
}

impl Timestamp {
    pub fn parse(env: &Envelope) -> Result<Timestamp, Invalid> {
        let t: Timestamp = env.decode("timestamp")?;
        if t.meta.len() != 1 || !t.meta.contains_key("snapshot.json") {
            return Err(invalid("meta must list exactly snapshot.json"));
        }
        Ok(t)
    }

    pub fn snapshot(&self) -> &MetaFile {
        &self.meta["snapshot.json"]
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    #[serde(deserialize_with = "positive")]
    pub version: u64,
    pub expires: Expires,
    pub meta: HashMap<String, MetaFile>,
}

impl Snapshot {
    pub fn parse(env: &Envelope) -> Result<Snapshot, Invalid> {
        env.decode("snapshot")
    }
}

/// A target file's description (§4.5 TARGETS).
#[derive(Debug, Clone, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: Hashes,
    #[serde(default)]
    pub custom: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Targets {
    #[serde(deserialize_with = "positive")]
    pub version: u64,
    pub expires: Expires,
    pub targets: HashMap<String, TargetFile>,
    #[serde(default)]
    pub delegations: Option<Delegations>,
}

impl Targets {
    pub fn parse(env: &Envelope) -> Result<Targets, Invalid> {
        let t: Targets = env.decode("targets")?;
        if let Some(d) = &t.delegations {
            d.check()?;
        }
        Ok(t)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Delegations {
    pub keys: KeyRing,
    #[serde(default)]
    pub roles: Option<Vec<DelegatedRole>>,
    #[serde(default)]
    pub succinct_roles: Option<SuccinctRoles>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DelegatedRole {
    pub name: String,
    #[serde(flatten)]
    pub keys: RoleKeys,
    pub terminating: bool,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub path_hash_prefixes: Option<Vec<String>>,
}

/// Hash-bin delegations (TAP 15).
#[derive(Debug, Clone, Deserialize)]
pub struct SuccinctRoles {
    #[serde(flatten)]
    pub keys: RoleKeys,
    pub bit_length: u32,
    pub name_prefix: String,
}

impl SuccinctRoles {
    fn suffix_len(&self) -> usize {
        let bins: u64 = 1u64 << self.bit_length;
        format!("{:x}", bins - 1).len()
    }

    /// The bin role that `target` falls into.
    pub fn role_for(&self, target: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(target.as_bytes());
        let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let bin = first >> (32 - self.bit_length);
        format!(
            "{}-{:0width$x}",
            self.name_prefix,
            bin,
            width = self.suffix_len()
        )
    }

    /// Whether `name` is one of the bins.
    pub fn is_bin(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(&self.name_prefix)
            .and_then(|s| s.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < (1u64 << self.bit_length))
    }
}

impl Delegations {
    fn check(&self) -> Result<(), Invalid> {
        match (&self.roles, &self.succinct_roles) {
            (Some(_), Some(_)) => {
                return Err(invalid("delegations have both roles and succinct_roles"));
            }
            (None, None) => {
                return Err(invalid("delegations have neither roles nor succinct_roles"));
            }
            _ => {}
        }
        if let Some(s) = &self.succinct_roles
            && !(1..=32).contains(&s.bit_length)
        {
            return Err(invalid("succinct_roles bit_length must be 1 to 32"));
        }
        let mut names = HashSet::new();
        for r in self.roles.iter().flatten() {
            if TOP_LEVEL.contains(&r.name.as_str()) {
                return Err(invalid(format!(
                    "delegates to top-level role name {:?}",
                    r.name
                )));
            }
            if !names.insert(&r.name) {
                return Err(invalid(format!("delegates to {:?} twice", r.name)));
            }
            if r.paths.is_some() == r.path_hash_prefixes.is_some() {
                return Err(invalid(format!(
                    "delegated role {:?} needs exactly one of paths and path_hash_prefixes",
                    r.name
                )));
            }
        }
        Ok(())
    }

    /// The keys of delegated role `name`, if this delegates to it.
    pub fn role_keys(&self, name: &str) -> Option<&RoleKeys> {
        if let Some(roles) = &self.roles {
            return roles.iter().find(|r| r.name == name).map(|r| &r.keys);
        }
        self.succinct_roles
            .as_ref()
            .filter(|s| s.is_bin(name))
            .map(|s| &s.keys)
    }

    /// §5.6.7.2: the delegated roles responsible for `target`, in order,
    /// with whether each is terminating.
    pub fn roles_for(&self, target: &str) -> Vec<(String, bool)> {
        if let Some(s) = &self.succinct_roles {
            return vec![(s.role_for(target), true)];
        }
        let mut out = Vec::new();
        for r in self.roles.iter().flatten() {
            if r.is_responsible_for(target) {
                out.push((r.name.clone(), r.terminating));
            }
        }
        out
    }
}

impl DelegatedRole {
    pub fn is_responsible_for(&self, target: &str) -> bool {
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| path_matches(p, target));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(target.as_bytes()));
            return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
        }
        false
    }
}

/// §4.5 PATHPATTERN ([`ferry_core::glob::tuf_path`]).
pub fn path_matches(pattern: &str, target: &str) -> bool {
    ferry_core::glob::tuf_path(pattern, target)
}

/// Checks `data` against the length and hashes of a META or TARGETS entry.
/// Every listed hash must match, and an algorithm ferry does not implement
/// is a failure rather than skipped (§5.2.2 of the client workflow asks for
/// *all* hashes to be checked).
pub fn check_hashes(hashes: &Hashes, digests: &Digests) -> Result<(), Invalid> {
    if hashes.0.is_empty() {
        return Err(invalid("lists no hashes"));
    }
    for (alg, expected) in &hashes.0 {
        let actual = match alg.as_str() {
            "sha256" => &digests.sha256,
            "sha512" => &digests.sha512,
            other => return Err(invalid(format!("unsupported hash algorithm {other:?}"))),
        };
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(invalid(format!(
                "{alg} mismatch: expected {expected}, got {actual}"
            )));
        }
    }
    Ok(())
}

/// Digests computed while streaming.
#[derive(Debug, Clone)]
pub struct Digests {
    pub sha256: String,
    pub sha512: String,
}

/// Hashes bytes with every algorithm ferry checks.
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    sha256: Option<sha2::Sha256>,
    sha512: Option<sha2::Sha512>,
}

impl Hasher {
    /// `want_sha512`: only compute sha512 when some metadata lists it.
    pub fn new(want_sha512: bool) -> Self {
        use sha2::Digest;
        Hasher {
            sha256: Some(sha2::Sha256::new()),
            sha512: want_sha512.then(sha2::Sha512::new),
        }
    }
    /// Stops computing sha256 (someone else checks it).
    pub fn skip_sha256(&mut self) {
        self.sha256 = None;
    }
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }
    pub fn finish(self) -> Digests {
        use sha2::Digest;
        Digests {
            sha256: self
                .sha256
                .map(|h| hex::encode(h.finalize()))
                .unwrap_or_default(),
            sha512: self
                .sha512
                .map(|h| hex::encode(h.finalize()))
                .unwrap_or_default(),
        }
    }
}

/// Checks a whole buffer against a META entry's optional length and hashes.
pub fn check_meta_bytes(meta: &MetaFile, data: &[u8]) -> Result<(), Invalid> {
    if let Some(len) = meta.length
        && data.len() as u64 != len
    {
        return Err(invalid(format!(
            "length mismatch: expected {len} bytes, got {}",
            data.len()
        )));
    }
    if let Some(hashes) = &meta.hashes {
        let mut h = Hasher::new(hashes.get("sha512").is_some());
        h.update(data);
        check_hashes(hashes, &h.finish())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_follow_fnmatch_per_segment() {
        assert!(path_matches("*", "a.txt"));
        assert!(!path_matches("*", "dir/a.txt"));
        assert!(path_matches("dir/*", "dir/a.txt"));
        assert!(path_matches("*/*.txt", "dir/a.txt"));
        assert!(!path_matches("dir/*.txt", "dir/a.tgz"));
        assert!(path_matches("file?.txt", "file1.txt"));
        assert!(path_matches("f[0-9].txt", "f7.txt"));
        assert!(!path_matches("f[!0-9].txt", "f7.txt"));
        assert!(path_matches("sites/plant-7/**", "sites/plant-7/x"));
        assert!(!path_matches("a", "ab"));
        assert!(path_matches("[ab", "[ab"));
        assert!(path_matches("*[xy]z", "aaxz"));
        // Regression: exponential backtracking in the recursive matcher.
        let long = "a".repeat(5_000);
        assert!(!path_matches("*a*a*a*a*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn hash_bins_name_and_recognise_roles() {
        let s = SuccinctRoles {
            keys: RoleKeys {
                keyids: vec![],
                threshold: 1,
            },
            bit_length: 4,
            name_prefix: "bin".into(),
        };
        let r = s.role_for("a.txt");
        assert!(r.starts_with("bin-") && r.len() == 5, "{r}");
        assert!(s.is_bin(&r));
        assert!(!s.is_bin("bin-10"));
        assert!(!s.is_bin("other-1"));
    }

    #[test]
    fn envelopes_refuse_duplicate_signatures_and_wrong_types() {
        let doc = br#"{"signed":{"_type":"timestamp","spec_version":"1.0.31","version":1,"expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":{"version":1}}},
            "signatures":[{"keyid":"a","sig":"00"},{"keyid":"a","sig":"01"}]}"#;
        assert!(
            Envelope::parse(doc)
                .unwrap_err()
                .0
                .contains("two signatures")
        );
        let doc = br#"{"signed":{"_type":"timestamp","spec_version":"1.0.31","version":1,"expires":"2030-01-01T00:00:00Z","meta":{"snapshot.json":{"version":1}}},"signatures":[]}"#;
        let env = Envelope::parse(doc).unwrap();
        assert_eq!(Timestamp::parse(&env).unwrap().snapshot().version, 1);
        assert!(
            Snapshot::parse(&env)
                .unwrap_err()
                .0
                .contains("expected snapshot")
        );
    }

    #[test]
    fn unsupported_hash_algorithms_fail_closed() {
        let hashes = Hashes(vec![("md5".into(), "00".into())]);
        let d = Digests {
            sha256: String::new(),
            sha512: String::new(),
        };
        assert!(
            check_hashes(&hashes, &d)
                .unwrap_err()
                .0
                .contains("unsupported")
        );
    }
}
