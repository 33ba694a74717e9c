//! `ferry wasm …`: trying modules before they are signed.

use std::process::ExitCode;

use ferry_wasm::{DirGrant, Limits, RunOptions, WasmError};

use crate::cli::WasmAction;

/// ferry could not run the module (bad flags, unreadable or invalid file).
const EXIT_CANNOT_RUN: u8 = 125;
/// The module trapped (as `wasmtime run`: 128 + SIGABRT).
const EXIT_TRAP: u8 = 134;

pub fn run(action: WasmAction) -> ExitCode {
    match action {
        WasmAction::Run {
            dirs,
            env,
            fuel,
            max_memory_mib,
            clocks,
            file,
            args,
        } => {
            let opts = match options(dirs, env, fuel, max_memory_mib, clocks, file, args) {
                Ok(o) => o,
                Err(message) => {
                    eprintln!("ferry: error: {message}");
                    return ExitCode::from(EXIT_CANNOT_RUN);
                }
            };
            match ferry_wasm::run_command(&opts) {
                // Only the low 8 bits reach the parent, as with exit(3).
                Ok(status) => ExitCode::from(status as u8),
                Err(e @ WasmError::Fault { .. }) => {
                    eprintln!("ferry: error: {e}");
                    ExitCode::from(EXIT_TRAP)
                }
                Err(e) => {
                    eprintln!("ferry: error: {e}");
                    ExitCode::from(EXIT_CANNOT_RUN)
                }
            }
        }
    }
}

fn options(
    dirs: Vec<String>,
    env: Vec<String>,
    fuel: Option<u64>,
    max_memory_mib: u32,
    clocks: bool,
    file: std::path::PathBuf,
    args: Vec<String>,
) -> Result<RunOptions, String> {
    let dirs = dirs
        .into_iter()
        .map(|d| {
            let (host, guest) = match d.split_once("::") {
                Some((h, g)) => (h.to_owned(), g.to_owned()),
                None => (d.clone(), d.clone()),
            };
            if host.is_empty() || guest.is_empty() {
                return Err(format!("--dir {d:?}: expected HOST[::GUEST]"));
            }
            if !std::path::Path::new(&host).is_dir() {
                return Err(format!("--dir {d:?}: {host} is not a directory"));
            }
            Ok(DirGrant {
                host: host.into(),
                guest,
                writable: true,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let env = env
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            Some(_) => Err(format!("--env {e:?}: expected NAME[=VAL]")),
            None => Ok((e.clone(), std::env::var(&e).unwrap_or_default())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(1..=4096).contains(&max_memory_mib) {
        return Err(format!(
            "--max-memory-mib {max_memory_mib}: must be in 1..=4096"
        ));
    }
    Ok(RunOptions {
        file,
        args,
        dirs,
        env,
        limits: Limits {
            memory_mib: max_memory_mib,
            ..Limits::default()
        },
        fuel,
        clocks,
    })
}
