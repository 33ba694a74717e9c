//! `ferry`: the command-line interface and (later) the daemon.

mod cli;
mod commands;
mod demo;
mod exit;
mod logging;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    logging::init(&args.log_level);
    #[cfg(feature = "failpoints")]
    let _failpoints = arm_failpoints();
    match commands::run(args) {
        Ok(code) => code.into(),
        Err(e) => {
            let code = exit::Code::of(&e);
            eprintln!("ferry: error: {}", exit::one_line(&e));
            code.into()
        }
    }
}

/// Test builds only: `FAILPOINTS` (the fail crate's syntax) injects errors,
/// and `FERRY_CRASH_AT=<failpoint>:abort|hang` crashes the process there:
/// `abort` calls abort(3); `hang` prints a line to stderr and waits to be
/// killed, so a test can SIGKILL the process at exactly that step.
#[cfg(feature = "failpoints")]
fn arm_failpoints() -> fail::FailScenario<'static> {
    let scenario = fail::FailScenario::setup();
    if let Ok(spec) = std::env::var("FERRY_CRASH_AT") {
        let (name, mode) = spec.split_once(':').unwrap_or((spec.as_str(), "abort"));
        let label = name.to_owned();
        let hang = mode == "hang";
        fail::cfg_callback(name, move || {
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
