//! What the agent's threads share: the worker's inbox and the state that
//! `ferry status`, the control socket and the metrics endpoint read.

use std::time::Instant;

/// Messages to the worker.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Reconcile now (`ferry apply --now`): a full reconcile.
    Now,
    /// A fleet nudge: poll now (a conditional poll may end it early).
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    Nudge,
    /// The drift watch saw a managed file change: a full reconcile.
    Drift,
    /// Reload the configuration, then reconcile (SIGHUP).
    Reload,
    /// Finish and exit (SIGTERM, SIGINT).
    Stop,
}

/// The fleet channel's handle in the agent.
#[cfg(feature = "fleet")]
pub type FleetChannel = ferry_fleet::channel::Channel;

/// Without the `fleet` feature there is no channel: an `Option` of it is
/// always `None` (a `[fleet]` broker is refused at load).
#[cfg(not(feature = "fleet"))]
#[derive(Clone, Debug)]
pub enum FleetChannel {}

#[cfg(not(feature = "fleet"))]
impl FleetChannel {
    pub fn changed(&self) {
        match *self {}
    }
}

/// The agent's event path (rule engine, module host, field sources).
#[cfg(feature = "rules")]
pub type EventPath = crate::rules_agent::EventPath;

/// Without the `rules` feature there is no event path (a `[rules]` input or
/// a `ruleset` resource is refused when read).
#[cfg(not(feature = "rules"))]
#[derive(Clone, Debug)]
pub enum EventPath {}

/// What the daemon tells `ferry status` ([`Shared::status`]) and the
/// metrics endpoint.
#[derive(Debug, Default, Clone)]
pub struct Shared {
    /// What `ferry status` shows of the agent.
    pub agent: ferry_core::control::AgentStatus,
    /// When the running reconcile started (for the watchdog).
    pub reconcile_started: Option<Instant>,
    pub metrics: Metrics,
    pub fetched_bytes: u64,
    /// What the last reconcile did (the fleet status's health).
    pub last_outcome: Option<ferry_core::agent::ReconcileResult>,
}

#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub reconciles: std::collections::HashMap<ferry_core::agent::ReconcileResult, u64>,
    pub last_success: Option<u64>,
    pub rollbacks: u64,
    pub activation_errors: u64,
    /// Polls a `304 Not Modified` ended without a reconcile process.
    pub unchanged_polls: u64,
}

impl Shared {
    /// What the control socket answers to `status`.
    pub fn status(&self) -> ferry_core::control::AgentStatus {
        self.agent.clone()
    }
}
