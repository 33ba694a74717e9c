//! `integration/modbus/sim.py` (a pymodbus device) from Rust tests: started
//! on a port, its register writes arriving as "ADDRESS VALUE" lines, killed
//! when dropped. Included with `#[path]` by the tests that use it.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The fixture venv's Python (with pymodbus) that `integration/run-tests`
/// sets up, or `FERRY_TEST_PYTHON`.
pub fn python() -> PathBuf {
    let p = std::env::var_os("FERRY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/fixture-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run integration/run-tests, which creates the fixture venv with pymodbus",
        p.display()
    );
    p
}

/// The workspace root: two levels above any member crate.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Sim {
    child: Child,
    pub writes: mpsc::Receiver<String>,
}

impl Sim {
    pub fn start(port: u16) -> Sim {
        let mut child = Command::new(python())
            .arg(root().join("integration/modbus/sim.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, writes) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                if line.starts_with("listening") {
                    let _ = ready_tx.send(());
                } else if let Some(w) = line.strip_prefix("write ") {
                    let _ = tx.send(w.to_owned());
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(30))
            .expect("sim.py did not start");
        Sim { child, writes }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
