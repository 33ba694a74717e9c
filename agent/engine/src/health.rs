//! Health checks after a boot into new firmware, and the reboot command.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::HealthConfig;

/// Runs every `[[health.check]]`; the first failure says which and why.
pub fn run(config: &HealthConfig) -> Result<(), String> {
    for check in &config.check {
        let label = check.command.join(" ");
        let mut child = Command::new(&check.command[0])
            .args(&check.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{label}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(check.timeout_secs);
        let status = loop {
            match child.try_wait().map_err(|e| format!("{label}: {e}"))? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{label}: no answer within {} s",
                        check.timeout_secs
                    ));
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if !status.success() {
            return Err(format!("{label}: {status}"));
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
