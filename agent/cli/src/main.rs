//! `ferry`: the command-line interface and the agent (`ferry run`).
// `deny`, not `forbid`: memory.rs has the one audited `unsafe` call.
#![deny(unsafe_code)]

mod child;
mod cli;
mod commands;
mod control;
mod daemon;
#[cfg(feature = "tuf")]
mod demo;
#[cfg(feature = "tuf")]
mod demo_repo;
mod drift_watch;
mod exit;
#[cfg(feature = "fleet")]
mod fleet;
#[cfg(feature = "fleet")]
mod fleet_agent;
mod import;
mod logging;
mod memory;
mod metrics;
mod notify;
mod output;
mod probe;
mod reconcile;
mod rules;
#[cfg(feature = "rules")]
mod rules_agent;
mod setup;
mod shared;
#[cfg(feature = "sigstore")]
mod sigstore;
#[cfg(feature = "wasm")]
mod wasm;
#[cfg(feature = "wasm")]
mod wasm_agent;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    quiet_when_stdout_closes();
    let args = cli::Cli::parse();
    logging::init(args.log_level.as_deref());
    let _failpoints = ferry_engine::failpoints::ENABLED.then(arm_failpoints);
    #[cfg(feature = "wasm")]
    if let cli::Command::Wasm { action } = args.command {
        return wasm::run(action);
    }
    match commands::run(args) {
        Ok(code) => code.into(),
        Err(e) => {
            let broken_pipe = e.chain().any(|c| {
                let kind = c
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        c.downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    });
                kind == Some(std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe && stdout_closed() {
                die_of_sigpipe();
            }
            let code = exit::Code::of(&e);
            eprintln!("ferry: error: {}", exit::one_line(&e));
            code.into()
        }
    }
}

/// `ferry audit list | head`: when the reader of stdout goes away, end
/// quietly the way coreutils do (killed by SIGPIPE), not with a panic
/// (`println!`) or an error message. SIGPIPE itself stays ignored, as Rust
/// sets it: ferry writes to pipes of child processes (git transports,
/// health checks) and to sockets, where a closed peer is an error to
/// handle, not a reason to die.
fn quiet_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && stdout_closed() {
            die_of_sigpipe();
        }
        default(info);
    }));
}

/// Whether stdout is a pipe or socket whose reader has gone.
fn stdout_closed() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&zero)).is_ok()
        && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
}

/// Ends the process as a write to a closed pipe ends coreutils.
#[allow(unsafe_code)]
fn die_of_sigpipe() -> ! {
    use nix::sys::signal::{SigHandler, Signal, raise, signal};
    // SAFETY: SIG_DFL installs no handler, so no handler code can run; the
    // process ends right after, by that very signal.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = raise(Signal::SIGPIPE);
    std::process::exit(141)
}

/// Test builds only (the engine's `failpoints` feature): `FAILPOINTS` (the
/// fail crate's syntax) injects errors, and
/// `FERRY_CRASH_AT=<failpoint>:abort|hang[:N]` crashes the process at the Nth
/// time (default 1st) it reaches that failpoint: `abort` calls abort(3);
/// `hang` prints a line to stderr and waits to be killed, so a test can
/// SIGKILL the process at exactly that step; `stall` prints the line, waits
/// three seconds and carries on (a test changes the world meanwhile, e.g.
/// pulls a USB stick).
fn arm_failpoints() -> fail::FailScenario<'static> {
    let scenario = fail::FailScenario::setup();
    if let Ok(spec) = std::env::var("FERRY_CRASH_AT") {
        // Failpoint names contain `::`: split from the right.
        let (rest, nth) = match spec.rsplit_once(':') {
            Some((rest, n)) if n.parse::<usize>().is_ok() => (rest, n.parse().unwrap_or(1)),
            _ => (spec.as_str(), 1),
        };
        let (name, mode) = rest.rsplit_once(':').unwrap_or((rest, "abort"));
        let (hang, stall) = (mode == "hang", mode == "stall");
        let label = name.to_owned();
        let hits = std::sync::atomic::AtomicUsize::new(0);
        fail::cfg_callback(name, move || {
            if hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 < nth {
                return;
            }
            if stall {
                eprintln!("ferry: failpoint {label} reached");
                std::thread::sleep(std::time::Duration::from_secs(3));
                return;
            }
            if hang {
                eprintln!("ferry: failpoint {label} reached");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            std::process::abort();
        })
        .expect("FERRY_CRASH_AT names a failpoint");
    }
    scenario
}
