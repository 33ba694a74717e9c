//! Where the rules runtime's MQTT broker is. Parsed by the configuration
//! whether or not this build carries the runtime (feature `runtime`), so a
//! bad URL is refused at load either way.

ferry_core::message_error! {
    /// A broker URL ferry cannot use.
    UrlError
}

/// Where the MQTT broker is: `mqtt://host[:port]` (TLS is not built in;
/// gateways run their broker locally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
}

impl MqttTarget {
    pub fn parse(url: &str) -> Result<MqttTarget, UrlError> {
        let shown = ferry_core::text::url_without_secrets(url);
        let url = shown.as_ref();
        if url.contains('@') {
            return Err(format!(
                "{url:?}: no user or password in the URL (the broker is local or reached over a trusted link)"
            )
            .into());
        }
        let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
            format!("{url:?}: only mqtt://host[:port] is supported (no TLS in this build; use a local broker)")
        })?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: port {p:?} is not a number"))?,
            ),
            _ => (rest, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: expected mqtt://host[:port]").into());
        }
        Ok(MqttTarget {
            host: host.to_owned(),
            port,
        })
    }
}
