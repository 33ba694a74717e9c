//! A site for end-to-end tests of the agent's event path: a fixture
//! repository, a real mosquitto broker and `ferry run` with `[rules]`
//! pointing at both, plus MQTT and event-socket helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{FERRY, Fixture};
use crate::mosquitto::Mosquitto;

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mosquitto_sub` or `mosquitto_pub` for `topic` on the broker, QoS 1.
pub fn client(program: &str, broker: &Mosquitto, topic: &str) -> Command {
    let mut c = Command::new(program);
    let port = broker.port.to_string();
    c.args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic]);
    c
}

/// `mosquitto_sub` on `topic`; each message arrives as a line.
pub fn subscribe(broker: &Mosquitto, topic: &str) -> (Proc, mpsc::Receiver<String>) {
    let mut child = client("mosquitto_sub", broker, topic)
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Proc(child), rx)
}

pub fn publish(broker: &Mosquitto, topic: &str, payload: &str) {
    let ok = client("mosquitto_pub", broker, topic)
        .args(["-m", payload])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub failed");
}

/// Sends JSON-lines events to the agent's event socket.
pub fn send(socket: &Path, lines: &[&str]) {
    let mut s = UnixStream::connect(socket).unwrap();
    for l in lines {
        writeln!(s, "{l}").unwrap();
    }
}

pub fn next(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("no MQTT message within 20 s")
}

pub fn nothing_more(rx: &mpsc::Receiver<String>) {
    if let Ok(m) = rx.recv_timeout(Duration::from_millis(500)) {
        panic!("unexpected message {m:?}");
    }
}

pub struct Site {
    pub fx: Fixture,
    pub broker: Mosquitto,
    pub socket: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        let fx = Fixture::new();
        let broker = Mosquitto::start();
        let socket = fx.dir.path().join("events.sock");
        let control = fx.dir.path().join("ferry.sock");
        let mut config = fs::read_to_string(&fx.config).unwrap();
        config.push_str(&format!(
            "[agent]\npoll_interval = \"1h\"\njitter = \"0s\"\ncontrol_socket = {control:?}\n\
             [rules]\nmqtt = \"{}\"\nsocket = {socket:?}\nclient_id = \"ferry-test\"\n",
            broker.url()
        ));
        fs::write(&fx.config, config).unwrap();
        Site { fx, broker, socket }
    }

    /// Publishes a revision whose rule set is `rules` plus a `ping` rule
    /// that answers with `tag` (so tests can tell which set runs).
    pub fn publish_rules(&self, rules: &str, tag: &str) {
        self.publish_with(rules, tag, "");
    }

    /// Like `publish_rules`, with `extra` (YAML list items) appended to the
    /// manifest's resources; their files are written by the caller after.
    pub fn publish_with(&self, rules: &str, tag: &str, extra: &str) {
        let ping = format!(
            r#"RULE ping ON exists(ping) THEN publish("plant/alerts", "pong-{tag} {{ping}}")"#
        );
        self.fx.publish_raw(
            &format!("apiVersion: ferry.dev/v1\nresources:\n  - kind: ruleset\n    name: site\n    source: rules/site.rules\n{extra}"),
            &[("rules/site.rules".to_owned(), format!("{rules}\n{ping}\n"))],
        );
    }

    pub fn start(&self) -> Proc {
        let child = Command::new(FERRY)
            .arg("--config")
            .arg(&self.fx.config)
            .args(["--log-level", "info", "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// Pings through the event socket until the answer comes back over
    /// MQTT from the set tagged `tag`: the agent runs, has connected, and
    /// runs that set.
    pub fn until_running(&self, rx: &mpsc::Receiver<String>, tag: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "the agent's rule engine never answered {tag:?}"
            );
            n += 1;
            if self.socket.exists() && UnixStream::connect(&self.socket).is_ok() {
                send(
                    &self.socket,
                    &[&format!(r#"{{"payload": {{"ping": {n}}}}}"#)],
                );
            }
            if let Ok(m) = rx.recv_timeout(Duration::from_millis(300))
                && m == format!("pong-{tag} {n}")
            {
                // Drain answers to earlier pings.
                while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
                return;
            }
        }
    }
}
