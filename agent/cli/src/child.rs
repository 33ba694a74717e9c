//! Child processes of the agent (reconciles, fleet reports): run with a
//! deadline, stdout read bounded.

use std::time::{Duration, Instant};

/// Makes a `ferry` command as the agent runs its children.
#[cfg(any(feature = "fleet", feature = "rules"))]
pub type CommandFactory = Box<dyn Fn() -> std::process::Command + Send + Sync>;

/// Most bytes of a child's stdout read (its report: one JSON line).
const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// Runs `cmd` (stderr inherited), killing it after `timeout`. Returns its
/// stdout (bounded), exit status and whether it was killed.
pub fn run_with_deadline(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> std::io::Result<(Vec<u8>, std::process::ExitStatus, bool)> {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.take(MAX_OUTPUT_BYTES).read_to_end(&mut out);
        out
    });
    let end = Instant::now() + timeout;
    let (status, killed) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if Instant::now() >= end {
            tracing::error!(
                pid = child.id(),
                timeout_secs = timeout.as_secs(),
                "child process past its deadline; killing it"
            );
            let _ = child.kill();
            break (child.wait()?, true);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    Ok((out, status, killed))
}
