//! A real `mosquitto` broker on a free loopback port, for the rule engine's
//! tests. Stopped (killed) when dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "mosquitto is not installed (integration/run-tests installs it: apt-get install mosquitto mosquitto-clients)"
    );
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Unlimited queues: the tests count every message, and a broker that
        // dropped some under load would make them fail for the wrong reason.
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\n"
        );
        Mosquitto::launch(dir, port, &conf)
    }

    /// Starts mosquitto on `port` with `conf` (written into `dir`, which
    /// the broker keeps for its persistence file and certificates). As
    /// root, mosquitto keeps running as root (it would otherwise switch to
    /// its own user, which cannot read a test's private directory).
    pub fn launch(dir: tempfile::TempDir, port: u16, conf: &str) -> Mosquitto {
        let path = dir.path().join("mosquitto.conf");
        let user = if running_as_root() { "user root\n" } else { "" };
        std::fs::write(&path, format!("{user}{conf}")).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            port,
            child,
            _dir: dir,
        }
    }

    /// Stops the broker as an operator would (SIGTERM: it saves its
    /// retained messages when persistence is on); returns its directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        // Swap the directory out (Drop still runs on `self`).
        std::mem::replace(&mut self._dir, dir)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
