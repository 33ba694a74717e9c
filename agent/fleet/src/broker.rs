//! The broker connection: `mqtt://host[:port]` (plain TCP, for a broker on
//! the gateway itself or a trusted link) or `mqtts://host[:port]` (TLS via
//! rustls, the broker's certificate checked against the configured CA, and
//! a client certificate when one is configured: brokers map it to the
//! device's identity for their ACLs).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::FleetError;

/// The largest PEM file read (a CA bundle, a certificate chain, a key).
const MAX_PEM: u64 = 1 << 20;
/// Largest MQTT packet accepted or sent (a status message, an audit entry).
pub const MAX_PACKET: usize = 256 * 1024;

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883).
    pub fn parse(url: &str) -> Result<Broker, FleetError> {
        let bad = |message: &str| FleetError::Url {
            url: ferry_core::text::url_without_secrets(url).into_owned(),
            message: message.to_owned(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("expected mqtt://host[:port] or mqtts://host[:port]"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(bad(
                "only a host and a port (no user, path or query; credentials are client certificates)",
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("expected :port after the IPv6 address"))?,
                    ),
                ),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Broker {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// The URL again, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The TLS files of an `mqtts://` broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) the broker's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// This client's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM; PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, FleetError> {
    let err = |message: String| FleetError::Tls {
        what,
        path: path.to_owned(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_PEM {
        return Err(err(format!("larger than {MAX_PEM} bytes")));
    }
    Ok(buf)
}

/// The rustls client configuration for `tls` (checked now, so that a bad
/// file is an error at start, not a connection failure later).
pub fn client_config(tls: &TlsFiles) -> Result<rustls::ClientConfig, FleetError> {
    let Some(ca) = &tls.ca else {
        return Err(FleetError::Tls {
            what: "ca",
            path: PathBuf::new(),
            message: "an mqtts:// broker needs a CA file (fleet.ca) to check its certificate"
                .into(),
        });
    };
    let tls_err = |what: &'static str, path: &Path, message: String| FleetError::Tls {
        what,
        path: path.to_owned(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let pem = read_pem("ca", ca)?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| tls_err("ca", ca, format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| tls_err("ca", ca, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(tls_err("ca", ca, "no certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("ca", ca, e.to_string()))?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let pem = read_pem("cert", cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err("cert", cert, format!("not PEM certificates: {e}")))?;
            if chain.is_empty() {
                return Err(tls_err("cert", cert, "no certificate in the file".into()));
            }
            // The key's bytes never reach a message: only the parser's verdict.
            let pem = read_pem("key", key)?;
            let private = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| tls_err("key", key, format!("no private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| tls_err("key", key, e.to_string()))
        }
        (Some(p), None) | (None, Some(p)) => Err(tls_err(
            "cert",
            p,
            "fleet.cert and fleet.key go together".into(),
        )),
    }
}

/// MQTT options for `client_id` at `broker`: MQTT 3.1.1, a clean session
/// (what was in flight is sent again by ferry, from its own cursor),
/// bounded packets, 30 s keep-alive.
pub fn options(
    broker: &Broker,
    tls: &TlsFiles,
    client_id: &str,
) -> Result<MqttOptions, FleetError> {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(64);
    if broker.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(client_config(tls)?),
        )));
    } else if tls.cert.is_some() || tls.key.is_some() {
        return Err(FleetError::Url {
            url: broker.url(),
            message:
                "a client certificate is configured but the broker URL is mqtt:// (use mqtts://)"
                    .into(),
        });
    }
    Ok(opts)
}

/// Network options: no Nagle delay (nudges are small and latency matters),
/// connection attempts bounded.
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            Broker::parse("mqtt://127.0.0.1").unwrap(),
            Broker {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(Broker::parse("mqtts://b.example:9883/").unwrap().port, 9883);
        assert_eq!(Broker::parse("mqtts://b.example").unwrap().port, 8883);
        let v6 = Broker::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        assert_eq!(v6.url(), "mqtt://[::1]:1884");
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h/topic",
        ] {
            let e = Broker::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_password_in_a_broker_url_is_not_echoed() {
        let e = Broker::parse("mqtts://admin:hunter2@broker:8883")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("mqtts://admin:***@broker:8883"), "{e}");
    }

    #[test]
    fn tls_files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("ferry-fleet-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = client_config(&TlsFiles {
            ca: Some(junk.clone()),
            ..TlsFiles::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = client_config(&TlsFiles::default()).unwrap_err().to_string();
        assert!(e.contains("fleet.ca"), "{e}");
        let e = options(
            &Broker::parse("mqtt://h").unwrap(),
            &TlsFiles {
                cert: Some(junk.clone()),
                key: Some(junk),
                ca: None,
            },
            "gw",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mqtts://"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
