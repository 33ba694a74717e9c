//! The fleet channel end to end with a real mosquitto: a push to a signed
//! git repository nudges devices through the shipped post-receive hook and
//! they apply it at once, while forged nudges cost at most one poll; a USB
//! import and a rollback made while the broker is down reach the fleet
//! once, in order, with their chain verified by `ferry fleet audit`; over
//! TLS with client certificates, the shipped ACL keeps each device to its
//! own topics.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/gitrepo.rs"]
mod gitrepo;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/nginx.rs"]
mod nginx;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tuf::Device;
use common::{FERRY, Fixture, file, stderr};
use gitrepo::{Keys, Repo};
use mosquitto::{Mosquitto, free_port};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Agent {
    fn start(config: &Path) -> Agent {
        Agent(
            Command::new(FERRY)
                .arg("--config")
                .arg(config)
                .args(["--log-level", "info", "run"])
                .env_remove("FAILPOINTS")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `[agent]` (polls only when nudged or once an hour), `[metrics]` and
/// `[fleet]` for a test device; returns the text and the metrics port.
fn agent_config(dir: &Path, broker: &str, fleet: &str) -> (String, u16) {
    let port = free_port();
    let sock = dir.join("ferry.sock");
    (
        format!(
            "[agent]\npoll_interval = \"1h\"\njitter = \"0s\"\ncontrol_socket = {sock:?}\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n\
             [fleet]\nbroker = {broker:?}\n{fleet}\n"
        ),
        port,
    )
}

/// The agent's metrics text.
fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// The sum of a metric's samples whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn reconciles(port: u16) -> u64 {
    metric(&metrics(port), "ferry_reconciles_total", "")
}

fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap()
}

/// The newest audit seq of a device, and the seq its fleet channel has had
/// acknowledged.
fn audit_head(fx: &Fixture) -> u64 {
    let entries = fx.json(&["audit", "list", "--json"]);
    entries.as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap()
}

fn reported(fx: &Fixture) -> u64 {
    fs::read_to_string(fx.state.join("fleet-reported"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn fleet(args: &[&str]) -> Output {
    Command::new(FERRY)
        .arg("fleet")
        .args(args)
        .output()
        .unwrap()
}

fn fleet_json(args: &[&str]) -> serde_json::Value {
    let out = fleet(args);
    assert!(
        out.status.success(),
        "ferry fleet {args:?}: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn images_fleet(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../images/fleet")
        .join(name)
}

#[test]
fn a_push_nudges_the_device_at_once_and_forged_nudges_cost_one_poll() {
    let mq = Mosquitto::start();
    let fx = Fixture::new();
    let keys = Keys::new(fx.dir.path());
    let repo = Repo::new(fx.dir.path(), &keys);
    // The shipped hook, set up as its comment says.
    let hook = repo.bare.join("hooks/post-receive");
    fs::copy(images_fleet("post-receive"), &hook).unwrap();
    for (k, v) in [
        ("ferry.mqttHost", "127.0.0.1".to_owned()),
        ("ferry.mqttPort", mq.port.to_string()),
        ("ferry.nudgeTopic", "ferry/nudge/group/line-3".to_owned()),
    ] {
        gitrepo::run(
            Command::new("git")
                .arg("--git-dir")
                .arg(&repo.bare)
                .args(["config", k, &v]),
        );
    }
    let manifest = "apiVersion: ferry.dev/v1\nresources:\n  - kind: file\n    path: /etc/app/site.conf\n    source: site.conf\n";
    repo.write("ferry.yaml", manifest);
    repo.write("site.conf", "threshold = 80\n");
    repo.write(
        "ferry/signers.toml",
        &format!(
            "[[signer]]\nname = \"fleet-admins\"\nkeys = [{:?}]\npaths = [\"**\"]\n",
            keys.admin.policy_id()
        ),
    );
    let first = repo.commit("initial", Some(&keys.admin));
    repo.push(&first);

    let (agent_toml, mport) = agent_config(
        fx.dir.path(),
        &mq.url(),
        "device_id = \"gw1\"\ngroup = \"line-3\"\nnudge_interval = \"2s\"\n",
    );
    fs::write(
        &fx.config,
        format!(
            "state_dir = {:?}\n[source]\nkind = \"git\"\n[source.git]\nurl = \"file://{}\"\ntrust_dir = {:?}\n\
             [files]\nroot = {:?}\n{agent_toml}",
            fx.state,
            repo.bare.display(),
            keys.trust_dir(),
            fx.root
        ),
    )
    .unwrap();
    let site = fx.root.join("etc/app/site.conf");
    let _agent = Agent::start(&fx.config);
    // The agent reconciles once at start, then only when nudged (or hourly).
    wait_for("the first revision", Duration::from_secs(30), || {
        fs::read_to_string(&site).is_ok_and(|s| s == "threshold = 80\n")
    });
    wait_for("the fleet connection", Duration::from_secs(10), || {
        metric(&metrics(mport), "ferry_fleet_connected", "") == 1
    });
    wait_for(
        "the first reconcile's count",
        Duration::from_secs(10),
        || reconciles(mport) == 1,
    );

    // Push: the hook nudges the group, the device pulls and verifies.
    repo.write("site.conf", "threshold = 85\n");
    let second = repo.commit("raise the threshold", Some(&keys.admin));
    let push = repo
        .git()
        .args(["push", "-f"])
        .arg(&repo.bare)
        .arg(format!("{second}:refs/heads/main"))
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", stderr(&push));
    assert!(
        stderr(&push).contains("ferry: nudged ferry/nudge/group/line-3"),
        "the hook reports its nudge: {}",
        stderr(&push)
    );
    wait_for("the pushed revision", Duration::from_secs(30), || {
        fs::read_to_string(&site).is_ok_and(|s| s == "threshold = 85\n")
    });
    let text = metrics(mport);
    assert_eq!(
        metric(&text, "ferry_fleet_nudges_total", "polled"),
        1,
        "{text}"
    );
    let gens = fx.generation_ids();
    assert_eq!(gens.len(), 2);

    // A forged nudge (any payload, the device's own topic): one poll that
    // finds nothing new, and nothing else.
    std::thread::sleep(Duration::from_millis(2100));
    let (before, audit_before) = (reconciles(mport), fx.audit_len());
    let out = mosquitto_pub(
        mq.port,
        &[
            "-t",
            "ferry/nudge/device/gw1",
            "-m",
            "{\"revision\": \"evil\", \"url\": \"http://attacker\"}",
        ],
    );
    assert!(out.status.success());
    wait_for("the nudged poll", Duration::from_secs(10), || {
        reconciles(mport) == before + 1
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(reconciles(mport), before + 1, "one nudge, one poll");
    assert_eq!(fx.generation_ids(), gens, "nothing applied");
    assert_eq!(fx.audit_len(), audit_before, "nothing audited");
    let text = metrics(mport);
    assert_eq!(
        metric(&text, "ferry_reconciles_total", "no_change"),
        1,
        "{text}"
    );

    // A flood of 50 (one connection, all within the interval): one poll
    // now, one at the end of the interval, the rest coalesced.
    std::thread::sleep(Duration::from_millis(2100));
    let before = reconciles(mport);
    let mut flood = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mq.port.to_string(),
            "-t",
            "ferry/nudge/all",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = flood.stdin.take().unwrap();
        for i in 0..50 {
            writeln!(stdin, "nudge {i}").unwrap();
        }
    }
    assert!(flood.wait().unwrap().success());
    wait_for("the deferred poll", Duration::from_secs(15), || {
        reconciles(mport) == before + 2
    });
    std::thread::sleep(Duration::from_millis(2500));
    let text = metrics(mport);
    assert_eq!(reconciles(mport), before + 2, "{text}");
    assert_eq!(
        metric(&text, "ferry_fleet_nudges_total", "polled"),
        3,
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferry_fleet_nudges_total", "deferred"),
        1,
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferry_fleet_nudges_total", "coalesced"),
        48,
        "{text}"
    );
    assert_eq!(fx.generation_ids(), gens, "nothing applied");

    // An oversized message on the device's nudge topic: the agent refuses
    // the packet (its limit is 256 KiB), reconnects, and nudges work again.
    let big = fx.dir.path().join("big-nudge");
    fs::write(&big, "n".repeat(300 * 1024)).unwrap();
    assert!(
        mosquitto_pub(
            mq.port,
            &["-t", "ferry/nudge/device/gw1", "-f", big.to_str().unwrap()]
        )
        .status
        .success()
    );
    wait_for("the reconnection", Duration::from_secs(15), || {
        let t = metrics(mport);
        metric(&t, "ferry_fleet_connections_total", "") == 2
            && metric(&t, "ferry_fleet_connected", "") == 1
    });
    std::thread::sleep(Duration::from_millis(2100));
    let before = reconciles(mport);
    assert!(
        mosquitto_pub(mq.port, &["-t", "ferry/nudge/all", "-m", "x"])
            .status
            .success()
    );
    wait_for(
        "a nudge after the reconnection",
        Duration::from_secs(10),
        || reconciles(mport) == before + 1,
    );
    assert_eq!(fx.generation_ids(), gens, "nothing applied");

    // The fleet sees the device on the pushed commit.
    let status = fleet_json(&["status", "--mqtt", &mq.url(), "--json"]);
    let dev = &status["devices"][0];
    assert_eq!(dev["device"], "gw1", "{status:#}");
    assert_eq!(dev["group"], "line-3");
    assert_eq!(dev["health"], "ok");
    assert_eq!(dev["standing"], "ok");
    assert_eq!(dev["online"], true);
    assert!(
        dev["revision"].as_str().unwrap().contains(&second[..12]),
        "{dev:#}"
    );
}

/// A live subscriber recording (topic, retained) of every message.
struct Observer {
    seen: Arc<Mutex<Vec<(String, bool)>>>,
    _client: rumqttc::Client,
}

impl Observer {
    fn subscribe(port: u16, filter: &str) -> Observer {
        use rumqttc::{Event, Packet};
        let opts = rumqttc::MqttOptions::new("observer", "127.0.0.1", port);
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = seen.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        s.lock().unwrap().push((p.topic.clone(), p.retain));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the observer's subscription");
        Observer {
            seen,
            _client: client,
        }
    }

    /// The seqs of live (not retained) audit messages, in arrival order.
    fn live_seqs(&self) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, retained)| !retained && t.contains("/audit/"))
            .map(|(t, _)| t.rsplit('/').next().unwrap().parse().unwrap())
            .collect()
    }
}

fn persistent_broker(dir: tempfile::TempDir, port: u16) -> Mosquitto {
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
         max_queued_messages 0\nlog_dest stderr\nlog_type error\n",
        dir.path().display()
    );
    Mosquitto::launch(dir, port, &conf)
}

#[test]
fn an_offline_import_and_rollback_reach_the_fleet_once_in_order() {
    let d = Device::new(&[]);
    let v1 = [file("/etc/app.conf", "v1\n", "0644")];
    d.publish(&v1);
    let port = free_port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let mq = persistent_broker(tempfile::tempdir().unwrap(), port);
    let (agent_toml, mport) = agent_config(
        d.fx.dir.path(),
        &broker,
        "device_id = \"gw-b\"\nreport_interval = \"1s\"\naudit_page = 3\n",
    );
    *d.extra.borrow_mut() = agent_toml;
    d.configure(&d.repo.root_v1());
    let agent = Agent::start(&d.fx.config);
    wait_for("v1 applied", Duration::from_secs(30), || {
        reconciles(mport) == 1
    });
    wait_for("v1 reported", Duration::from_secs(30), || {
        reported(&d.fx) == audit_head(&d.fx)
    });
    let online_head = audit_head(&d.fx);
    assert!(online_head > 3, "more than one page: {online_head}");

    // The broker goes away; meanwhile a technician imports v2 from a USB
    // stick and then rolls back by hand.
    let broker_dir = mq.stop();
    let v2 = [file("/etc/app.conf", "v2\n", "0644")];
    d.publish(&v2);
    let bundle = d.fx.dir.path().join("stick");
    d.fx.json(&[
        "bundle",
        "export",
        "--json",
        "--out",
        bundle.to_str().unwrap(),
    ]);
    d.fx.ok(&["import", bundle.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(d.fx.root.join("etc/app.conf")).unwrap(),
        "v2\n"
    );
    d.fx.ok(&["rollback"]);
    assert_eq!(
        fs::read_to_string(d.fx.root.join("etc/app.conf")).unwrap(),
        "v1\n"
    );
    let head = audit_head(&d.fx);
    assert!(head > online_head + 3, "the offline entries span pages");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reported(&d.fx), online_head, "nothing acknowledged offline");

    // The broker is back (with what it retained). An observer subscribes
    // before the agent may reconnect, so every report it sees is live.
    agent.signal("STOP");
    let mq = persistent_broker(broker_dir, port);
    let observer = Observer::subscribe(port, "ferry/device/gw-b/audit/+");
    agent.signal("CONT");
    wait_for(
        "the offline entries reported",
        Duration::from_secs(60),
        || reported(&d.fx) == head,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let live = observer.live_seqs();
    let want: Vec<u64> = (online_head + 1..=head).collect();
    assert_eq!(live, want, "each offline entry once, in order");

    // The admin's view: every entry from 1, the chain verified.
    let audit = fleet_json(&["audit", "--mqtt", &mq.url(), "gw-b", "--json"]);
    assert_eq!(audit["verified"], true, "{}", audit["error"]);
    let entries = audit["entries"].as_array().unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
    let first_usb = entries
        .iter()
        .position(|e| e["actor"].as_str().unwrap().starts_with("usb:"))
        .expect("the import is reported");
    let rollback = entries
        .iter()
        .position(|e| e["details"]["kind"] == "rollback")
        .expect("the rollback is reported");
    assert!(first_usb < rollback && first_usb as u64 >= online_head);
    // The device's own journal says the same.
    let local = d.fx.json(&["audit", "list", "--json"]);
    for (l, r) in local.as_array().unwrap().iter().zip(entries) {
        assert_eq!(l["event"], r["event"]);
        assert_eq!(l["seq"], r["seq"]);
    }
    let text = fleet(&["audit", "--mqtt", &mq.url(), "gw-b"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&format!("chain verified: {head} entries")),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // A tampered retained entry (anyone who can write the topic) is named.
    let forged = {
        let mut e = entries[3].clone();
        e["details"] = serde_json::json!({"forged": true});
        e.to_string()
    };
    let out = mosquitto_pub(
        port,
        &[
            "-r",
            "-q",
            "1",
            "-t",
            "ferry/device/gw-b/audit/4",
            "-m",
            &forged,
        ],
    );
    assert!(out.status.success());
    let out = fleet(&["audit", "--mqtt", &mq.url(), "gw-b"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reported audit entry 4"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A test CA and certificates made by `openssl`: the broker's for
/// 127.0.0.1, and a client certificate per name (CN = the name).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, clients: &[&str]) -> Pki {
        let dir = dir.to_owned();
        let ssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=ferry-test-ca"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        ssl(&ca);
        fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ext) in std::iter::once(("broker", "server.ext"))
            .chain(clients.iter().map(|c| (*c, "client.ext")))
        {
            let subj = format!("/CN={}", if name == "broker" { "127.0.0.1" } else { name });
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let mut req = vec!["req", "-subj", &subj];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr]);
            ssl(&req);
            ssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                ext,
                "-out",
                &pem,
            ]);
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `--ca --cert --key` of a client.
    fn client_args(&self, name: &str) -> Vec<String> {
        vec![
            "--ca".into(),
            self.path("ca.pem"),
            "--cert".into(),
            self.path(&format!("{name}.pem")),
            "--key".into(),
            self.path(&format!("{name}.key")),
        ]
    }
}

/// A real agent, device `id`, reporting to the `mqtts://` broker `url` with
/// its client certificate from `pki`; returns its fixture, the running
/// agent and its metrics port.
fn tls_device(pki: &Pki, url: &str, id: &str) -> (Fixture, Agent, u16) {
    let fx = Fixture::new();
    fx.publish(&[file("/etc/app.conf", "v1\n", "0644")]);
    let (agent_toml, mport) = agent_config(
        fx.dir.path(),
        url,
        &format!(
            "device_id = {id:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pki.path("ca.pem"),
            pki.path(&format!("{id}.pem")),
            pki.path(&format!("{id}.key"))
        ),
    );
    let text = fs::read_to_string(&fx.config).unwrap();
    fs::write(&fx.config, format!("{text}{agent_toml}")).unwrap();
    let agent = Agent::start(&fx.config);
    (fx, agent, mport)
}

#[test]
fn over_tls_the_shipped_acl_keeps_each_device_to_its_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["gw1", "gw2", "fleet-admin"]);
    let port = free_port();
    let conf = format!(
        "per_listener_settings false\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n\
         acl_file {}\npersistence false\nlog_dest stderr\nlog_type error\n",
        pki.path("ca.pem"),
        pki.path("broker.pem"),
        pki.path("broker.key"),
        images_fleet("mosquitto-acl").display()
    );
    let _mq = Mosquitto::launch(dir, port, &conf);
    let url = format!("mqtts://127.0.0.1:{port}");

    // A real device over mqtts with its client certificate.
    let (_fx, _agent, mport) = tls_device(&pki, &url, "gw1");
    wait_for("the device's report", Duration::from_secs(30), || {
        metric(&metrics(mport), "ferry_fleet_statuses_total", "") >= 1
    });

    let admin = pki.client_args("fleet-admin");
    let status = |extra: &[&str]| {
        let mut a: Vec<&str> = vec!["status", "--mqtt", &url, "--json"];
        a.extend(admin.iter().map(String::as_str));
        a.extend_from_slice(extra);
        fleet_json(&a)
    };
    let devices = |s: &serde_json::Value| -> Vec<String> {
        s["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device"].as_str().unwrap().to_owned())
            .collect()
    };
    wait_for("gw1's status", Duration::from_secs(10), || {
        devices(&status(&[])) == ["gw1"]
    });

    let publish_as = |who: &str, topic: &str, msg: &str| {
        mosquitto_pub(
            port,
            &[
                "--cafile",
                &pki.path("ca.pem"),
                "--cert",
                &pki.path(&format!("{who}.pem")),
                "--key",
                &pki.path(&format!("{who}.key")),
                "-q",
                "1",
                "-r",
                "-t",
                topic,
                "-m",
                msg,
            ],
        )
    };
    let forged = serde_json::json!({
        "device": "gw2", "agent_version": "0", "last_seen": 0, "health": "ok",
        "generation": 9, "revision": "forged"
    })
    .to_string();
    // gw2 writing its own status: allowed.
    let own = forged.replace("forged", "r-gw2");
    assert!(
        publish_as("gw2", "ferry/device/gw2/status", &own)
            .status
            .success()
    );
    let gw2_revision = || {
        let s = status(&[]);
        s["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == "gw2")
            .map(|d| d["revision"].as_str().unwrap().to_owned())
    };
    wait_for("gw2's own status", Duration::from_secs(10), || {
        gw2_revision().as_deref() == Some("r-gw2")
    });
    // gw1 overwriting gw2's retained status, and nudging the whole fleet:
    // the broker acknowledges (MQTT 3.1.1 has no refusal) and drops both.
    assert!(
        publish_as("gw1", "ferry/device/gw2/status", &forged)
            .status
            .success()
    );
    assert!(publish_as("gw1", "ferry/nudge/all", "x").status.success());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        gw2_revision().as_deref(),
        Some("r-gw2"),
        "gw1's forgery never landed"
    );
    let text = metrics(mport);
    assert_eq!(
        metric(&text, "ferry_fleet_nudges_total", ""),
        0,
        "gw1's nudge never reached gw1: {text}"
    );
    // The admin's nudge reaches it.
    assert!(
        publish_as("fleet-admin", "ferry/nudge/all", "x")
            .status
            .success()
    );
    wait_for("the admin's nudge", Duration::from_secs(10), || {
        metric(&metrics(mport), "ferry_fleet_nudges_total", "polled") == 1
    });

    // No certificate, no connection; another CA's certificate neither.
    let out = mosquitto_pub(
        port,
        &[
            "--cafile",
            &pki.path("ca.pem"),
            "-t",
            "ferry/nudge/all",
            "-m",
            "x",
        ],
    );
    assert!(!out.status.success());
    let other = tempfile::tempdir().unwrap();
    let stranger = Pki::new(other.path(), &["gw1"]);
    let mut a: Vec<String> = vec!["status".into(), "--mqtt".into(), url.clone()];
    a.extend(stranger.client_args("gw1"));
    let out = fleet(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !out.status.success(),
        "a CA that did not sign the broker's certificate"
    );
    assert!(
        stderr(&out).contains("fleet broker mqtts://127.0.0.1"),
        "{}",
        stderr(&out)
    );
}

/// The shipped `images/fleet/mosquitto.conf`, on `port` with `pki`'s files.
fn shipped_broker_conf(pki: &Pki, port: u16) -> String {
    let shipped = fs::read_to_string(images_fleet("mosquitto.conf")).unwrap();
    let mut conf = String::new();
    for line in shipped.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        let line = match key {
            "listener" => format!("listener {port} 127.0.0.1"),
            "cafile" => format!("cafile {}", pki.path("ca.pem")),
            "certfile" => format!("certfile {}", pki.path("broker.pem")),
            "keyfile" => format!("keyfile {}", pki.path("broker.key")),
            "acl_file" => format!("acl_file {}", images_fleet("mosquitto-acl").display()),
            "persistence" => "persistence false".to_owned(),
            "autosave_interval" => continue,
            _ => line.to_owned(),
        };
        conf.push_str(&line);
        conf.push('\n');
    }
    conf + "log_dest stderr\nlog_type error\n"
}

/// A device that connects with another device's client id would have the
/// broker drop the victim (and publish its last will, "offline"), again
/// and again; the shipped setup makes the certificate's name the client id.
#[test]
fn a_stolen_client_id_is_refused_by_the_shipped_broker_setup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["gw1", "gw2", "fleet-admin"]);
    let port = free_port();
    let conf = shipped_broker_conf(&pki, port);
    let _mq = Mosquitto::launch(dir, port, &conf);
    let url = format!("mqtts://127.0.0.1:{port}");
    let (_fx, _agent, _) = tls_device(&pki, &url, "gw1");
    let sub = |who: &str, id: &str, topic: &str, secs: &str| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v"])
            .args(["--cafile", &pki.path("ca.pem")])
            .args(["--cert", &pki.path(&format!("{who}.pem"))])
            .args(["--key", &pki.path(&format!("{who}.key"))])
            .args(["-i", id, "-t", topic, "-W", secs])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let online = "ferry/device/gw1/online";
    wait_for("gw1 online", Duration::from_secs(30), || {
        let out = sub("fleet-admin", "admin-probe", online, "1")
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{online} 1"))
    });
    // The admin watches gw1's online topic while gw2 connects as "gw1".
    let watch = sub("fleet-admin", "admin-watch", online, "5");
    std::thread::sleep(Duration::from_millis(500));
    let _ = sub("gw2", "gw1", "ferry/nudge/all", "2").wait().unwrap();
    let seen = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).into_owned();
    assert!(seen.contains(&format!("{online} 1")), "{seen}");
    assert!(
        !seen.contains(&format!("{online} 0")),
        "gw1 was dropped and marked offline: {seen}"
    );
}

#[test]
fn an_idle_agent_polls_nginx_with_one_small_conditional_request() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/app.conf", "v1\n", "0644")]);
    let web = nginx::Nginx::serve(&d.repo.dir);
    let port = free_port();
    let sock = d.fx.dir.path().join("ferry.sock");
    fs::write(
        &d.fx.config,
        format!(
            "state_dir = {:?}\n[source]\nkind = \"tuf\"\n[source.tuf]\n\
             metadata_url = \"{url}/metadata\"\ntargets_url = \"{url}/targets\"\nroot = {:?}\n\
             [files]\nroot = {:?}\n[agent]\npoll_interval = \"100ms\"\njitter = \"0s\"\n\
             control_socket = {sock:?}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            d.fx.state,
            d.repo.root_v1(),
            d.fx.root,
            url = web.url()
        ),
    )
    .unwrap();
    let _agent = Agent::start(&d.fx.config);
    let conf = d.fx.root.join("etc/app.conf");
    wait_for("v1", Duration::from_secs(30), || {
        fs::read_to_string(&conf).is_ok_and(|c| c == "v1\n")
    });
    let unchanged = || metric(&metrics(port), "ferry_unchanged_polls_total", "");
    wait_for("a conditional poll", Duration::from_secs(10), || {
        unchanged() >= 1
    });
    let settled = web.requests().len();
    wait_for("20 idle polls", Duration::from_secs(30), || {
        unchanged() >= 21
    });
    // Every idle poll: one request for timestamp.json, answered 304, well
    // under 1 KiB both ways; no reconcile process fetched anything.
    let idle: Vec<_> = web.requests()[settled..].to_vec();
    assert!(idle.len() >= 20, "{idle:?}");
    for r in &idle[..20] {
        assert_eq!(
            (r.uri.as_str(), r.status),
            ("/metadata/timestamp.json", 304),
            "{idle:?}"
        );
        assert!(r.sent + r.received < 1024, "{r:?}");
    }
    // A release is seen at the next poll.
    d.publish(&[file("/etc/app.conf", "v2\n", "0644")]);
    wait_for("v2", Duration::from_secs(30), || {
        fs::read_to_string(&conf).is_ok_and(|c| c == "v2\n")
    });
    let text = metrics(port);
    assert_eq!(
        metric(&text, "ferry_reconciles_total", "failed"),
        0,
        "{text}"
    );
}

/// Retains `message` on `topic` of the broker at `port` (QoS 1).
fn retain(port: u16, topic: &str, message: &str) {
    let out = mosquitto_pub(port, &["-q", "1", "-r", "-t", topic, "-m", message]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Retains 300 KiB of junk on `topic`: more than ferry ever sends in one
/// message, and over the devices' packet limit.
fn retain_oversized(port: u16, topic: &str) {
    let big = tempfile::NamedTempFile::new().unwrap();
    fs::write(big.path(), vec![b'x'; 300 * 1024]).unwrap();
    let file = big.path().to_str().unwrap();
    let out = mosquitto_pub(port, &["-q", "1", "-r", "-t", topic, "-f", file]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A retained status for `device` on `mq`, as a device would publish it.
fn publish_status(mq: &Mosquitto, device: &str, last_error: &str) {
    let status = serde_json::json!({
        "device": device, "agent_version": "0", "last_seen": 0, "health": "failing",
        "generation": 1, "revision": "r1", "last_error": last_error
    })
    .to_string();
    retain(mq.port, &format!("ferry/device/{device}/status"), &status);
}

/// Cursor up, erase line, set title, conceal: shown, not obeyed.
#[test]
fn escape_sequences_in_device_strings_are_shown_not_obeyed() {
    let mq = Mosquitto::start();
    let evil = "boom\u{1b}[1A\u{1b}[2K\u{1b}]0;all good\u{7}\u{1b}[8m\u{9b}2K\u{202e}";
    publish_status(&mq, "gw-1", evil);
    let url = mq.url();
    let out = fleet(&["status", "--mqtt", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
        "{text:?}"
    );
    assert!(
        text.contains("boom\\x1b[1A\\x1b[2K\\x1b]0;all good\\x07\\x1b[8m\\x9b2K\\u{202e}"),
        "{text}"
    );
    // JSON stays exact.
    let json = fleet_json(&["status", "--mqtt", &url, "--json"]);
    assert_eq!(json["devices"][0]["last_error"], evil);
}

/// The collection ends once the retained state is in, however often
/// devices publish meanwhile.
#[test]
fn fleet_status_finishes_while_a_device_keeps_publishing() {
    let mq = Mosquitto::start();
    publish_status(&mq, "gw-busy", "first");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chatter = {
        let (stop, port) = (stop.clone(), mq.port);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = serde_json::json!({
                    "device": "gw-busy", "agent_version": "0", "last_seen": n, "health": "ok",
                    "generation": 1, "revision": "r1"
                })
                .to_string();
                mosquitto_pub(
                    port,
                    &[
                        "-q",
                        "1",
                        "-r",
                        "-t",
                        "ferry/device/gw-busy/status",
                        "-m",
                        &status,
                    ],
                );
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let url = mq.url();
    let mut admin = Command::new(FERRY)
        .args(["fleet", "status", "--json", "--mqtt", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Liveness, not speed: before the fix this never ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = admin.kill();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            panic!("ferry fleet status did not finish while a device kept publishing");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    chatter.join().unwrap();
    let out = admin.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["devices"][0]["device"], "gw-busy");
}

/// A retained nudge over the agent's packet limit ends every session right
/// after the subscription: the agent backs off instead of reconnecting
/// twice a second forever.
#[test]
fn an_oversized_retained_nudge_does_not_make_the_agent_reconnect_in_a_loop() {
    let mq = Mosquitto::start();
    retain_oversized(mq.port, "ferry/nudge/device/gw1");
    let fx = Fixture::new();
    fx.publish(&[file("/etc/app.conf", "v1\n", "0644")]);
    let (agent_toml, mport) = agent_config(fx.dir.path(), &mq.url(), "device_id = \"gw1\"\n");
    let text = fs::read_to_string(&fx.config).unwrap();
    fs::write(&fx.config, format!("{text}{agent_toml}")).unwrap();
    let _agent = Agent::start(&fx.config);
    wait_for("the first session", Duration::from_secs(30), || {
        metric(&metrics(mport), "ferry_fleet_connections_total", "") >= 1
    });
    // Backing off from 0.5 s: sessions at about 0, 0.5, 1.5, 3.5 and 7.5 s.
    std::thread::sleep(Duration::from_secs(8));
    let connections = metric(&metrics(mport), "ferry_fleet_connections_total", "");
    assert!(
        (2..=6).contains(&connections),
        "{connections} sessions in 8 s"
    );
}

/// The target revision comes from the admin or the signed source, never
/// from what devices report: one device reporting a newer generation time
/// does not make the others lag.
#[test]
fn the_target_revision_comes_from_the_source_not_from_reports() {
    let mq = Mosquitto::start();
    let fx = Fixture::new();
    fx.publish(&[file("/etc/app.conf", "v1\n", "0644")]);
    fx.ok(&["apply"]);
    let newest = fx.json(&["status", "--json"])["current"]["revision"]
        .as_str()
        .unwrap()
        .to_owned();
    for (device, revision, made) in [
        ("gw-current", newest.as_str(), 1_000),
        ("gw-old", "r-old", 500),
        ("gw-rogue", "r-rogue", i64::MAX),
    ] {
        let status = serde_json::json!({
            "device": device, "agent_version": "0", "last_seen": 4_000_000_000u64,
            "health": "ok", "generation": 1, "revision": revision,
            "generation_time_ms": made
        })
        .to_string();
        retain(mq.port, &format!("ferry/device/{device}/status"), &status);
    }
    let url = mq.url();
    let standing = |s: &serde_json::Value| -> Vec<(String, String)> {
        s["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["device"].as_str().unwrap().to_owned(),
                    d["standing"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // Without a target nobody lags, whatever gw-rogue claims.
    let s = fleet_json(&["status", "--mqtt", &url, "--json"]);
    assert_eq!(s["target"], serde_json::Value::Null);
    assert!(standing(&s).iter().all(|(_, st)| st == "ok"), "{s:#}");
    // From the signed source the configuration names.
    let out = Command::new(FERRY)
        .arg("--config")
        .arg(&fx.config)
        .args(["fleet", "status", "--from-source", "--json", "--mqtt", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["target"], newest.as_str());
    let mut got = standing(&s);
    got.sort();
    assert_eq!(
        got,
        [
            ("gw-current".to_owned(), "ok".to_owned()),
            ("gw-old".to_owned(), "lagging".to_owned()),
            ("gw-rogue".to_owned(), "lagging".to_owned()),
        ]
    );
}

/// A status larger than any ferry sends (a broker without the shipped
/// `max_packet_size` lets a device retain it) is listed as unreadable; the
/// rest of the fleet is still shown.
#[test]
fn an_oversized_status_is_unreadable_not_the_end_of_the_view() {
    let mq = Mosquitto::start();
    publish_status(&mq, "gw-ok", "");
    retain_oversized(mq.port, "ferry/device/gw-big/status");
    let s = fleet_json(&["status", "--mqtt", &mq.url(), "--json"]);
    assert_eq!(s["devices"][0]["device"], "gw-ok", "{s:#}");
    assert_eq!(s["unreadable"][0]["topic"], "ferry/device/gw-big/status");
    assert!(
        s["unreadable"][0]["error"]
            .as_str()
            .unwrap()
            .contains("307200 bytes"),
        "{s:#}"
    );
}
