//! Logs: human-readable on stderr (filtered by `--log-level`), and the audit
//! events with structured fields to journald when there is one.

use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::prelude::*;

pub fn init(level: &str) {
    use std::io::IsTerminal;
    let stderr_filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    // Under systemd stderr already goes to the journal; the journald layer
    // sends the same events with structured fields, so plain lines there
    // would only duplicate them.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let stderr = (!under_journal).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .without_time()
            .with_filter(stderr_filter)
    });
    let journald = tracing_journald::layer().ok().map(|l| {
        l.with_syslog_identifier("ferry".to_owned())
            .with_field_prefix(Some("FERRY".to_owned()))
            .with_filter(Targets::new().with_default(LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(journald)
        .try_init();
}
