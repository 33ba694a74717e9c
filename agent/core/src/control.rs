//! The agent's control protocol (docs/control.md): one JSON [`Request`] per
//! line on the control socket, one JSON [`Response`] line back. Parsed
//! here, without I/O, so the parser is tested and fuzzed on its own.
//!
//! Version 1. A request may say `"v": 1`; a request for another version is
//! refused, naming the versions this agent speaks. Every response carries
//! `"v"` and `"ok"`.

use serde::{Deserialize, Serialize};

/// The protocol version this agent speaks.
pub const VERSION: u32 = 1;

/// Longest request line the agent reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What a client asks the running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The agent's view: state, last and next poll, last error.
    Status,
    /// Reconcile now.
    Apply,
}

/// The running agent's view of itself (`ferry status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    /// The state directory the agent serves (`ferry status` shows the
    /// agent's view only for its own state directory).
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
    /// Unix seconds.
    pub started: u64,
    /// `idle` or `reconciling`.
    pub state: String,
    pub last_poll: Option<u64>,
    /// What the last reconcile did, for people.
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    /// Why the last configuration reload was refused (cleared by a good one).
    pub config_error: Option<String>,
    pub next_poll: Option<u64>,
    pub revision: Option<String>,
    pub generation: Option<u64>,
    pub consecutive_failures: u32,
    /// What the agent's drift watch covers (`ferry status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_watch: Option<String>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The protocol version ([`VERSION`]).
    pub v: u32,
    /// Whether the request was carried out.
    pub ok: bool,
    #[serde(flatten)]
    pub body: Body,
}

/// What a response says besides `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Body {
    /// The answer to [`Request::Status`].
    Status { agent: Box<AgentStatus> },
    /// The answer to [`Request::Apply`].
    Message { message: String },
    /// The request was refused.
    Error { error: String },
}

impl Response {
    pub fn status(agent: AgentStatus) -> Response {
        Response {
            v: VERSION,
            ok: true,
            body: Body::Status {
                agent: Box::new(agent),
            },
        }
    }

    pub fn message(ok: bool, message: impl Into<String>) -> Response {
        Response {
            v: VERSION,
            ok,
            body: Body::Message {
                message: message.into(),
            },
        }
    }

    pub fn error(error: impl Into<String>) -> Response {
        Response {
            v: VERSION,
            ok: false,
            body: Body::Error {
                error: error.into(),
            },
        }
    }
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("bad request: {0}")]
    Malformed(String),
    #[error("bad request: no \"cmd\"")]
    NoCommand,
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("protocol version {0} is not spoken here (this agent speaks {VERSION})")]
    Version(u64),
}

/// Parses one request line (without or with its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| RequestError::Malformed(e.to_string()))?;
    match value.get("v") {
        None => {}
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => return Err(RequestError::Version(v.as_u64().unwrap_or(u64::MAX))),
    }
    match value.get("cmd").and_then(serde_json::Value::as_str) {
        Some("status") => Ok(Request::Status),
        Some("apply") => Ok(Request::Apply),
        Some(other) => Err(RequestError::UnknownCommand(other.to_owned())),
        None => Err(RequestError::NoCommand),
    }
}

/// The line a client sends for `request`.
pub fn request_line(request: Request) -> String {
    let mut v = serde_json::to_value(request).unwrap_or_default();
    v["v"] = VERSION.into();
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(parse_request(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(parse_request(b"{\"cmd\":\"apply\"}\n"), Ok(Request::Apply));
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"apply"}"#),
            Ok(Request::Apply)
        );
        assert_eq!(
            parse_request(request_line(Request::Status).as_bytes()),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"cmd":"reboot"}"#),
            Err(RequestError::UnknownCommand("reboot".into()))
        );
        assert_eq!(parse_request(b"[1,2]"), Err(RequestError::NoCommand));
        assert!(matches!(
            parse_request(b"{"),
            Err(RequestError::Malformed(_))
        ));
        assert_eq!(
            parse_request(br#"{"v":2,"cmd":"status"}"#),
            Err(RequestError::Version(2))
        );
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(parse_request(&long), Err(RequestError::TooLong));
    }

    #[test]
    fn responses_have_the_documented_shape_and_round_trip() {
        let status = Response::status(AgentStatus {
            pid: 7,
            state: "idle".into(),
            ..AgentStatus::default()
        });
        let line = serde_json::to_value(&status).expect("json");
        assert_eq!(line["v"], 1);
        assert_eq!(line["ok"], true);
        assert_eq!(line["agent"]["pid"], 7);
        assert_eq!(line["agent"]["state"], "idle");
        for r in [
            status,
            Response::message(true, "reconcile requested"),
            Response::error("unknown command \"x\""),
        ] {
            let text = serde_json::to_string(&r).expect("json");
            assert_eq!(serde_json::from_str::<Response>(&text).expect("parse"), r);
        }
        let e = serde_json::to_value(Response::error("no")).expect("json");
        assert_eq!(e, serde_json::json!({"v": 1, "ok": false, "error": "no"}));
    }
}
