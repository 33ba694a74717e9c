//! CBOR (RFC 8949) payloads → the JSON object a rule set's fields are
//! decoded from. The payload itself stays as it arrived.
//!
//! Bounded: the input is at most the CoAP server's `max_payload`, nesting
//! at most [`MAX_DEPTH`] (ciborium's recursion limit), and ciborium never
//! allocates from a declared length, so a header claiming 2^32 items
//! costs nothing until the items are there.

use serde_json::{Map, Number, Value as Json};

/// Deepest nesting of arrays, maps and tags accepted.
pub const MAX_DEPTH: usize = 32;

ferry_core::message_error! {
    /// A CBOR payload that cannot stand as a JSON object of fields.
    CborError
}

/// Decodes one CBOR data item, which must be a map, into JSON text.
/// Integer keys become their decimal text; byte strings become lowercase
/// hex; tags are dropped (their content stays); NaN and infinities become
/// null.
pub fn to_json(bytes: &[u8]) -> Result<Vec<u8>, CborError> {
    let value: ciborium::Value = ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH)
        .map_err(|e| format!("CBOR: {e:?}"))?;
    let json = convert(value);
    if !json.is_object() {
        return Err("CBOR payload is not a map".into());
    }
    serde_json::to_vec(&json).map_err(|e| CborError::from(e.to_string()))
}

fn convert(v: ciborium::Value) -> Json {
    use ciborium::Value as C;
    match v {
        C::Integer(i) => {
            let i = i128::from(i);
            if let Ok(n) = i64::try_from(i) {
                Json::Number(n.into())
            } else if let Ok(n) = u64::try_from(i) {
                Json::Number(n.into())
            } else {
                Number::from_f64(i as f64).map_or(Json::Null, Json::Number)
            }
        }
        C::Float(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        C::Bytes(b) => Json::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        C::Text(t) => Json::String(t),
        C::Bool(b) => Json::Bool(b),
        C::Null => Json::Null,
        C::Tag(_, inner) => convert(*inner),
        C::Array(items) => Json::Array(items.into_iter().map(convert).collect()),
        C::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let key = match k {
                    C::Text(t) => t,
                    C::Integer(i) => i128::from(i).to_string(),
                    C::Bool(b) => b.to_string(),
                    // Keys a field path cannot name are left out.
                    _ => continue,
                };
                map.insert(key, convert(v));
            }
            Json::Object(map)
        }
        _ => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(v: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn a_map_becomes_a_json_object() {
        use ciborium::Value as C;
        let v = C::Map(vec![
            (C::Text("temperature".into()), C::Float(21.5)),
            (
                C::Text("sensor".into()),
                C::Map(vec![(C::Text("id".into()), C::Text("t1".into()))]),
            ),
            (C::Integer(7.into()), C::Bytes(vec![0xde, 0xad])),
            (C::Text("ok".into()), C::Tag(1, Box::new(C::Bool(true)))),
        ]);
        let json: Json = serde_json::from_slice(&to_json(&cbor(&v)).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"temperature": 21.5, "sensor": {"id": "t1"}, "7": "dead", "ok": true})
        );
    }

    #[test]
    fn hostile_inputs_are_refused_cheaply() {
        // Not a map.
        assert!(to_json(&cbor(&ciborium::Value::Integer(3.into()))).is_err());
        // An array header claiming 2^32-1 items, with none there.
        assert!(to_json(&[0x9a, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A byte string claiming 2^64-1 bytes.
        assert!(to_json(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Nesting past the limit: a map whose value is 1000 nested arrays.
        let mut deep = vec![0xa1, 0x61, b'a'];
        deep.extend(std::iter::repeat_n(0x81, 1000));
        deep.push(0x00);
        let e = to_json(&deep).unwrap_err();
        assert!(e.to_string().contains("CBOR"), "{e}");
        // Truncated.
        assert!(to_json(&[0xa1, 0x61]).is_err());
        assert!(to_json(&[]).is_err());
    }
}
