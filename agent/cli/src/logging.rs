//! Logs: human-readable on stderr (filtered by `--log-level`, default
//! warn), and the same events with structured fields to journald when
//! there is one (filtered by `--log-level` too, default info; audit events
//! always).

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Layer, Registry};

/// The filter for `level` (a level or tracing directives), or `default`
/// when none was given or it does not parse.
fn filter(level: Option<&str>, default: &str, extra: &str) -> EnvFilter {
    let directives = format!("{}{extra}", level.unwrap_or(default));
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(format!("{default}{extra}")))
}

pub fn init(level: Option<&str>) {
    use std::io::IsTerminal;
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if let Ok(journald) = tracing_journald::layer() {
        layers.push(Box::new(
            journald
                .with_syslog_identifier("ferry".to_owned())
                .with_field_prefix(Some("FERRY".to_owned()))
                .with_filter(filter(level, "info", ",ferry::audit=info")),
        ));
    }
    // Under systemd stderr already goes to the journal; the journald layer
    // sends the same events with structured fields, so plain lines there
    // would only duplicate them. Without a journal socket they would
    // vanish instead: then stderr it is.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if !under_journal || layers.is_empty() {
        // A terminal shows the time already; a log file or a pipe needs it.
        let terminal = std::io::stderr().is_terminal();
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(terminal)
            .with_target(false);
        let filter = filter(level, "warn", "");
        layers.push(if terminal {
            Box::new(stderr.without_time().with_filter(filter))
        } else {
            Box::new(stderr.with_filter(filter))
        });
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
}
