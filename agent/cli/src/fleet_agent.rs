//! The fleet channel in `ferry run` (`[fleet]`): the agent's answers to
//! [`ferry_fleet::channel::Host`]. A nudge becomes the worker's "reconcile
//! now"; the device's state is read by a `ferry fleet report` child process
//! (the agent itself never opens the state database), and the agent adds
//! its own view (reconciling or idle, health, last error).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_core::agent::ReconcileResult;
use ferry_engine::Config;
use ferry_fleet::broker::{Broker, TlsFiles};
use ferry_fleet::channel::{AgentView, Channel, Host, Options};
use ferry_fleet::message::{Health, ReportPage};
use ferry_fleet::settings::FleetSettings;
use ferry_fleet::topics::Topics;

use crate::shared::{Msg, Shared};

/// The longest a `ferry fleet report` child may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

struct AgentHost {
    tx: Mutex<mpsc::Sender<Msg>>,
    shared: Arc<Mutex<Shared>>,
    /// `ferry --config … fleet report` (the rest of the arguments added per call).
    report: crate::child::CommandFactory,
    state_dir: PathBuf,
    /// The last report and what it was read from: while the state
    /// database is unchanged, the same question has the same answer and no
    /// process is started for it.
    cache: Mutex<Option<(Stamp, ReportPage)>>,
}

/// The question and the state database's files as they were when it was
/// answered (size and modification time of `state.db` and its WAL).
type Stamp = (u64, usize, [(u64, i64, i64); 2]);

impl AgentHost {
    fn stamp(&self, after: u64, limit: usize) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        let file = |name: &str| {
            std::fs::metadata(self.state_dir.join(name))
                .map_or((0, 0, 0), |m| (m.size(), m.mtime(), m.mtime_nsec()))
        };
        (after, limit, [file("state.db"), file("state.db-wal")])
    }

    /// `ferry fleet report` in a child process.
    fn read_child(&self, after: u64, limit: usize) -> Result<ReportPage, String> {
        let mut cmd = (self.report)();
        cmd.args(["fleet", "report", "--after"])
            .arg(after.to_string())
            .arg("--limit")
            .arg(limit.to_string());
        let (stdout, status, killed) = crate::child::run_with_deadline(cmd, REPORT_TIMEOUT)
            .map_err(|e| format!("cannot start ferry fleet report: {e}"))?;
        if killed {
            return Err(format!(
                "ferry fleet report took longer than {} s",
                REPORT_TIMEOUT.as_secs()
            ));
        }
        if !status.success() {
            return Err(format!("ferry fleet report failed ({status})"));
        }
        let line = stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default();
        serde_json::from_slice(line).map_err(|e| format!("ferry fleet report: {e}"))
    }
}

impl Host for AgentHost {
    fn poll_now(&self) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(Msg::Nudge);
    }

    fn read(&self, after: u64, limit: usize) -> Result<ReportPage, String> {
        let stamp = self.stamp(after, limit);
        if let Some((s, page)) = &*self.cache.lock().unwrap_or_else(|p| p.into_inner())
            && *s == stamp
        {
            return Ok(page.clone());
        }
        let page = self.read_child(after, limit)?;
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((stamp, page.clone()));
        Ok(page)
    }

    fn agent(&self) -> AgentView {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let health = match s.last_outcome {
            None => Health::Unknown,
            Some(ReconcileResult::Failed) => Health::Failing,
            Some(ReconcileResult::RolledBack) => Health::RolledBack,
            Some(_) => Health::Ok,
        };
        AgentView {
            state: s.agent.state.clone(),
            health,
            last_error: s.agent.last_error.clone(),
        }
    }
}

/// Where the channel keeps the newest acknowledged audit seq.
pub fn cursor_file(config: &Config) -> PathBuf {
    config.state_dir.join("fleet-reported")
}

/// Starts the channel when `[fleet] broker` is set. `f` is `[fleet]` as
/// checked at load; `facts` gives the hostname and labels the device id,
/// group and site default to; `report` makes a `ferry` command with the
/// agent's configuration.
pub fn start(
    config: &Config,
    f: &FleetSettings,
    facts: &ferry_engine::render::facts::Facts,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::Sender<Msg>,
    report: crate::child::CommandFactory,
) -> Result<Option<Channel>> {
    let Some(url) = &f.broker else {
        return Ok(None);
    };
    let device = f
        .device_id
        .clone()
        .or_else(|| facts.hostname.clone())
        .context("fleet.device_id is not set and the device has no hostname")?;
    let group = f
        .group
        .clone()
        .or_else(|| facts.labels.get("group").cloned());
    let site = f.site.clone().or_else(|| facts.labels.get("site").cloned());
    let topics = Topics::new(&f.topic_prefix, &device, group.as_deref(), site.as_deref())
        .context("fleet topics (fleet.device_id, or the hostname and the labels group and site)")?;
    let times = f.times()?;
    let options = Options {
        broker: Broker::parse(url)?,
        tls: TlsFiles {
            ca: f.ca.clone(),
            cert: f.cert.clone(),
            key: f.key.clone(),
        },
        topics,
        nudge_interval: times.nudge_interval,
        report_interval: times.report_interval,
        page: f.audit_page,
        cursor: cursor_file(config),
    };
    let host = AgentHost {
        tx: Mutex::new(tx),
        shared,
        report,
        state_dir: config.state_dir.clone(),
        cache: Mutex::new(None),
    };
    let channel = Channel::start(options, Arc::new(host)).context("starting the fleet channel")?;
    tracing::info!(broker = %url, device = %device, "fleet channel started");
    Ok(Some(channel))
}
