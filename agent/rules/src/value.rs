//! Run-time values and events.

use std::fmt;
use std::sync::Arc;

/// A field's value in an event, or the result of an expression. `Missing`
/// is "no value": an absent field, a field of an unexpected type, `x / 0`.
/// It propagates through arithmetic and comparisons, and a rule fires only
/// when its condition is `true` (SQL's three-valued logic), so a rule about
/// `temperature` never fires for an event that carries none.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Value {
    #[default]
    Missing,
    Num(f64),
    Bool(bool),
    Str(Arc<str>),
}

impl Value {
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Number(n) => n.as_f64().map_or(Value::Missing, Value::Num),
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::String(s) => Value::Str(s.as_str().into()),
            _ => Value::Missing,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Missing => serde_json::Value::Null,
            Value::Num(n) => serde_json::Number::from_f64(*n)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Str(s) => serde_json::Value::String(s.to_string()),
        }
    }
}

impl fmt::Display for Value {
    /// How a value appears in a template: numbers without a needless `.0`,
    /// strings as they are, a missing value as nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Missing => Ok(()),
            Value::Num(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => f.write_str(s),
        }
    }
}

/// One event as a compiled rule set sees it: the fields the set uses,
/// decoded into the slots the compiler assigned them.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub topic: Arc<str>,
    /// Milliseconds on the runtime's clock (wall clock in the agent; given
    /// explicitly by `ferry rules test` and by tests).
    pub time_ms: u64,
    pub slots: Vec<Value>,
    /// The payload as received, forwarded by `publish(topic)` without a
    /// payload template.
    pub payload: Arc<[u8]>,
}

/// What a rule asked for. `set` is not here: it changes the rule set's own
/// state, visible to later rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Alert {
        rule: Arc<str>,
        message: String,
    },
    Publish {
        rule: Arc<str>,
        topic: String,
        payload: Vec<u8>,
    },
    /// A call of a WASM module's export with a payload.
    Call {
        rule: Arc<str>,
        module: Arc<str>,
        export: Arc<str>,
        payload: Vec<u8>,
    },
    /// A write of one holding register of a configured Modbus device.
    ModbusWrite {
        rule: Arc<str>,
        device: Arc<str>,
        register: u16,
        value: Value,
    },
}

impl Output {
    /// About the memory the action holds while it waits.
    pub fn approx_bytes(&self) -> usize {
        64 + match self {
            Output::Alert { message, .. } => message.len(),
            Output::Publish { topic, payload, .. } => topic.len() + payload.len(),
            Output::Call { payload, .. } => payload.len(),
            Output::ModbusWrite { .. } => 0,
        }
    }

    pub fn rule(&self) -> &str {
        match self {
            Output::Alert { rule, .. }
            | Output::Publish { rule, .. }
            | Output::Call { rule, .. }
            | Output::ModbusWrite { rule, .. } => rule,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Output::Alert { rule, message } => serde_json::json!({
                "action": "alert", "rule": &**rule, "message": message,
            }),
            Output::Publish {
                rule,
                topic,
                payload,
            } => serde_json::json!({
                "action": "publish", "rule": &**rule, "topic": topic,
                "payload": String::from_utf8_lossy(payload),
            }),
            Output::Call {
                rule,
                module,
                export,
                payload,
            } => serde_json::json!({
                "action": "call", "rule": &**rule, "module": &**module, "export": &**export,
                "payload": String::from_utf8_lossy(payload),
            }),
            Output::ModbusWrite {
                rule,
                device,
                register,
                value,
            } => serde_json::json!({
                "action": "modbus_write", "rule": &**rule, "device": &**device,
                "register": register, "value": value.to_json(),
            }),
        }
    }
}

impl Value {
    /// The 16-bit register word for a value written by `modbus_write`: an
    /// integer in -32768..=65535 (negative numbers as two's complement).
    pub fn to_register(&self) -> Result<u16, String> {
        match self {
            Value::Num(n) if n.fract() == 0.0 && (-32768.0..=65535.0).contains(n) => {
                Ok(if *n < 0.0 {
                    *n as i16 as u16
                } else {
                    *n as u16
                })
            }
            Value::Bool(b) => Ok(u16::from(*b)),
            other => Err(format!(
                "{} is not an integer in -32768..=65535",
                other.to_json()
            )),
        }
    }
}
