//! JSON → event slots, in one pass, reading only the fields a rule set uses.
//!
//! The compiled set's field paths form a trie; the decoder walks the JSON
//! object with serde and stores a value only where the trie has a slot,
//! skipping everything else without building it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::value::{Event, Value};

#[derive(Debug, Default)]
pub(crate) struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, usize>,
    slot: Option<u16>,
}

impl Trie {
    pub(crate) fn new(fields: &[Arc<str>]) -> Trie {
        let mut trie = Trie {
            nodes: vec![Node::default()],
        };
        for (slot, path) in fields.iter().enumerate() {
            let mut at = 0;
            for part in path.split('.') {
                at = match trie.nodes[at].children.get(part) {
                    Some(&n) => n,
                    None => {
                        trie.nodes.push(Node::default());
                        let n = trie.nodes.len() - 1;
                        trie.nodes[at].children.insert(part.into(), n);
                        n
                    }
                };
            }
            trie.nodes[at].slot = Some(slot as u16);
        }
        trie
    }
}

/// Payloads larger than this are not decoded (MQTT allows 256 MiB).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event payload is {0} bytes; the limit is {MAX_EVENT_BYTES}")]
    TooLarge(usize),
    #[error("event payload is not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event line: {0}")]
    Envelope(String),
}

impl Trie {
    /// Decodes a JSON object payload into `event.slots` (reset to
    /// `n_slots` missing values first). On error every slot is left
    /// missing, so rules over `topic` still work for payloads that are not
    /// JSON (binary frames for a WASM decoder).
    pub(crate) fn decode_into(
        &self,
        n_slots: usize,
        payload: &[u8],
        event: &mut Event,
    ) -> Result<(), DecodeError> {
        event.slots.clear();
        event.slots.resize(n_slots, Value::Missing);
        if payload.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge(payload.len()));
        }
        let mut de = serde_json::Deserializer::from_slice(payload);
        let decoded = ObjectSeed {
            trie: self,
            node: 0,
            slots: &mut event.slots,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        if let Err(e) = decoded {
            event.slots.iter_mut().for_each(|s| *s = Value::Missing);
            return Err(e.into());
        }
        Ok(())
    }
}

/// One line of a JSON-lines event stream (the local event socket and
/// `ferry rules test`): `{"topic": "...", "time": 12.5, "payload": {...}}`.
/// `topic` defaults to "", `time` (seconds) to the previous event's time.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub topic: String,
    pub time_ms: Option<u64>,
    pub payload: Vec<u8>,
}

impl Envelope {
    pub fn parse(line: &[u8]) -> Result<Envelope, DecodeError> {
        if line.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge(line.len()));
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw<'a> {
            #[serde(default)]
            topic: String,
            #[serde(default)]
            time: Option<f64>,
            #[serde(borrow)]
            payload: &'a serde_json::value::RawValue,
        }
        let raw: Raw<'_> = serde_json::from_slice(line)?;
        let time_ms = match raw.time {
            Some(t) if t.is_finite() && t >= 0.0 => Some((t * 1000.0).round() as u64),
            Some(t) => {
                return Err(DecodeError::Envelope(format!(
                    "time {t} is not a non-negative number of seconds"
                )));
            }
            None => None,
        };
        let payload = raw.payload.get();
        if !payload.trim_start().starts_with('{') {
            return Err(DecodeError::Envelope(
                "payload must be a JSON object".into(),
            ));
        }
        Ok(Envelope {
            topic: raw.topic,
            time_ms,
            payload: payload.as_bytes().to_vec(),
        })
    }
}

struct ObjectSeed<'a> {
    trie: &'a Trie,
    node: usize,
    slots: &'a mut [Value],
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let node = &self.trie.nodes[self.node];
        while let Some(child) = map.next_key_seed(KeySeed(node))? {
            match child {
                Some(c) => map.next_value_seed(ValueSeed {
                    trie: self.trie,
                    node: c,
                    slots: self.slots,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A key, looked up in the trie without allocating.
struct KeySeed<'a>(&'a Node);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, k: &str) -> Result<Option<usize>, E> {
        Ok(self.0.children.get(k).copied())
    }
}

/// The value under a key the trie knows: a leaf value into its slot, an
/// object walked further; anything else skipped.
struct ValueSeed<'a> {
    trie: &'a Trie,
    node: usize,
    slots: &'a mut [Value],
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn put(self, v: Value) {
        if let Some(slot) = self.trie.nodes[self.node].slot
            && let Some(s) = self.slots.get_mut(slot as usize)
        {
            *s = v;
        }
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.put(Value::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.put(Value::Num(v as f64));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.put(Value::Num(v as f64));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.put(Value::Num(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.put(Value::Str(v.into()));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        ObjectSeed {
            trie: self.trie,
            node: self.node,
            slots: self.slots,
        }
        .visit_map(map)
    }
}
