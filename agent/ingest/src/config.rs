//! What the sources are told to do: `[rules.coap]` and `[[rules.modbus]]`
//! in `ferry.toml`, or the `ingest` object of a `ruleset` resource (the
//! same shape, in JSON), checked into [`Plan`] before anything starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Modbus devices polled at most (all origins together).
pub const MAX_DEVICES: usize = 64;
/// Register blocks per device at most.
pub const MAX_BLOCKS: usize = 32;
/// Decoded fields per block at most.
pub const MAX_FIELDS: usize = 64;
/// Writable registers listed per device at most.
pub const MAX_WRITABLE: usize = 1024;
/// Largest payload the CoAP server assembles from blocks.
pub const MAX_COAP_PAYLOAD: usize = 1 << 20;
/// Shortest poll period and timeout.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);

/// One problem in an ingestion configuration: where (a dotted key such as
/// `modbus[0].blocks[1].count`) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// The sources as written (durations as text, as elsewhere in ferry.toml).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub coap: Option<CoapConfig>,
    pub modbus: Vec<ModbusDevice>,
}

/// `[rules.coap]`: a CoAP server whose POST/PUT requests become events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    /// `ip:port` to listen on (UDP). There is no DTLS: bind to loopback or
    /// to an interface only trusted devices reach.
    pub bind: String,
    /// Largest request payload, assembled from blocks (RFC 7959) if need
    /// be; larger ones get 4.13.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
}

fn default_max_payload() -> usize {
    64 * 1024
}

/// `[[rules.modbus]]`: one Modbus TCP device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// The name rules use (`modbus_write("plc1", …)`) and the default
    /// topic level.
    pub name: String,
    /// `ip:port` of the device or Modbus TCP gateway.
    pub address: String,
    /// Unit (slave) id.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Per request.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Failed polls in a row before the device counts as down (one alert).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Holding registers `modbus_write` may write; nothing else.
    #[serde(default)]
    pub writable: Vec<u16>,
    #[serde(default)]
    pub blocks: Vec<RegisterBlock>,
}

fn default_unit() -> u8 {
    1
}
fn default_timeout() -> String {
    "1s".into()
}
fn default_retries() -> u32 {
    3
}

/// A range of registers (or bits) read every `period`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBlock {
    pub name: String,
    pub kind: Table,
    pub start: u16,
    pub count: u16,
    pub period: String,
    /// Default `modbus/<device>/<block>`.
    #[serde(default)]
    pub topic: Option<String>,
    /// `json` (the default): the payload is the event's JSON object;
    /// `frame`: the payload is the raw response (unit, function, byte
    /// count, data), for a WASM decoder, and fields still come from JSON.
    #[serde(default)]
    pub payload: PayloadForm,
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Holding,
    Input,
    Coils,
    Discrete,
}

impl Table {
    /// The Modbus function code that reads it.
    pub fn function(self) -> u8 {
        match self {
            Table::Coils => 1,
            Table::Discrete => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    fn is_bits(self) -> bool {
        matches!(self, Table::Coils | Table::Discrete)
    }

    /// Most items one read may ask for (Modbus application protocol 6.1–6.4).
    fn max_count(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadForm {
    #[default]
    Json,
    Frame,
}

/// A value decoded from registers of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// The event field (a rule reads it as `name`).
    pub name: String,
    /// Register offset inside the block.
    pub offset: u16,
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// For 32-bit types: `big` (the first register holds the high word,
    /// the default) or `little`.
    #[serde(default)]
    pub order: WordOrder,
    /// Multiplied in after decoding (e.g. 0.1 for tenths).
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl FieldType {
    pub fn words(self) -> u16 {
        match self {
            FieldType::U16 | FieldType::I16 => 1,
            _ => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    #[default]
    Big,
    Little,
}

/// A checked configuration, ready to run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub coap: Option<CoapPlan>,
    pub devices: BTreeMap<String, DevicePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapPlan {
    pub bind: SocketAddr,
    pub max_payload: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DevicePlan {
    pub name: String,
    pub address: SocketAddr,
    pub unit: u8,
    pub timeout: Duration,
    pub retries: u32,
    pub writable: BTreeSet<u16>,
    pub blocks: Vec<BlockPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlockPlan {
    pub name: String,
    pub table: Table,
    pub start: u16,
    pub count: u16,
    pub period: Duration,
    pub topic: String,
    pub payload: PayloadForm,
    pub fields: Vec<FieldSpec>,
}

/// 1–64 of `A-Z a-z 0-9 . _ -`: safe as a topic level and in messages.
fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty()
        || value.len() > 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(invalid(
            key,
            format!(
                "{:?} must be 1 to 64 of letters, digits, '.', '_', '-'",
                value.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    ferry_core::duration::parse(text)
        .filter(|d| *d >= MIN_PERIOD && *d <= Duration::from_secs(86_400))
        .ok_or_else(|| {
            invalid(
                key,
                format!("{text:?} is not a duration from 10ms to 1d (e.g. 500ms, 5s)"),
            )
        })
}

fn address(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("{text:?} is not ip:port (an address, not a host name)"),
        )
    })
}

impl IngestConfig {
    /// Reads the `ingest` object of a `ruleset` resource.
    pub fn from_json(value: &serde_json::Value) -> Result<IngestConfig, ConfigError> {
        IngestConfig::deserialize(value).map_err(|e| invalid("ingest", e.to_string()))
    }

    /// Checks everything; `key` is prefixed to every error's key.
    pub fn plan(&self, key: &str) -> Result<Plan, ConfigError> {
        let k = |rest: String| {
            if key.is_empty() {
                rest
            } else {
                format!("{key}.{rest}")
            }
        };
        let coap = match &self.coap {
            None => None,
            Some(c) => {
                let bind = address(&k("coap.bind".into()), &c.bind)?;
                if c.max_payload == 0 || c.max_payload > MAX_COAP_PAYLOAD {
                    return Err(invalid(
                        k("coap.max_payload".into()),
                        format!("{} is outside 1..={MAX_COAP_PAYLOAD}", c.max_payload),
                    ));
                }
                Some(CoapPlan {
                    bind,
                    max_payload: c.max_payload,
                })
            }
        };
        if self.modbus.len() > MAX_DEVICES {
            return Err(invalid(
                k("modbus".into()),
                format!("{} devices; at most {MAX_DEVICES}", self.modbus.len()),
            ));
        }
        let mut devices = BTreeMap::new();
        for (i, d) in self.modbus.iter().enumerate() {
            let at = |rest: &str| k(format!("modbus[{i}].{rest}"));
            check_name(&at("name"), &d.name)?;
            if devices.contains_key(&d.name) {
                return Err(invalid(
                    at("name"),
                    format!("device {} is configured twice", d.name),
                ));
            }
            let timeout = duration(&at("timeout"), &d.timeout)?;
            if timeout > Duration::from_secs(60) {
                return Err(invalid(at("timeout"), "at most 60s"));
            }
            if !(1..=100).contains(&d.retries) {
                return Err(invalid(at("retries"), "must be 1 to 100"));
            }
            if d.writable.len() > MAX_WRITABLE {
                return Err(invalid(at("writable"), format!("at most {MAX_WRITABLE}")));
            }
            if d.blocks.is_empty() && d.writable.is_empty() {
                return Err(invalid(
                    at("blocks"),
                    "a device needs a register block to read or a writable register",
                ));
            }
            if d.blocks.len() > MAX_BLOCKS {
                return Err(invalid(at("blocks"), format!("at most {MAX_BLOCKS}")));
            }
            let mut blocks = Vec::new();
            for (j, b) in d.blocks.iter().enumerate() {
                let at = |rest: &str| k(format!("modbus[{i}].blocks[{j}].{rest}"));
                check_name(&at("name"), &b.name)?;
                if blocks.iter().any(|x: &BlockPlan| x.name == b.name) {
                    return Err(invalid(
                        at("name"),
                        format!("block {} is defined twice", b.name),
                    ));
                }
                if b.count == 0 || b.count > b.kind.max_count() {
                    return Err(invalid(
                        at("count"),
                        format!("{} is outside 1..={}", b.count, b.kind.max_count()),
                    ));
                }
                if u32::from(b.start) + u32::from(b.count) > 65_536 {
                    return Err(invalid(at("count"), "start + count passes register 65535"));
                }
                let period = duration(&at("period"), &b.period)?;
                let topic = match &b.topic {
                    Some(t) => {
                        if t.is_empty() || t.len() > 256 || t.contains(['+', '#', '\0']) {
                            return Err(invalid(
                                at("topic"),
                                "must be 1 to 256 bytes without + # or NUL",
                            ));
                        }
                        t.clone()
                    }
                    None => format!("modbus/{}/{}", d.name, b.name),
                };
                if b.fields.len() > MAX_FIELDS {
                    return Err(invalid(at("fields"), format!("at most {MAX_FIELDS}")));
                }
                if b.kind.is_bits() && !b.fields.is_empty() {
                    return Err(invalid(
                        at("fields"),
                        "coils and discrete inputs have no register fields (they arrive as `bits`)",
                    ));
                }
                for (n, f) in b.fields.iter().enumerate() {
                    let at = |rest: &str| k(format!("modbus[{i}].blocks[{j}].fields[{n}].{rest}"));
                    if f.name.is_empty()
                        || f.name.len() > 64
                        || !f
                            .name
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'_')
                        || f.name.as_bytes()[0].is_ascii_digit()
                        || RESERVED.contains(&f.name.as_str())
                    {
                        return Err(invalid(
                            at("name"),
                            format!(
                                "{:?} must be an identifier (letters, digits, _) other than {}",
                                f.name,
                                RESERVED.join(", ")
                            ),
                        ));
                    }
                    if u32::from(f.offset) + u32::from(f.ty.words()) > u32::from(b.count) {
                        return Err(invalid(
                            at("offset"),
                            format!(
                                "a {:?} at offset {} does not fit in {} registers",
                                f.ty, f.offset, b.count
                            ),
                        ));
                    }
                    if !f.scale.is_finite() {
                        return Err(invalid(at("scale"), "must be a finite number"));
                    }
                }
                blocks.push(BlockPlan {
                    name: b.name.clone(),
                    table: b.kind,
                    start: b.start,
                    count: b.count,
                    period,
                    topic,
                    payload: b.payload,
                    fields: b.fields.clone(),
                });
            }
            devices.insert(
                d.name.clone(),
                DevicePlan {
                    name: d.name.clone(),
                    address: address(&at("address"), &d.address)?,
                    unit: d.unit,
                    timeout,
                    retries: d.retries,
                    writable: d.writable.iter().copied().collect(),
                    blocks,
                },
            );
        }
        Ok(Plan { coap, devices })
    }
}

/// Keys of a Modbus event object that fields may not take.
pub const RESERVED: [&str; 6] = ["device", "block", "unit", "start", "registers", "bits"];

impl Plan {
    /// Joins plans from several origins (ferry.toml, each rule set): a
    /// device name or the CoAP server may come from one origin only.
    pub fn merge(parts: Vec<(String, Plan)>) -> Result<Plan, ConfigError> {
        let mut out = Plan::default();
        let mut coap_from: Option<String> = None;
        let mut device_from: BTreeMap<String, String> = BTreeMap::new();
        for (origin, plan) in parts {
            if let Some(c) = plan.coap {
                if let Some(first) = &coap_from {
                    return Err(invalid(
                        format!("{origin}: coap"),
                        format!("the CoAP server is already configured by {first}"),
                    ));
                }
                coap_from = Some(origin.clone());
                out.coap = Some(c);
            }
            for (name, d) in plan.devices {
                if let Some(first) = device_from.get(&name) {
                    return Err(invalid(
                        format!("{origin}: modbus"),
                        format!("device {name} is already configured by {first}"),
                    ));
                }
                device_from.insert(name.clone(), origin.clone());
                out.devices.insert(name, d);
            }
        }
        if out.devices.len() > MAX_DEVICES {
            return Err(invalid(
                "modbus",
                format!("{} devices; at most {MAX_DEVICES}", out.devices.len()),
            ));
        }
        Ok(out)
    }

    /// Whether `modbus_write(device, register, …)` is allowed, and if not
    /// why (for the rule set's diagnostic).
    pub fn writable(&self, device: &str, register: u16) -> Result<(), String> {
        match self.devices.get(device) {
            None => Err(format!(
                "modbus_write: no Modbus device {device:?} is configured (known: {})",
                if self.devices.is_empty() {
                    "none".to_owned()
                } else {
                    self.devices.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
            Some(d) if !d.writable.contains(&register) => Err(format!(
                "modbus_write: register {register} of {device} is not writable (its `writable` list: {:?})",
                d.writable
            )),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(toml_text: &str) -> Result<Plan, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            modbus: Vec<ModbusDevice>,
        }
        let f: File =
            serde_json::from_value(serde_json::to_value(toml_value(toml_text)).expect("json"))
                .expect("shape");
        IngestConfig {
            coap: None,
            modbus: f.modbus,
        }
        .plan("rules")
    }

    fn toml_value(text: &str) -> serde_json::Value {
        // The tests write small JSON documents directly.
        serde_json::from_str(text).expect("test JSON")
    }

    const PLC: &str = r#"{"modbus": [{"name": "plc1", "address": "127.0.0.1:5020",
        "writable": [10],
        "blocks": [{"name": "temps", "kind": "holding", "start": 0, "count": 4, "period": "1s",
                    "fields": [{"name": "seq", "offset": 0, "type": "u32"},
                               {"name": "temperature", "offset": 2, "type": "i16", "scale": 0.1}]}]}]}"#;

    #[test]
    fn a_device_plans_with_defaults() {
        let plan = device(PLC).unwrap();
        let d = &plan.devices["plc1"];
        assert_eq!(d.unit, 1);
        assert_eq!(d.timeout, Duration::from_secs(1));
        assert_eq!(d.blocks[0].topic, "modbus/plc1/temps");
        assert_eq!(d.blocks[0].payload, PayloadForm::Json);
        assert!(plan.writable("plc1", 10).is_ok());
        let no = plan.writable("plc1", 11).unwrap_err();
        assert!(no.contains("register 11 of plc1 is not writable"), "{no}");
        let none = plan.writable("plc2", 10).unwrap_err();
        assert!(none.contains("no Modbus device \"plc2\""), "{none}");
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases = [
            (
                PLC.replace("\"count\": 4", "\"count\": 126"),
                "rules.modbus[0].blocks[0].count",
            ),
            (
                PLC.replace("\"offset\": 2", "\"offset\": 4"),
                "rules.modbus[0].blocks[0].fields[1].offset",
            ),
            (
                PLC.replace("127.0.0.1:5020", "plc.local:502"),
                "rules.modbus[0].address",
            ),
            (
                PLC.replace("\"period\": \"1s\"", "\"period\": \"1ms\""),
                "rules.modbus[0].blocks[0].period",
            ),
            (
                PLC.replace("\"name\": \"plc1\"", "\"name\": \"plc/1\""),
                "rules.modbus[0].name",
            ),
            (
                PLC.replace("\"temperature\"", "\"registers\""),
                "rules.modbus[0].blocks[0].fields[1].name",
            ),
            (
                PLC.replace("\"kind\": \"holding\"", "\"kind\": \"coils\""),
                "rules.modbus[0].blocks[0].fields",
            ),
            (
                PLC.replace("\"start\": 0", "\"start\": 65534"),
                "rules.modbus[0].blocks[0].count",
            ),
        ];
        for (text, key) in cases {
            let e = device(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn merging_refuses_a_device_from_two_origins() {
        let a = device(PLC).unwrap();
        let e = Plan::merge(vec![
            ("ferry.toml".into(), a.clone()),
            ("ruleset plant".into(), a),
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("device plc1 is already configured by ferry.toml"),
            "{e}"
        );
    }

    #[test]
    fn coap_settings_are_checked() {
        let cfg = |bind: &str, max: usize| IngestConfig {
            coap: Some(CoapConfig {
                bind: bind.into(),
                max_payload: max,
            }),
            modbus: vec![],
        };
        assert!(cfg("127.0.0.1:5683", 1024).plan("rules").is_ok());
        assert_eq!(
            cfg("localhost:5683", 1024).plan("rules").unwrap_err().key,
            "rules.coap.bind"
        );
        assert_eq!(
            cfg("127.0.0.1:5683", MAX_COAP_PAYLOAD + 1)
                .plan("rules")
                .unwrap_err()
                .key,
            "rules.coap.max_payload"
        );
        let e = IngestConfig::from_json(
            &serde_json::json!({"coap": {"bind": "127.0.0.1:1", "extra": 1}}),
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field `extra`"), "{e}");
    }
}
