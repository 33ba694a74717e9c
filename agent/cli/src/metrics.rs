//! The agent's metrics (`[metrics] listen`), encoded by `prometheus-client`
//! in the OpenMetrics text format from a snapshot of the agent's state.

#[cfg_attr(not(any(feature = "rules", feature = "fleet")), allow(unused_imports))]
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ferry_core::agent::ReconcileResult;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::shared::EventPath;
use crate::shared::Shared;

/// The `Content-Type` of [`text`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn counter(registry: &mut Registry, name: &str, help: &str, v: u64) {
    registry.register(name, help, ConstCounter::new(v));
}

fn gauge(registry: &mut Registry, name: &str, help: &str, v: u64) {
    registry.register(
        name,
        help,
        ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
    );
}

/// The metrics text for one scrape. Counter names get their `_total`
/// suffix from the encoder (`ferry_reconciles` → `ferry_reconciles_total`).
pub fn text(
    s: &Shared,
    events: Option<&EventPath>,
    fleet: Option<&crate::shared::FleetChannel>,
) -> String {
    let mut registry = Registry::default();
    let reconciles = Family::<Vec<(String, String)>, Counter>::default();
    for result in ReconcileResult::ALL {
        let n = s.metrics.reconciles.get(&result).copied().unwrap_or(0);
        reconciles
            .get_or_create(&vec![("result".to_owned(), result.as_str().to_owned())])
            .inc_by(n);
    }
    registry.register("ferry_reconciles", "Reconciles by result.", reconciles);
    gauge(
        &mut registry,
        "ferry_last_success_timestamp_seconds",
        "Time of the last successful reconcile.",
        s.metrics.last_success.unwrap_or(0),
    );
    gauge(
        &mut registry,
        "ferry_current_generation",
        "The current generation.",
        s.agent.generation.unwrap_or(0),
    );
    counter(
        &mut registry,
        "ferry_fetched_bytes",
        "Bytes fetched from sources.",
        s.fetched_bytes,
    );
    counter(
        &mut registry,
        "ferry_rollbacks",
        "Automatic rollbacks after failed health checks.",
        s.metrics.rollbacks,
    );
    counter(
        &mut registry,
        "ferry_unchanged_polls",
        "Polls a 304 Not Modified for timestamp.json ended without a reconcile (also counted as no_change reconciles).",
        s.metrics.unchanged_polls,
    );
    counter(
        &mut registry,
        "ferry_activation_errors",
        "Reconciles that failed in an activator.",
        s.metrics.activation_errors,
    );
    #[cfg(not(feature = "rules"))]
    let _ = events;
    #[cfg(feature = "rules")]
    if let Some(ep) = events {
        let st = ep.rules.stats();
        #[cfg(feature = "wasm")]
        {
            let ws = ep.modules.service().stats();
            let stats: [(&str, &str, &AtomicU64); 6] = [
                (
                    "ferry_wasm_calls",
                    "Calls of WASM module exports.",
                    &ws.calls,
                ),
                (
                    "ferry_wasm_call_errors",
                    "Calls that failed (status, fault, no such module or export).",
                    &ws.errors,
                ),
                (
                    "ferry_wasm_faults",
                    "Calls stopped by a trap, fuel or memory limit (instance discarded).",
                    &ws.faults,
                ),
                (
                    "ferry_wasm_instantiations",
                    "Module instances created (one per module, again after a fault).",
                    &ws.instantiations,
                ),
                ("ferry_wasm_swaps", "Module set swaps.", &ws.swaps),
                (
                    "ferry_wasm_refused",
                    "Calls refused because 64 MiB of input was already waiting.",
                    &ws.refused,
                ),
            ];
            for (name, help, v) in stats {
                counter(&mut registry, name, help, v.load(Relaxed));
            }
        }
        let stats: [(&str, &str, &AtomicU64); 7] = [
            (
                "ferry_rules_events",
                "Events evaluated by the rule engine.",
                &st.events,
            ),
            (
                "ferry_rules_bad_events",
                "Bad event lines, and payloads that are not JSON objects (evaluated with every field missing).",
                &st.bad_events,
            ),
            ("ferry_rules_fired", "Rule firings.", &st.fired),
            (
                "ferry_rules_actions",
                "Actions produced by rules.",
                &st.actions,
            ),
            (
                "ferry_rules_action_errors",
                "Actions that failed (publish, call).",
                &st.action_errors,
            ),
            ("ferry_rules_swaps", "Rule set swaps.", &st.swaps),
            (
                "ferry_rules_dropped_actions",
                "Actions dropped because 64 MiB of actions were already waiting to be published.",
                &st.dropped_actions,
            ),
        ];
        for (name, help, v) in stats {
            counter(&mut registry, name, help, v.load(Relaxed));
        }
        #[cfg(feature = "ingest")]
        {
            let sources = ep.ingest.lock().unwrap_or_else(|p| p.into_inner()).clone();
            ingest_metrics(&mut registry, &sources);
        }
    }
    #[cfg(not(feature = "fleet"))]
    let _ = fleet;
    #[cfg(feature = "fleet")]
    if let Some(f) = fleet {
        let st = f.stats();
        gauge(
            &mut registry,
            "ferry_fleet_connected",
            "1 while connected to the fleet broker.",
            u64::from(st.connected.load(Relaxed)),
        );
        let nudges = Family::<Vec<(String, String)>, Counter>::default();
        for (outcome, v) in [
            ("polled", &st.nudges_polled),
            ("deferred", &st.nudges_deferred),
            ("coalesced", &st.nudges_coalesced),
        ] {
            nudges
                .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
                .inc_by(v.load(Relaxed));
        }
        registry.register(
            "ferry_fleet_nudges",
            "Nudges by what they did: a poll now, one poll at the end of the nudge interval, nothing more.",
            nudges,
        );
        let stats: [(&str, &str, &AtomicU64); 5] = [
            (
                "ferry_fleet_deferred_polls",
                "Polls that deferred nudges caused.",
                &st.deferred_polls,
            ),
            (
                "ferry_fleet_connection_failures",
                "Fleet broker connections that failed or ended.",
                &st.connection_failures,
            ),
            (
                "ferry_fleet_statuses",
                "Status messages published.",
                &st.statuses,
            ),
            (
                "ferry_fleet_audit_entries_reported",
                "Audit entries the fleet broker acknowledged.",
                &st.entries_reported,
            ),
            (
                "ferry_fleet_connections",
                "Fleet broker connections made.",
                &st.connections,
            ),
        ];
        for (name, help, v) in stats {
            counter(&mut registry, name, help, v.load(Relaxed));
        }
        gauge(
            &mut registry,
            "ferry_fleet_audit_reported_seq",
            "The newest audit entry the fleet broker acknowledged.",
            st.reported_seq.load(Relaxed),
        );
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// The field sources' counters: CoAP by outcome, Modbus per device.
#[cfg(feature = "ingest")]
fn ingest_metrics(registry: &mut Registry, sources: &ferry_ingest::Snapshot) {
    if let Some(c) = &sources.coap {
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        for (outcome, v) in [
            ("queued", &c.events),
            ("duplicate", &c.duplicates),
            ("malformed", &c.malformed),
            ("rejected", &c.rejected),
            ("overloaded", &c.overloaded),
            ("block", &c.blocks),
        ] {
            requests
                .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
                .inc_by(v.load(Relaxed));
        }
        registry.register(
            "ferry_coap_messages",
            "CoAP messages by outcome: queued as an event, duplicate (answered again), malformed (dropped or reset), rejected (4.xx), overloaded (5.03, queue full), block (2.31 Continue).",
            requests,
        );
    }
    if sources.devices.is_empty() {
        return;
    }
    type Get = fn(&ferry_ingest::modbus::DeviceStats) -> u64;
    let families: [(&str, &str, Get); 6] = [
        ("ferry_modbus_reads", "Register blocks read.", |s| {
            s.reads.load(Relaxed)
        }),
        (
            "ferry_modbus_failures",
            "Failed Modbus requests and connections.",
            |s| s.failures.load(Relaxed),
        ),
        ("ferry_modbus_writes", "Register writes attempted.", |s| {
            s.writes.load(Relaxed)
        }),
        (
            "ferry_modbus_write_errors",
            "Register writes that failed.",
            |s| s.write_errors.load(Relaxed),
        ),
        (
            "ferry_modbus_bad_answers",
            "Answers that were not what the request asked for (another function, too few items, a wrong echo).",
            |s| s.bad_answers.load(Relaxed),
        ),
        (
            "ferry_modbus_outages",
            "Times a device stopped answering (one alert each).",
            |s| s.outages.load(Relaxed),
        ),
    ];
    for (name, help, get) in families {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        for (device, st) in &sources.devices {
            family
                .get_or_create(&vec![("device".to_owned(), device.clone())])
                .inc_by(get(st));
        }
        registry.register(name, help, family);
    }
    let up = Family::<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>::default();
    for (device, st) in &sources.devices {
        up.get_or_create(&vec![("device".to_owned(), device.clone())])
            .set(i64::from(st.up.load(Relaxed)));
    }
    registry.register("ferry_modbus_up", "1 while the device answers.", up);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_result_and_ends_as_openmetrics_does() {
        let mut s = Shared::default();
        s.metrics.reconciles.insert(ReconcileResult::Applied, 3);
        s.metrics.rollbacks = 1;
        s.agent.generation = Some(4);
        let t = text(&s, None, None);
        assert!(
            t.contains("ferry_reconciles_total{result=\"applied\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("ferry_reconciles_total{result=\"failed\"} 0\n"),
            "{t}"
        );
        assert!(t.contains("ferry_rollbacks_total 1\n"), "{t}");
        assert!(t.contains("ferry_current_generation 4\n"), "{t}");
        assert!(t.contains("# TYPE ferry_reconciles counter\n"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }
}
