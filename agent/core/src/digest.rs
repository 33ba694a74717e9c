//! Content addresses: sha256 digests and (digest, length) pairs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// A sha256 digest. Displayed and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a sha256 digest (want 64 hex digits): {0:?}")]
pub struct DigestParseError(pub String);

impl Sha256 {
    /// The all-zero digest, used as the predecessor of the first audit entry.
    pub const ZERO: Sha256 = Sha256([0; 32]);

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }

    /// Digest of a byte string.
    pub fn of(data: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(data).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256 {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only lowercase: one digest has exactly one spelling, so it can be
        // used as a file name and compared as a string. One pass, no
        // allocation: every resource and file check read from state.db
        // parses one.
        const INVALID: u8 = 0xff;
        const NIBBLE: [u8; 256] = {
            let mut t = [INVALID; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        };
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(DigestParseError(s.to_owned()));
        }
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            // 0xff marks a non-digit; its high bit survives the OR.
            bad |= hi | lo;
            *o = hi << 4 | (lo & 0x0f);
        }
        if bad & 0x80 != 0 {
            return Err(DigestParseError(s.to_owned()));
        }
        Ok(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a blob must be: its sha256 and its exact length. Always taken from
/// signed metadata (or the signed tree), never from the bytes themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentRef {
    pub sha256: Sha256,
    pub length: u64,
}

impl ContentRef {
    /// The address of an in-memory byte string.
    pub fn of(data: &[u8]) -> Self {
        ContentRef {
            sha256: Sha256::of(data),
            length: data.len() as u64,
        }
    }

    /// The address of what `src` yields to its end, read 64 KiB at a time.
    pub fn of_reader(src: &mut dyn std::io::Read) -> std::io::Result<Self> {
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut length = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            length += n as u64;
        }
        Ok(ContentRef {
            sha256: Sha256(hasher.finalize().into()),
            length,
        })
    }
}

impl fmt::Display for ContentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{} ({} bytes)", self.sha256, self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_value() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_hex().parse::<Sha256>().unwrap(), d);
        let big = vec![7u8; 200_000];
        assert_eq!(
            ContentRef::of_reader(&mut &big[..]).unwrap(),
            ContentRef::of(&big)
        );
    }

    #[test]
    fn rejects_uppercase_short_and_non_hex() {
        for bad in [
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "abc",
            &"g".repeat(64),
            "",
        ] {
            assert!(bad.parse::<Sha256>().is_err(), "{bad}");
        }
        // Every ASCII byte at the first and the last place: only 0-9 a-f.
        let good = Sha256::of(b"abc").to_hex();
        for b in 0u8..128 {
            for at in [0, 63] {
                let mut s = good.clone().into_bytes();
                s[at] = b;
                let s = String::from_utf8(s).unwrap();
                let ok = b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
                assert_eq!(s.parse::<Sha256>().is_ok(), ok, "{s}");
                if ok {
                    assert_eq!(s.parse::<Sha256>().unwrap().to_hex(), s);
                }
            }
        }
        assert!(format!("é{}", &good[2..]).parse::<Sha256>().is_err());
    }
}
