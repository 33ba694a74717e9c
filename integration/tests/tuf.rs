//! The `tuf` source and the conformance client against repositories built
//! by python-tuf and served over loopback HTTP: the update workflow of the
//! TUF specification, and every refusal audited with the running
//! generation untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::process::Command;

use common::tuf::{ConformanceClient, Device, Fault};
use common::{FERRY, file, stderr};

#[test]
fn device_applies_a_signed_revision_and_a_no_change_poll_fetches_only_timestamp() {
    let d = Device::new(&[]);
    let files = [file("/etc/app.conf", "a = 1\n", "0644")];
    d.publish(&files);
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(d.fx.snapshot(), common::expected(&files));
    assert_eq!(d.fx.last_fetched(), (6, 1), "the one target's bytes");
    let audit = d.fx.json(&["audit", "list", "--json"]);
    let switched = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "switched")
        .unwrap();
    assert!(
        switched["actor"]
            .as_str()
            .unwrap()
            .starts_with("tuf:targets@"),
        "{switched:#}"
    );

    d.server.clear_requests();
    let out = d.fx.ok(&["apply", "--no-reboot"]);
    assert!(out.contains("no changes"), "{out}");
    assert_eq!(
        d.server.requests(),
        ["/metadata/2.root.json", "/metadata/timestamp.json"],
        "a no-change poll probes the next root and fetches only timestamp"
    );

    // A new revision: only what changed is downloaded.
    let files2 = [
        file("/etc/app.conf", "a = 2\n", "0644"),
        file("/etc/b", "bb\n", "0644"),
    ];
    d.publish(&files2);
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(d.fx.snapshot(), common::expected(&files2));
    assert_eq!(d.fx.last_fetched(), (6 + 3, 2));
}

#[test]
fn root_rotation_with_changing_thresholds_is_followed_and_a_short_signed_root_refused() {
    let d = Device::new(&[]);
    let files = [file("/etc/a", "1\n", "0644")];
    d.publish(&files);
    // 1 → 2: two root keys, threshold 2; 2 → 3: three keys, threshold 2;
    // 3 → 4: new timestamp key (fast-forward recovery of the timestamp).
    d.repo.run(
        "rotate",
        &["--role", "root", "--keys", "2", "--threshold", "2"],
    );
    d.repo.run(
        "rotate",
        &["--role", "root", "--keys", "3", "--threshold", "2"],
    );
    d.repo.run("rotate", &["--role", "timestamp"]);
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(d.fx.snapshot(), common::expected(&files));
    let trusted: serde_json::Value =
        serde_json::from_slice(&fs::read(d.fx.state.join("tuf/metadata/root.json")).unwrap())
            .unwrap();
    assert_eq!(trusted["signed"]["version"], 4);
    // Stored byte for byte as served.
    assert_eq!(
        fs::read(d.fx.state.join("tuf/metadata/root.json")).unwrap(),
        fs::read(d.repo.metadata().join("4.root.json")).unwrap()
    );

    // v5 signed by the old root keys but by only one of its own two.
    d.repo.run(
        "rotate",
        &[
            "--role",
            "root",
            "--keys",
            "2",
            "--threshold",
            "2",
            "--sign-with-new",
            "1",
        ],
    );
    let err = d.refused(&["root v5", "threshold"]);
    assert!(err.contains("own keys"), "{err}");
}

#[test]
fn version_rollbacks_are_refused() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/a", "1\n", "0644")]);
    let old = d.repo.save("old");
    d.publish(&[file("/etc/a", "2\n", "0644")]);
    d.fx.ok(&["apply", "--no-reboot"]);

    // Timestamp: the old file served again.
    let current_ts = fs::read(d.repo.metadata().join("timestamp.json")).unwrap();
    d.repo.restore(&old, &["timestamp.json"]);
    d.refused(&["timestamp v", "version rollback"]);
    fs::write(d.repo.metadata().join("timestamp.json"), current_ts).unwrap();

    // Snapshot: a newer timestamp naming an older snapshot.
    let snap_v = d.repo.read_json("snapshot.json")["signed"]["version"]
        .as_u64()
        .unwrap();
    d.repo.run(
        "timestamp",
        &["--snapshot-version", &(snap_v - 1).to_string()],
    );
    d.refused(&["timestamp v", "snapshot version rollback"]);

    // Targets: a newer snapshot listing an older targets version.
    let targets_v = d.repo.read_json("targets.json")["signed"]["version"]
        .as_u64()
        .unwrap();
    d.repo
        .run("publish", &["--pin", &format!("targets={}", targets_v - 1)]);
    d.refused(&["snapshot v", "version rollback of targets.json"]);
}

#[test]
fn expired_metadata_is_refused_also_with_the_clock_reset_to_1970() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/a", "1\n", "0644")]);
    d.fx.ok(&["apply", "--no-reboot"]);
    let floor: i64 = fs::read_to_string(d.fx.state.join("tuf/time-floor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(floor > 1_700_000_000, "floor {floor}");

    // The repository (or an attacker replaying it) serves a timestamp that
    // expired a day ago.
    d.repo.run("expire", &["timestamp", "--days", "-1"]);
    d.refused(&["timestamp v", "expired"]);

    // A device whose RTC fell back to 1970 still refuses it: the floor holds.
    let run_1970 = |cmd: &mut Command| {
        cmd.env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .unwrap()
    };
    let mut apply = Command::new("faketime");
    apply
        .args(["-f", "@1970-01-02 00:00:00", FERRY, "--config"])
        .arg(&d.fx.config)
        .args(["apply", "--no-reboot"]);
    let out = run_1970(&mut apply);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // Without a floor (the bare conformance client), 1970 would accept it:
    // the check above is the floor's doing.
    let c = ConformanceClient::new(&d);
    assert!(c.init(&d.repo.root_v1()).status.success());
    let mut refresh = Command::new("faketime");
    refresh
        .args([
            "-f",
            "@1970-01-02 00:00:00",
            env!("CARGO_BIN_EXE_ferry-tuf-conformance"),
        ])
        .args(["--metadata-url", &c.murl, "--metadata-dir"])
        .arg(&c.md)
        .arg("refresh");
    let out = run_1970(&mut refresh);
    assert!(out.status.success(), "{}", stderr(&out));
    // And the floor never decreased.
    let after: i64 = fs::read_to_string(d.fx.state.join("tuf/time-floor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(after >= floor);
}

/// Regression: a corrupt time-floor file was read as 0, so a device whose
/// clock fell back accepted metadata that expired long ago.
#[test]
fn a_corrupt_time_floor_fails_closed_until_the_operator_repairs_it() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/a", "1\n", "0644")]);
    d.fx.ok(&["apply", "--no-reboot"]);
    let floor_file = d.fx.state.join("tuf/time-floor");
    for corrupt in [
        &b"garbage\n"[..],
        b"",
        b"-5",
        &[0xff, 0xfe][..],
        &[b'9'; 100][..],
    ] {
        fs::write(&floor_file, corrupt).unwrap();
        d.publish(&[file("/etc/a", "2\n", "0644")]);
        let out = d.fx.run(&["apply", "--no-reboot"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{corrupt:?}: {err}");
        assert!(
            err.contains("secure time floor") && err.contains("time-floor repair"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(d.fx.root.join("etc/a")).unwrap(), "1\n");
        // Shown, not hidden.
        let v = d.fx.json(&["time-floor", "--json"]);
        assert_eq!(v["ok"], false, "{v}");
    }
    let audit =
        d.fx.ok(&["audit", "list", "--event", "source-refused", "--json"]);
    assert!(audit.contains("time_floor"), "{audit}");
    // No image floor configured: repaired from the binary's build time.
    d.fx.ok(&["time-floor", "repair"]);
    let repaired: i64 = fs::read_to_string(&floor_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(repaired > 1_760_000_000, "{repaired}");
    // Or from the time the operator gives.
    fs::write(&floor_file, "garbage\n").unwrap();
    d.fx.ok(&["time-floor", "repair", "--at", "2026-01-01T00:00:00Z"]);
    assert_eq!(
        fs::read_to_string(&floor_file).unwrap().trim(),
        "1767225600"
    );
    let audit =
        d.fx.ok(&["audit", "list", "--event", "time-floor-repaired"]);
    assert!(audit.contains("time-floor-repaired"), "{audit}");
    // An intact floor is not "repaired" (that could lower it).
    let out =
        d.fx.run(&["time-floor", "repair", "--at", "1970-01-02T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(fs::read_to_string(d.fx.root.join("etc/a")).unwrap(), "2\n");
    d.fx.ok(&["audit", "verify"]);
}

#[test]
fn mix_and_match_and_tampered_targets_are_refused() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/a", "1\n", "0644")]);
    d.fx.ok(&["apply", "--no-reboot"]);
    d.publish(&[file("/etc/a", "2\n", "0644")]);

    // Mix and match: the snapshot version the timestamp names is served
    // with the bytes of an older snapshot.
    let v = d.repo.read_json("snapshot.json")["signed"]["version"]
        .as_u64()
        .unwrap();
    let newest = d.repo.metadata().join(format!("{v}.snapshot.json"));
    let good = fs::read(&newest).unwrap();
    fs::copy(
        d.repo.metadata().join(format!("{}.snapshot.json", v - 1)),
        &newest,
    )
    .unwrap();
    d.refused(&["snapshot v", "mix-and-match"]);
    fs::write(&newest, good).unwrap();

    // A target whose bytes differ from its signed hash (same length).
    let t = d.repo.read_json("targets.json");
    let sha = t["signed"]["targets"]["files/0"]["hashes"]["sha256"]
        .as_str()
        .unwrap();
    fs::write(d.repo.dir.join(format!("targets/files/{sha}.0")), "X\n").unwrap();
    let err = d.refused(&[]);
    assert!(err.contains("sha256") || err.contains("mismatch"), "{err}");

    // A target longer than signed.
    fs::write(
        d.repo.dir.join(format!("targets/files/{sha}.0")),
        "2\nmore\n",
    )
    .unwrap();
    let err = d.refused(&[]);
    assert!(err.contains("signed length"), "{err}");
}

#[test]
fn endless_and_stalled_servers_are_cut_off() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/a", "1\n", "0644")]);
    d.server
        .fault("/metadata/timestamp.json", Some(Fault::Endless));
    let err = d.refused(&["timestamp", "more than 16384 bytes"]);
    assert!(!err.is_empty());

    d.server
        .fault("/metadata/timestamp.json", Some(Fault::Stall));
    let out = d.fx.run(&["apply", "--no-reboot"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("timed out") || stderr(&out).contains("timeout"),
        "{}",
        stderr(&out)
    );
    assert!(d.fx.generation_ids().is_empty());

    // Bytes keep coming, too slowly: the whole-file deadline ends it.
    d.server
        .fault("/metadata/timestamp.json", Some(Fault::Drip));
    let out = d.fx.run(&["apply", "--no-reboot"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));

    d.server.fault("/metadata/timestamp.json", None);
    d.fx.ok(&["apply", "--no-reboot"]);
}

#[test]
fn a_download_cut_midway_resumes_with_an_http_range_request() {
    let d = Device::new(&[]);
    let big: String = (0..200_000).map(|i| format!("{i}\n")).collect();
    let files = [file("/opt/big.bin", &big, "0644")];
    d.publish(&files);
    let path = d.target_url_path("files/0");
    d.server.fault(&path, Some(Fault::CutAfter(300_000)));
    let out = d.fx.run(&["apply", "--no-reboot"]);
    assert!(!out.status.success());
    assert!(d.fx.generation_ids().is_empty());

    d.server.fault(&path, None);
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(d.fx.snapshot(), common::expected(&files));
    assert_eq!(d.server.ranges(), [(path, 300_000)]);
}

/// Regression: target downloads had no overall deadline, so a manifest
/// served a byte at a time kept a reconcile busy for hours.
#[test]
fn a_target_dripped_slower_than_the_minimum_rate_is_cut_off() {
    let d = Device::new(&[]);
    let text: String = (0..400).map(|i| format!("{i}\n")).collect();
    let files = [file("/opt/a.txt", &text, "0644")];
    d.publish(&files);
    let path = d.target_url_path("files/0");
    // 10 bytes/s for ~1,500 bytes; at least 500 bytes/s are required: the
    // deadline is stall (2 s) + 1,490 / 500 s.
    let conf = fs::read_to_string(&d.fx.config).unwrap();
    fs::write(
        &d.fx.config,
        conf.replace(
            "stall_timeout = \"2s\"\n",
            "stall_timeout = \"2s\"\nmin_rate_bytes_per_sec = 500\n",
        ),
    )
    .unwrap();
    d.server.fault(&path, Some(Fault::Drip));
    let started = std::time::Instant::now();
    let out = d.fx.run(&["apply", "--no-reboot"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("min_rate_bytes_per_sec"), "{err}");
    // Not a timed assertion of speed: it must not have waited for the drip
    // to finish (150 s), which is what used to happen.
    assert!(started.elapsed() < std::time::Duration::from_secs(100));
    assert!(d.fx.generation_ids().is_empty());
    d.server.fault(&path, None);
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(d.fx.snapshot(), common::expected(&files));
}

#[test]
fn delegations_are_searched_in_order_and_terminating_ones_end_the_search() {
    let d = Device::new(&[]);
    // Two delegations for apps/*: "first" wins over "second".
    d.repo.run("delegate", &["first", "--paths", "apps/*"]);
    d.repo.run("delegate", &["second", "--paths", "apps/*"]);
    d.repo.target("apps/x", b"from first\n", "first");
    d.repo.target("apps/x", b"from second\n", "second");
    d.repo.target("apps/y", b"only second\n", "second");
    // A terminating delegation for cfg/* without the target hides a later one.
    d.repo
        .run("delegate", &["term", "--paths", "cfg/*", "--terminating"]);
    d.repo.run("delegate", &["later", "--paths", "cfg/*"]);
    d.repo.target("cfg/z", b"hidden\n", "later");

    let c = ConformanceClient::new(&d);
    assert!(c.init(&d.repo.root_v1()).status.success());
    let download = |name: &str| c.download(&[name]);
    let td = &c.td;
    assert!(download("apps/x").status.success());
    assert_eq!(fs::read(td.join("apps%2Fx")).unwrap(), b"from first\n");
    assert!(download("apps/y").status.success());
    assert_eq!(fs::read(td.join("apps%2Fy")).unwrap(), b"only second\n");

    d.server.clear_requests();
    let out = download("cfg/z");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cfg/z"), "{}", stderr(&out));
    let reqs = d.server.requests();
    assert!(reqs.iter().any(|r| r.ends_with(".term.json")), "{reqs:?}");
    assert!(!reqs.iter().any(|r| r.contains("later")), "{reqs:?}");
}

#[test]
fn conformance_client_init_refresh_download_against_python_tuf() {
    let d = Device::new(&[]);
    d.repo.target("a.txt", b"alpha\n", "targets");
    d.repo.target("dir/b.txt", b"beta\n", "targets");
    d.repo
        .run("delegate", &["/delegatedrole", "--paths", "deleg/*"]);
    d.repo.target("deleg/c.txt", b"gamma\n", "/delegatedrole");

    let c = ConformanceClient::new(&d);
    let (md, td) = (&c.md, &c.td);
    let out = c.init(&d.repo.root_v1());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.server.requests().is_empty(), "init makes no request");

    let out = c.refresh();
    assert!(out.status.success(), "{}", stderr(&out));
    let snap_v = d.repo.read_json("snapshot.json")["signed"]["version"]
        .as_u64()
        .unwrap();
    let targets_v = d.repo.read_json("targets.json")["signed"]["version"]
        .as_u64()
        .unwrap();
    assert_eq!(
        d.server.requests(),
        [
            "/metadata/2.root.json".to_owned(),
            "/metadata/timestamp.json".to_owned(),
            format!("/metadata/{snap_v}.snapshot.json"),
            format!("/metadata/{targets_v}.targets.json"),
        ]
    );
    // Only trusted top-level metadata, byte for byte as served.
    let mut names: Vec<String> = fs::read_dir(md)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    for n in &names {
        assert_eq!(
            fs::read(md.join(n)).unwrap(),
            fs::read(d.repo.metadata().join(n)).unwrap(),
            "{n}"
        );
    }

    d.server.clear_requests();
    let out = c.download(&["dir/b.txt", "deleg/c.txt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(td.join("dir%2Fb.txt")).unwrap(), b"beta\n");
    assert_eq!(fs::read(td.join("deleg%2Fc.txt")).unwrap(), b"gamma\n");
    let reqs = d.server.requests();
    assert!(
        reqs.contains(&"/metadata/1.%2Fdelegatedrole.json".to_owned())
            || reqs.iter().any(|r| r.ends_with(".%2Fdelegatedrole.json")),
        "{reqs:?}"
    );
    // Consistent snapshots: targets by hash, in their directory.
    let b = d.repo.read_json("targets.json");
    let sha = b["signed"]["targets"]["dir/b.txt"]["hashes"]["sha256"]
        .as_str()
        .unwrap();
    assert!(
        reqs.contains(&format!("/targets/dir/{sha}.b.txt")),
        "{reqs:?}"
    );
    assert!(md.join("%2Fdelegatedrole.json").exists());

    // Cached targets are not downloaded again.
    d.server.clear_requests();
    let out = c.download(&["dir/b.txt"]);
    assert!(out.status.success());
    assert!(
        !d.server
            .requests()
            .iter()
            .any(|r| r.starts_with("/targets/"))
    );

    // A missing target fails; so does a target-name that is not listed.
    let out = c.download(&["nope"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn configured_time_floor_and_bad_tuf_configuration() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/a", "1\n", "0644")]);
    // A floor after every expiry (the repository's metadata expires in a
    // year): refused as frozen, naming the role.
    let text = fs::read_to_string(&d.fx.config).unwrap();
    let future = text.replace("[files]", "time_floor = \"2099-01-01T00:00:00Z\"\n[files]");
    fs::write(&d.fx.config, &future).unwrap();
    d.refused(&["root v1", "expired"]);

    // Configuration errors name the key.
    for (bad, key) in [
        (
            text.replace("metadata_url", "# metadata_url"),
            "source.tuf.metadata_url",
        ),
        (
            text.replace("metadata_url = \"http", "metadata_url = \"ftp"),
            "source.tuf.metadata_url",
        ),
        (
            text.replace("[files]", "time_floor = \"yesterday\"\n[files]"),
            "source.tuf.time_floor",
        ),
        (
            text.replace("stall_timeout = \"2s\"", "stall_timeout = \"0s\""),
            "source.tuf.stall_timeout: must be longer than zero",
        ),
        (
            text.replace("metadata_timeout = \"3s\"", "metadata_timeout = \"soon\""),
            "source.tuf.metadata_timeout: \"soon\" is not a duration",
        ),
        // The deprecated spelling in whole seconds (still read; tests/bundle.rs
        // uses it), and not both.
        (
            text.replace("stall_timeout = \"2s\"", "stall_timeout_secs = 0"),
            "source.tuf.stall_timeout_secs: must be longer than zero",
        ),
        (
            text.replace(
                "stall_timeout = \"2s\"",
                "stall_timeout = \"2s\"\nstall_timeout_secs = 2",
            ),
            "set source.tuf.stall_timeout or its deprecated spelling source.tuf.stall_timeout_secs, not both",
        ),
    ] {
        fs::write(&d.fx.config, &bad).unwrap();
        let out = d.fx.run(&["plan"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(key), "{key}: {}", stderr(&out));
    }

    // A fresh device whose baked root is not valid JSON: refused, naming
    // the root. (An initialised device keeps the root it has verified.)
    fs::write(&d.fx.config, &text).unwrap();
    fs::remove_dir_all(d.fx.state.join("tuf")).unwrap();
    let bad_root = d.fx.dir.path().join("bad-root.json");
    fs::write(&bad_root, "{not json").unwrap();
    d.configure(&bad_root);
    let out = d.fx.run(&["apply", "--no-reboot"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("root"), "{}", stderr(&out));
}

#[test]
fn a_repository_on_a_file_url_is_verified_the_same_way() {
    let d = Device::new(&[]);
    let files = [file("/etc/a", "from a stick\n", "0644")];
    d.publish(&files);
    let text = fs::read_to_string(&d.fx.config).unwrap();
    let local = format!("file://{}", d.repo.dir.display());
    fs::write(&d.fx.config, text.replace(&d.server.url, &local)).unwrap();
    d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(d.fx.snapshot(), common::expected(&files));
    assert!(d.server.requests().is_empty());

    // Tampered metadata on the stick is refused like on the network.
    let ts = d.repo.metadata().join("timestamp.json");
    let tampered = fs::read_to_string(&ts)
        .unwrap()
        .replacen("\"version\": ", "\"version\": 9", 1);
    fs::write(&ts, tampered).unwrap();
    d.refused(&["timestamp", "threshold"]);
}

#[test]
fn a_tampered_large_target_is_refused_by_the_store_check() {
    let d = Device::new(&[]);
    let big = "x".repeat(3 * 1024 * 1024);
    d.publish(&[file("/opt/big.bin", &big, "0644")]);
    let t = d.repo.read_json("targets.json");
    let sha = t["signed"]["targets"]["files/0"]["hashes"]["sha256"]
        .as_str()
        .unwrap();
    fs::write(
        d.repo.dir.join(format!("targets/files/{sha}.0")),
        "y".repeat(3 * 1024 * 1024),
    )
    .unwrap();
    let err = d.refused(&["files/0"]);
    assert!(err.contains("sha256") || err.contains("mismatch"), "{err}");
    assert!(
        d.fx.store_leftovers().is_empty(),
        "{:?}",
        d.fx.store_leftovers()
    );
}
