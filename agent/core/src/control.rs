//! Requests on the agent's control socket: one JSON object per line,
//! `{"cmd": "status"}` or `{"cmd": "apply"}`. Parsed here, without I/O, so
//! the parser is tested and fuzzed on its own.

use serde::{Deserialize, Serialize};

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

/// Parses one request line (without or with its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
    match value.get("cmd").and_then(serde_json::Value::as_str) {
        Some("status") => Ok(Request::Status),
        Some("apply") => Ok(Request::Apply),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("bad request: no \"cmd\"".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(parse_request(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(parse_request(b"{\"cmd\":\"apply\"}\n"), Ok(Request::Apply));
        assert!(
            parse_request(br#"{"cmd":"reboot"}"#)
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(parse_request(b"[1,2]").unwrap_err().contains("no \"cmd\""));
        assert!(parse_request(b"{").unwrap_err().contains("bad request"));
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse_request(&long).unwrap_err().contains("longer than"));
    }
}
