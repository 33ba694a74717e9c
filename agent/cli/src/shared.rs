//! What the agent's threads share: the worker's inbox and the state that
//! `ferry status`, the control socket and the metrics endpoint read.

use std::time::Instant;

/// Messages to the worker.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Reconcile now (`ferry apply --now`).
    Now,
    /// Reload the configuration, then reconcile (SIGHUP).
    Reload,
    /// Finish and exit (SIGTERM, SIGINT).
    Stop,
}

/// What the daemon tells `ferry status` ([`Shared::status`]) and the
/// metrics endpoint.
#[derive(Debug, Default, Clone)]
pub struct Shared {
    pub pid: u32,
    pub started: u64,
    pub state: String,
    pub last_poll: Option<u64>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    /// Why the last reload was refused (cleared by a good one).
    pub config_error: Option<String>,
    pub next_poll: Option<u64>,
    pub revision: Option<String>,
    pub generation: Option<u64>,
    pub consecutive_failures: u32,
    /// When the running reconcile started (for the watchdog).
    pub reconcile_started: Option<Instant>,
    pub metrics: Metrics,
    pub fetched_bytes: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub reconciles: std::collections::HashMap<ferry_core::agent::ReconcileResult, u64>,
    pub last_success: Option<u64>,
    pub rollbacks: u64,
    pub activation_errors: u64,
}

impl Shared {
    /// What the control socket answers to `status`.
    pub fn status(&self) -> ferry_core::control::AgentStatus {
        ferry_core::control::AgentStatus {
            pid: self.pid,
            started: self.started,
            state: self.state.clone(),
            last_poll: self.last_poll,
            last_result: self.last_result.clone(),
            last_error: self.last_error.clone(),
            config_error: self.config_error.clone(),
            next_poll: self.next_poll,
            revision: self.revision.clone(),
            generation: self.generation,
            consecutive_failures: self.consecutive_failures,
        }
    }
}
