//! Health checks (after a switch, and after a boot into new firmware), and
//! the reboot command.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::HealthConfig;

ferry_core::message_error! {
    /// Why the device is not healthy: the failing check and what it said.
    Unhealthy
}

/// Runs the checks again and again until all pass or `deadline` passes;
/// the error is the last failure.
pub fn wait_healthy(
    config: &HealthConfig,
    deadline: Instant,
    pause: Duration,
) -> Result<(), Unhealthy> {
    loop {
        match run(config) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + pause >= deadline => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "health check not passing yet");
                std::thread::sleep(pause);
            }
        }
    }
}

fn check_url(url: &str, timeout: Duration) -> Result<(), Unhealthy> {
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .tls_certs_only(std::iter::empty())
        .build()
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = client.get(url).send().map_err(|e| format!("{url}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {}", resp.status()).into())
    }
}

/// Runs every `[[health.check]]`; the first failure says which and why.
pub fn run(config: &HealthConfig) -> Result<(), Unhealthy> {
    for check in &config.check {
        if let Some(url) = &check.url {
            check_url(url, check.timeout())?;
            continue;
        }
        let command: Vec<String> = match &check.unit {
            Some(unit) => vec![
                "systemctl".into(),
                "is-active".into(),
                "--quiet".into(),
                unit.clone(),
            ],
            None => check.command.clone(),
        };
        let label = command.join(" ");
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{label}: {e}"))?;
        let deadline = Instant::now() + check.timeout();
        let status = loop {
            match child.try_wait().map_err(|e| format!("{label}: {e}"))? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{label}: no answer within {:?}", check.timeout()).into());
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if !status.success() {
            return Err(format!("{label}: {status}").into());
        }
    }
    Ok(())
}

/// Runs the configured reboot command; failures are logged (the operator
/// or the watchdog reboots then).
pub fn reboot(command: &[String]) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    tracing::warn!(command = %command.join(" "), "rebooting");
    match Command::new(program).args(args).status() {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::error!(%s, "reboot command failed"),
        Err(e) => tracing::error!(error = %e, "reboot command could not run"),
    }
}
