//! `ferry run` end to end against a TUF repository on loopback: polling,
//! health gating with automatic rollback, `apply --now`, SIGHUP reload,
//! SIGTERM, sd_notify and metrics.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tuf::Device;
use common::{FERRY, file, stderr};

struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(d: &Device, env: &[(&str, &str)]) -> Agent {
        let child = Command::new(FERRY)
            .arg("--config")
            .arg(&d.fx.config)
            .args(["--log-level", "info", "run"])
            .env_remove("FAILPOINTS")
            .env_remove("FERRY_CRASH_AT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Agent { child }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for the agent to exit; returns its stderr.
    fn wait(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            assert!(Instant::now() < deadline, "agent did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn device(extra: &str) -> Device {
    let d = Device::new(&[]);
    let sock = d.fx.dir.path().join("ferry.sock");
    let check = d.fx.root.join("etc/app.conf");
    *d.extra.borrow_mut() = format!(
        "[agent]\npoll_interval = \"1s\"\njitter = \"0s\"\nbackoff_base = \"1s\"\n\
         health_timeout = \"1s\"\nhealth_interval = \"200ms\"\ncontrol_socket = {sock:?}\n\
         {extra}\n[[health.check]]\ncommand = [\"grep\", \"-q\", \"healthy\", {check:?}]\n"
    );
    d.configure(&d.repo.root_v1());
    d
}

/// Turns on the metrics listener on a free loopback port; returns it.
fn with_metrics(d: &Device) -> u16 {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = fs::read_to_string(&d.fx.config).unwrap();
    fs::write(
        &d.fx.config,
        format!("{text}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    port
}

fn current_content(d: &Device) -> String {
    fs::read_to_string(d.fx.root.join("etc/app.conf")).unwrap_or_default()
}

fn events(d: &Device, name: &str) -> usize {
    let audit = d.fx.json(&["audit", "list", "--json"]);
    audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == name)
        .count()
}

#[test]
fn agent_applies_rolls_back_unhealthy_revisions_and_does_not_retry_them() {
    let d = device("");
    let notify_path = d.fx.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = with_metrics(&d);

    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    let agent = Agent::start(
        &d,
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    // READY=1 first, then watchdog pings.
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    wait_for("revision 1", Duration::from_secs(20), || {
        current_content(&d) == "healthy 1\n"
    });
    let mut seen = String::new();
    wait_for("a watchdog ping", Duration::from_secs(5), || {
        let n = notify.recv(&mut buf).unwrap_or(0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.contains("WATCHDOG=1")
    });

    // A revision that fails its health check is rolled back and remembered.
    d.publish(&[file("/etc/app.conf", "broken 2\n", "0644")]);
    wait_for("the rollback", Duration::from_secs(20), || {
        events(&d, "revision-rejected") == 1
    });
    assert_eq!(current_content(&d), "healthy 1\n");
    let applies = events(&d, "planned");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        events(&d, "planned"),
        applies,
        "the rejected revision was retried"
    );
    assert_eq!(current_content(&d), "healthy 1\n");
    let status = d.fx.json(&["status", "--json"]);
    assert!(
        status["agent"]["last_result"]
            .as_str()
            .unwrap_or_default()
            .contains("rolled back"),
        "{status:#}"
    );

    // Metrics.
    let body = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let metric = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(metric("ferry_rollbacks_total"), 1.0);
    assert!(metric("ferry_reconciles_total{result=\"applied\"}") >= 1.0);
    assert!(metric("ferry_fetched_bytes_total") > 0.0);
    assert!(metric("ferry_current_generation") >= 1.0);

    // A newer revision is applied.
    d.publish(&[file("/etc/app.conf", "healthy 3\n", "0644")]);
    wait_for("revision 3", Duration::from_secs(20), || {
        current_content(&d) == "healthy 3\n"
    });

    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{err}");
    assert!(err.contains("agent stopped"), "{err}");
    d.fx.ok(&["audit", "verify"]);
    let st = d.fx.json(&["status", "--json"]);
    assert!(
        st["open_transitions"].as_array().unwrap().is_empty(),
        "{st:#}"
    );
}

#[test]
fn sighup_reconciles_now_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let d = device("");
    let text = fs::read_to_string(&d.fx.config).unwrap();
    // Poll rarely: only SIGHUP and `apply --now` make it act.
    let slow = text.replace("poll_interval = \"1s\"", "poll_interval = \"1h\"");
    fs::write(&d.fx.config, &slow).unwrap();
    let agent = Agent::start(&d, &[]);
    let sock = d.fx.dir.path().join("ferry.sock");
    wait_for("the control socket", Duration::from_secs(10), || {
        sock.exists()
    });
    // The first poll (at start) found nothing published yet.
    std::thread::sleep(Duration::from_millis(500));

    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    agent.signal("HUP");
    wait_for("revision 1 after SIGHUP", Duration::from_secs(15), || {
        current_content(&d) == "healthy 1\n"
    });

    d.publish(&[file("/etc/app.conf", "healthy 2\n", "0644")]);
    d.fx.ok(&["apply", "--now"]);
    wait_for(
        "revision 2 after apply --now",
        Duration::from_secs(15),
        || current_content(&d) == "healthy 2\n",
    );

    // A bad configuration: refused with the key named, the old one kept.
    let good = d.fx.dir.path().join("good.toml");
    fs::write(&good, &slow).unwrap();
    fs::write(
        &d.fx.config,
        slow.replace("jitter = \"0s\"", "jitter = \"soon\""),
    )
    .unwrap();
    agent.signal("HUP");
    wait_for("the reload error", Duration::from_secs(10), || {
        let out = Command::new(FERRY)
            .arg("--config")
            .arg(&good)
            .args(["status", "--json"])
            .output()
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st["agent"]["config_error"]
            .as_str()
            .is_some_and(|e| e.contains("agent.jitter"))
    });
    d.publish(&[file("/etc/app.conf", "healthy 3\n", "0644")]);
    let out = Command::new(FERRY)
        .arg("--config")
        .arg(&good)
        .args(["apply", "--now"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        "revision 3 with the old config",
        Duration::from_secs(15),
        || current_content(&d) == "healthy 3\n",
    );
    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert!(err.contains("agent.jitter"), "{err}");
}

#[test]
fn sigterm_at_every_step_of_a_transition_converges_after_restart() {
    for fp in ferry_engine::failpoints::ALL {
        let d = device("");
        d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
        // The step sleeps; SIGTERM arrives meanwhile; the agent finishes
        // the reconcile it is in and exits.
        let sock = d.fx.dir.path().join("ferry.sock");
        let agent = Agent::start(&d, &[("FAILPOINTS", &format!("{fp}=sleep(1000)"))]);
        wait_for("the control socket", Duration::from_secs(10), || {
            sock.exists()
        });
        std::thread::sleep(Duration::from_millis(300));
        agent.signal("TERM");
        let (status, err) = agent.wait(Duration::from_secs(30));
        assert!(status.success(), "{fp}: {status:?}\n{err}");
        // Restart: it converges on revision 1 with nothing left open.
        let agent = Agent::start(&d, &[]);
        wait_for(fp, Duration::from_secs(20), || {
            current_content(&d) == "healthy 1\n"
                && d.fx.json(&["status", "--json"])["agent"]["last_poll"].is_u64()
        });
        agent.signal("TERM");
        let (status, err) = agent.wait(Duration::from_secs(20));
        assert!(status.success(), "{fp}: {err}");
        let st = d.fx.json(&["status", "--json"]);
        assert!(
            st["open_transitions"].as_array().unwrap().is_empty(),
            "{fp}: {st:#}"
        );
        d.fx.ok(&["audit", "verify"]);
        assert!(d.fx.integrity_ok(), "{fp}");
    }
}

/// Regression: the agent had no deadline on a reconcile child (and kept
/// feeding the watchdog meanwhile), so a stuck fetch held it for ever.
#[test]
fn a_reconcile_past_its_deadline_is_killed_and_recovered() {
    let d = device("reconcile_timeout = \"3s\"");
    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    let agent = Agent::start(
        &d,
        &[("FAILPOINTS", "activate::before-apply=sleep(600000)")],
    );
    wait_for("the killed reconcile", Duration::from_secs(30), || {
        let st = d.fx.json(&["status", "--json"]);
        st["agent"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("agent.reconcile_timeout"))
    });
    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{err}");
    assert!(err.contains("killing it"), "{err}");
    // Restarted without the hang: recovery undoes the killed transition,
    // then the revision applies.
    let agent = Agent::start(&d, &[]);
    wait_for("convergence", Duration::from_secs(30), || {
        current_content(&d) == "healthy 1\n"
    });
    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    let st = d.fx.json(&["status", "--json"]);
    assert!(
        st["open_transitions"].as_array().unwrap().is_empty(),
        "{st:#}"
    );
    d.fx.ok(&["audit", "verify"]);
}

/// Regression: one idle TCP connection blocked the metrics endpoint for
/// everyone, and control-socket requests were unbounded (400 MiB without a
/// newline grew the agent to 431 MB) and served one at a time.
#[test]
fn idle_and_oversized_local_clients_do_not_block_or_grow_the_agent() {
    use std::io::{Read, Write};
    let d = device("");
    let port = with_metrics(&d);
    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    let agent = Agent::start(&d, &[]);
    let sock = d.fx.dir.path().join("ferry.sock");
    wait_for("the control socket", Duration::from_secs(10), || {
        sock.exists()
    });
    // Idle clients on both endpoints, held open throughout.
    let _idle_tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _idle_unix = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let scrape = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(scrape().contains("ferry_reconciles_total"));
    // More idle clients than the endpoint keeps waiting: the oldest make
    // room, a scrape is still answered.
    let _idle_many: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    assert!(scrape().contains("ferry_reconciles_total"));
    let st = d.fx.json(&["status", "--json"]);
    assert!(st["agent"]["pid"].is_u64(), "{st:#}");
    // 8 MiB without a newline: refused after 64 KiB, the agent stays small.
    let rss = |pid: u32| -> u64 {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let pid = agent.child.id();
    let before = rss(pid);
    let mut big = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    big.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..8 {
        if big.write_all(&chunk).is_err() {
            break; // the agent stopped reading: that is the point
        }
    }
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.contains("longer than"),
        "{answer}"
    );
    assert!(
        rss(pid) < before + 4096,
        "agent grew from {before} kB to {} kB",
        rss(pid)
    );
    let st = d.fx.json(&["status", "--json"]);
    assert!(st["agent"]["pid"].is_u64(), "{st:#}");
    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
}

#[test]
fn a_bad_agent_configuration_is_refused_at_start() {
    let d = device("");
    let text = fs::read_to_string(&d.fx.config).unwrap();
    fs::write(
        &d.fx.config,
        text.replace("poll_interval = \"1s\"", "poll_interval = \"0s\""),
    )
    .unwrap();
    let out = d.fx.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("agent.poll_interval"),
        "{}",
        stderr(&out)
    );
    // No agent: `apply --now` says so.
    fs::write(&d.fx.config, &text).unwrap();
    let out = d.fx.run(&["apply", "--now"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no ferry agent"), "{}", stderr(&out));
}

#[test]
fn unit_files_verify_with_systemd_analyze() {
    let images = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for entry in fs::read_dir(&images).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "service") {
            // Point ExecStart at the binary under test (verify checks it exists).
            let text = fs::read_to_string(&p)
                .unwrap()
                .replace("/usr/bin/ferry", FERRY);
            let name = p.file_name().unwrap().to_owned();
            fs::write(dir.path().join(&name), text).unwrap();
            names.push(name);
        }
    }
    assert!(names.iter().any(|n| n == "ferry.service"));
    // A template is verified as an instance (as udev starts it).
    let template = std::ffi::OsString::from("ferry-import@.service");
    assert!(names.contains(&template), "{names:?}");
    names.retain(|n| *n != template);
    names.push("ferry-import@sdb1.service".into());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.lines().any(|l| l.contains(".service")),
        "systemd-analyze complains:\n{err}"
    );
    let agent = fs::read_to_string(images.join("ferry.service")).unwrap();
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/sh -c 'kill -HUP \"$MAINPID\"'",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(agent.contains(needle), "ferry.service lacks {needle}");
    }
    // The udev rule starts the import unit that exists, for FAT on USB only;
    // the unit mounts read-only without exec and runs nothing from the stick.
    let rule = fs::read_to_string(images.join("90-ferry-usb.rules")).unwrap();
    let rule = rule
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    for needle in [
        r#"ACTION=="add""#,
        r#"ENV{ID_BUS}=="usb""#,
        r#"ENV{ID_FS_TYPE}=="vfat""#,
        r#"ENV{SYSTEMD_WANTS}+="ferry-import@%k.service""#,
    ] {
        assert!(
            rule.contains(needle),
            "the udev rule lacks {needle}: {rule}"
        );
    }
    let import = fs::read_to_string(images.join("ferry-import@.service")).unwrap();
    let mount = import
        .lines()
        .find(|l| l.starts_with("ExecStartPre=/usr/bin/mount"))
        .unwrap();
    for opt in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            mount
                .split([' ', ','])
                .any(|w| w == opt || w == format!("-o{opt}")),
            "mounted without {opt}: {mount}"
        );
    }
    let exec: Vec<&str> = import.lines().filter(|l| l.starts_with("Exec")).collect();
    assert!(
        exec.iter().all(|l| !l.contains("/run/ferry-usb/%i/")),
        "nothing on the stick is executed: {exec:?}"
    );
    assert!(import.contains("ExecStopPost=-/usr/bin/umount /run/ferry-usb/%i"));
    assert!(import.contains("ExecStart=/usr/bin/ferry import --device /dev/%I"));
}

#[test]
fn the_signed_update_policy_holds_devices_outside_the_rollout_wave() {
    let d = device("");
    // This device's bucket, as documented: sha256("ferry-rollout\0" + id).
    let machine_id = d.fx.dir.path().join("machine-id");
    fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n").unwrap();
    let bucket = ferry_core::schedule::rollout_bucket("0123456789abcdef0123456789abcdef");
    let text = fs::read_to_string(&d.fx.config).unwrap();
    fs::write(
        &d.fx.config,
        text.replace(
            "[agent]\n",
            &format!("[agent]\nmachine_id_file = {machine_id:?}\n"),
        ),
    )
    .unwrap();
    // Released to the buckets below this device's: held.
    d.repo.target(
        "ferry/policy.toml",
        format!("[rollout]\npercent = {bucket}\n").as_bytes(),
        "targets",
    );
    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    let agent = Agent::start(&d, &[]);
    wait_for("the hold", Duration::from_secs(15), || {
        d.fx.json(&["status", "--json"])["agent"]["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("rollout wave"))
    });
    assert_eq!(current_content(&d), "");
    // Widened to include it: applied.
    d.repo.target(
        "ferry/policy.toml",
        format!("[rollout]\npercent = {}\n", bucket + 1).as_bytes(),
        "targets",
    );
    wait_for("the widened wave", Duration::from_secs(15), || {
        current_content(&d) == "healthy 1\n"
    });
    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
}

#[test]
fn firmware_reboots_wait_for_the_policy_reboot_window() {
    let d = device("");
    let dir = d.fx.dir.path();
    let (boot_id, reboots) = (dir.join("boot_id"), dir.join("reboots"));
    let (_, cmdline) = common::grub_firmware(&d.fx);
    fs::write(&cmdline, "root=/dev/vda2 rauc.slot=A\n").unwrap();
    fs::write(&boot_id, "boot-1\n").unwrap();
    let text = fs::read_to_string(&d.fx.config).unwrap();
    fs::write(
        &d.fx.config,
        text.replace(
            "[firmware]\n",
            &format!(
                "[firmware]\nboot_id = {boot_id:?}\nreboot_command = [\"sh\", \"-c\", \"echo reboot >> {}\"]\n",
                reboots.display()
            ),
        ),
    )
    .unwrap();
    // Reboots only on 31 February, i.e. never.
    d.repo.target(
        "ferry/policy.toml",
        b"[reboot]\nwindows = [\"0 0 31 2 *\"]\n",
        "targets",
    );
    d.repo.target("images/os.img", &[7u8; 4096], "targets");
    d.repo.target(
        "ferry/manifest.yaml",
        b"apiVersion: ferry.dev/v1\nresources:\n  - {kind: firmware, name: os, version: \"2\", source: images/os.img}\n",
        "targets",
    );
    let agent = Agent::start(&d, &[]);
    wait_for("the firmware write", Duration::from_secs(20), || {
        d.fx.json(&["status", "--json"])["agent"]["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("reboot window"))
    });
    assert_eq!(fs::read(dir.join("slot-b.img")).unwrap(), vec![7u8; 4096]);
    assert!(!reboots.exists(), "rebooted outside the window");

    // The window opens (any minute): the agent reboots.
    d.repo.target(
        "ferry/policy.toml",
        b"[reboot]\nwindows = [\"* * * * *\"]\n",
        "targets",
    );
    wait_for("the reboot", Duration::from_secs(20), || reboots.exists());
    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
}

#[test]
fn run_once_reports_one_reconcile_as_a_json_line() {
    let d = device("");
    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    let once = |d: &Device| {
        let out = d.fx.run(&["run", "--once", "--json"]);
        let line = String::from_utf8(out.stdout).unwrap();
        (
            out.status.code(),
            serde_json::from_str::<serde_json::Value>(&line).unwrap(),
        )
    };
    let (code, r) = once(&d);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(r["generation"], 1);
    assert!(r["fetched_bytes"].as_u64().unwrap() > 0, "{r}");
    let (_, r) = once(&d);
    assert_eq!(r["result"], "no_change", "{r}");
    // Unhealthy: rolled back (the first generation stays, not retried).
    d.publish(&[file("/etc/app.conf", "sick\n", "0644")]);
    let (code, r) = once(&d);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["result"], "rolled_back", "{r}");
    assert_eq!(current_content(&d), "healthy 1\n");
    let (_, r) = once(&d);
    assert_eq!(r["result"], "skipped", "{r}");
    // A failure is a report too, with the error's exit code.
    d.server.fault(
        "/metadata/timestamp.json",
        Some(common::tuf::Fault::CutAfter(3)),
    );
    let (code, r) = once(&d);
    assert_eq!(r["result"], "failed", "{r}");
    assert_ne!(code, Some(0));
}

#[test]
fn a_reconcile_process_dies_with_its_agent() {
    let d = device("");
    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    let agent = Agent::start(&d, &[("FERRY_CRASH_AT", "transition::planned:hang")]);
    let mut agent = agent;
    let err = agent.child.stderr.take().unwrap();
    let mut err = std::io::BufReader::new(err);
    let mut line = String::new();
    while !line.contains("failpoint transition::planned reached") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
    }
    // The reconcile process hangs in a transition; the agent is killed.
    agent.signal("KILL");
    // Its reconcile process goes too: the state directory is free again and
    // the interrupted transition is undone.
    wait_for("the lock to be released", Duration::from_secs(10), || {
        d.fx.run(&["recover"]).status.success()
    });
    let st = d.fx.json(&["status", "--json"]);
    assert!(
        st["open_transitions"].as_array().unwrap().is_empty(),
        "{st:#}"
    );
}

/// The blobs in the store (partial fetches aside).
fn store_blobs(d: &Device) -> Vec<String> {
    let mut blobs: Vec<String> = fs::read_dir(d.fx.state.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64)
        .collect();
    blobs.sort();
    blobs
}

/// Completed gc transitions in the audit journal.
fn gc_runs(d: &Device) -> usize {
    let audit = d.fx.json(&["audit", "list", "--json"]);
    audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "confirmed" && e["details"]["kind"] == "gc")
        .count()
}

fn sha256_hex(data: &str) -> String {
    ferry_core::digest::Sha256::of(data.as_bytes()).to_hex()
}

/// Three healthy revisions, each applied by one agent reconcile.
fn apply_three_revisions(d: &Device) {
    for v in 1..=3 {
        d.publish(&[file("/etc/app.conf", &format!("healthy {v}\n"), "0644")]);
        let r = d.fx.json(&["run", "--once", "--json"]);
        assert_eq!(r["result"], "applied", "{r}");
    }
}

#[test]
fn the_agent_collects_what_no_kept_generation_needs_after_a_settled_reconcile() {
    let d = device("");
    apply_three_revisions(&d);
    // Current (3) and previous (2) stay; generation 1 and its blob went.
    assert_eq!(d.fx.generation_ids(), vec![2, 3]);
    assert!(!d.fx.state.join("generations/1").exists());
    let blobs = store_blobs(&d);
    assert!(!blobs.contains(&sha256_hex("healthy 1\n")), "{blobs:?}");
    assert!(blobs.contains(&sha256_hex("healthy 2\n")), "{blobs:?}");
    assert_eq!(gc_runs(&d), 1);
    // Nothing to collect: no gc transition, no audit entry.
    let r = d.fx.json(&["run", "--once", "--json"]);
    assert_eq!(r["result"], "no_change", "{r}");
    assert_eq!(gc_runs(&d), 1);
    // A rolled-back revision leaves the device settled too.
    d.publish(&[file("/etc/app.conf", "sick\n", "0644")]);
    let r = d.fx.json(&["run", "--once", "--json"]);
    assert_eq!(r["result"], "rolled_back", "{r}");
    assert_eq!(current_content(&d), "healthy 3\n");
    let ids = d.fx.generation_ids();
    assert_eq!(gc_runs(&d), 2, "{ids:?}");
    assert!(!ids.contains(&2) && ids.contains(&3), "{ids:?}");
    d.fx.ok(&["audit", "verify"]);
    // The previous generation is still a complete rollback target, but
    // its revision was rejected: only by force, and the health gate
    // returns from it again.
    let out = d.fx.run(&["rollback"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let out = d.fx.run(&["rollback", "--force"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("switched generation"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(current_content(&d), "healthy 3\n");
}

#[test]
fn agent_gc_can_be_turned_off() {
    let d = device("gc = false");
    apply_three_revisions(&d);
    assert_eq!(d.fx.generation_ids(), vec![1, 2, 3]);
    assert!(store_blobs(&d).contains(&sha256_hex("healthy 1\n")));
    assert_eq!(gc_runs(&d), 0);
    // A value of the wrong type is refused, naming the line.
    let text = fs::read_to_string(&d.fx.config).unwrap();
    let bad = text.replace("gc = false", "gc = \"yes\"");
    fs::write(&d.fx.config, &bad).unwrap();
    let line = bad.lines().position(|l| l.starts_with("gc =")).unwrap() + 1;
    let out = d.fx.run(&["run", "--once"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("line {line}")) && err.contains("expected a boolean"),
        "{err}"
    );
}

#[test]
fn status_shows_only_the_agent_of_its_own_state_directory() {
    let d = device("");
    d.publish(&[file("/etc/app.conf", "healthy 1\n", "0644")]);
    let agent = Agent::start(&d, &[]);
    wait_for("revision 1", Duration::from_secs(20), || {
        current_content(&d) == "healthy 1\n"
    });
    let st = d.fx.json(&["status", "--json"]);
    assert!(st["agent"]["pid"].is_u64(), "{st:#}");
    assert_eq!(st["agent"]["state_dir"], d.fx.state.to_str().unwrap());
    // Another state directory, the same socket: not this agent's view.
    let other = d.fx.dir.path().join("other-state");
    let out =
        d.fx.run(&["--state-dir", other.to_str().unwrap(), "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(st["agent"].is_null(), "{st:#}");
    assert!(stderr(&out).contains("serves"), "{}", stderr(&out));
    // A refused reload is in the human output too (read here with the
    // configuration the agent still runs, which it keeps in agent.toml).
    let text = fs::read_to_string(&d.fx.config).unwrap();
    fs::write(
        &d.fx.config,
        text.replace("poll_interval = \"1s\"", "poll_interval = \"soon\""),
    )
    .unwrap();
    agent.signal("HUP");
    let accepted = d.fx.state.join("agent.toml");
    wait_for("the refused reload", Duration::from_secs(10), || {
        let out = Command::new(FERRY)
            .arg("--config")
            .arg(&accepted)
            .arg("status")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("reload refused")
    });
    fs::write(&d.fx.config, text).unwrap();
    agent.signal("TERM");
    let (status, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
}
