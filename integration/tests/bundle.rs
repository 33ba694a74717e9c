//! Offline bundles: `ferry bundle export` from a loopback TUF repository
//! and from a signed git repository into FAT32 images, `ferry import` on
//! devices without network, and the attacks a USB stick may carry.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/gitrepo.rs"]
mod gitrepo;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::tuf::Device;
use common::{FERRY, Fixture, file, stderr};

/// A device that cannot reach any repository: its source points at a
/// closed port; it trusts `root` (TUF).
fn offline_tuf(root: &Path, extra: &str) -> Fixture {
    let fx = Fixture::new();
    // `stall_timeout_secs`: the deprecated spelling of `stall_timeout =
    // "2s"`, still read.
    fs::write(
        &fx.config,
        format!(
            "state_dir = {:?}\n[source]\nkind = \"tuf\"\n[source.tuf]\n\
             metadata_url = \"http://127.0.0.1:1/metadata\"\ntargets_url = \"http://127.0.0.1:1/targets\"\n\
             root = {root:?}\nstall_timeout_secs = 2\n{extra}\n[files]\nroot = {:?}\n",
            fx.state, fx.root
        ),
    )
    .unwrap();
    fx
}

fn facts(name: &str) -> PathBuf {
    common::data_dir().join("fleet/facts").join(name)
}

/// `ferry bundle export` with the configuration of `fx`.
fn export(fx: &Fixture, out: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["bundle", "export", "--json", "--out", out.to_str().unwrap()];
    a.extend_from_slice(args);
    fx.json(&a)
}

fn import(fx: &Fixture, path: &Path, args: &[&str]) -> Output {
    let mut c = fx.cmd(&["--facts", facts("gw-a.toml").to_str().unwrap(), "import"]);
    c.arg(path).args(args);
    c.output().unwrap()
}

fn current_revision(fx: &Fixture) -> String {
    let gens = fx.json(&["generations", "--json"]);
    gens.as_array()
        .unwrap()
        .iter()
        .find(|g| g["current"] == true)
        .map(|g| g["revision"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn audit(fx: &Fixture, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["audit", "list", "--json"];
    a.extend_from_slice(args);
    fx.json(&a).as_array().unwrap().clone()
}

/// Runs `import`, expecting exit `code` and an error naming `needles`;
/// nothing applied, the refusal audited, the chain intact.
fn refused(fx: &Fixture, path: &Path, code: i32, needles: &[&str]) -> String {
    let (gens, files, audit_len) = (fx.generation_ids(), fx.snapshot(), fx.audit_len());
    let out = import(fx, path, &[]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}: {}{err}",
        path.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}:\n{err}");
    }
    assert_eq!(fx.generation_ids(), gens, "no generation was made");
    assert_eq!(fx.snapshot(), files, "no file changed");
    let entries = audit(fx, &[]);
    assert!(entries.len() > audit_len, "the refusal is audited");
    let last = entries.last().unwrap();
    assert_eq!(last["event"], "import-refused", "{last:#}");
    assert!(
        last["actor"].as_str().unwrap().starts_with("usb:"),
        "{last:#}"
    );
    fx.ok(&["audit", "verify"]);
    err
}

/// A TUF repository with a manifest of two files, one of them 2 MiB (to
/// show progress), and a target no GW-3000 needs.
fn tuf_device() -> (Device, Vec<common::FileSpec>) {
    let d = Device::new(&[]);
    let big = "x".repeat(2 << 20);
    let files = vec![
        file("/etc/app.conf", "a = 1\n", "0644"),
        file("/opt/big.bin", &big, "0644"),
    ];
    d.publish(&files);
    d.repo
        .target("firmware/other-model.img", &[7u8; 4096], "targets");
    (d, files)
}

fn fat_listing(image: &Path) -> String {
    let out = Command::new("mdir")
        .args(["-/", "-b", "-i"])
        .arg(image)
        .arg("::/")
        .output()
        .expect("mdir (Debian package mtools)");
    assert!(out.status.success(), "mdir: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The volume serial as blkid reports it (`XXXX-XXXX`).
fn blkid_uuid(image: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-o", "value", "-s", "UUID"])
        .arg(image)
        .output()
        .expect("blkid (Debian package util-linux)");
    assert!(out.status.success(), "blkid: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn fsck_clean(image: &Path) {
    let out = Command::new("fsck.vfat")
        .arg("-n")
        .arg(image)
        .output()
        .expect("fsck.vfat (Debian package dosfstools)");
    assert!(
        out.status.success(),
        "fsck.vfat -n {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn tuf_bundle_through_a_fat_image_gives_the_generation_an_online_apply_gives() {
    let (d, files) = tuf_device();
    // Online: the reference.
    d.fx.ok(&[
        "--facts",
        facts("gw-a.toml").to_str().unwrap(),
        "apply",
        "--no-reboot",
    ]);
    let online_rev = current_revision(&d.fx);
    assert_eq!(d.fx.snapshot(), common::expected(&files));

    let image = d.fx.dir.path().join("stick.img");
    let e = export(
        &d.fx,
        &image,
        &[
            "--for-device",
            facts("gw-a.toml").to_str().unwrap(),
            "--label",
            "SITE7",
        ],
    );
    assert_eq!(e["marker"]["revision"], online_rev.as_str());
    assert_eq!(e["marker"]["devices"][0]["model"], "Acme GW-3000");
    let paths: Vec<&str> = e["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(paths.contains(&"tuf/metadata/1.root.json"), "{paths:?}");
    assert!(paths.contains(&"tuf/metadata/timestamp.json"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.contains("other-model")),
        "only what a GW-3000 needs: {paths:?}"
    );
    // The image is a clean FAT32 file system other tools read.
    fsck_clean(&image);
    let listing = fat_listing(&image);
    assert!(listing.contains("ferry-bundle.json"), "{listing}");
    assert!(listing.contains("timestamp.json"), "{listing}");

    // A device that never reached the repository imports the stick.
    let dev = offline_tuf(&d.repo.root_v1(), "");
    let out = {
        let mut c = dev.cmd(&[
            "--facts",
            facts("gw-a.toml").to_str().unwrap(),
            "--log-level",
            "info",
            "import",
        ]);
        c.arg(&image).output().unwrap()
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("import: read"),
        "progress of the 2 MiB file is logged:\n{}",
        stderr(&out)
    );
    assert_eq!(current_revision(&dev), online_rev);
    assert_eq!(dev.snapshot(), common::expected(&files));
    let gens = dev.json(&["generations", "--json"]);
    let name = format!("usb:SITE7/{}", blkid_uuid(&image));
    assert_eq!(gens[0]["source"], name.as_str(), "{gens:#}");

    // Offline installs are audited with the stick as actor, and the same
    // stick again changes nothing (and says so).
    let out = import(&dev, &image, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no changes"));
    let usb = audit(&dev, &["--actor", "usb:", "--since", "1h"]);
    let events: Vec<&str> = usb.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert!(events.contains(&"switched"), "{events:?}");
    let imported: Vec<&serde_json::Value> =
        usb.iter().filter(|e| e["event"] == "imported").collect();
    assert_eq!(imported.len(), 2, "{usb:#?}");
    assert_eq!(imported[0]["details"]["outcome"], "switched");
    assert_eq!(imported[1]["details"]["outcome"], "no-change");
    assert_eq!(imported[0]["actor"], name.as_str());
    assert!(audit(&dev, &["--since", "2999-01-01"]).is_empty());
    dev.ok(&["audit", "verify"]);
}

#[test]
fn a_directory_bundle_copied_onto_a_stick_made_by_mkfs_vfat_imports() {
    let (d, files) = tuf_device();
    let dir = d.fx.dir.path().join("bundle");
    export(&d.fx, &dir, &[]);
    // Without --for-device: every target.
    assert!(
        fs::read_dir(dir.join("tuf/targets/firmware"))
            .unwrap()
            .next()
            .is_some()
    );
    let image = d.fx.dir.path().join("desktop.img");
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {}", stderr(&out));
    };
    ok(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "TECH", "-C"])
        .arg(&image)
        .arg("65536"));
    let mut mcopy = Command::new("mcopy");
    mcopy.args(["-s", "-i"]).arg(&image);
    for e in fs::read_dir(&dir).unwrap() {
        mcopy.arg(e.unwrap().path());
    }
    ok(mcopy.arg("::/"));

    // Mounted (here: the directory) from that partition (here: the image).
    let dev = offline_tuf(&d.repo.root_v1(), "");
    let out = import(&dev, &dir, &["--device", image.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dev.snapshot(), common::expected(&files));
    let last = audit(&dev, &[]).last().unwrap().clone();
    let name = format!("usb:TECH/{}", blkid_uuid(&image));
    assert_eq!(
        last["actor"],
        name.as_str(),
        "label and serial name the stick"
    );
    // The image itself reads the same and names the stick the same way.
    let dev = offline_tuf(&d.repo.root_v1(), "");
    let out = import(&dev, &image, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dev.snapshot(), common::expected(&files));
    let last = audit(&dev, &[]).last().unwrap().clone();
    assert_eq!(last["actor"], name.as_str());
}

#[test]
fn git_bundle_through_a_fat_image_gives_the_generation_an_online_apply_gives() {
    let fx = Fixture::new();
    let keys = gitrepo::Keys::new(fx.dir.path());
    let repo = gitrepo::Repo::new(fx.dir.path(), &keys);
    let config = |fx: &Fixture, url: &str| {
        fs::write(
            &fx.config,
            format!(
                "state_dir = {:?}\n[source]\nkind = \"git\"\n[source.git]\nurl = {url:?}\ntrust_dir = {:?}\n[files]\nroot = {:?}\n",
                fx.state,
                keys.trust_dir(),
                fx.root
            ),
        )
        .unwrap();
    };
    config(&fx, &format!("file://{}", repo.bare.display()));
    repo.write(
        "ferry.yaml",
        "apiVersion: ferry.dev/v1\nresources:\n  - kind: file\n    path: /etc/app/site.conf\n    source: site.conf\n",
    );
    repo.write("site.conf", "threshold = 80\n");
    repo.commit("initial", Some(&keys.admin));
    repo.write("site.conf", "threshold = 90\n");
    let tip = repo.commit("raise the threshold", Some(&keys.admin));
    repo.push(&tip);

    fx.ok(&["apply"]);
    assert_eq!(current_revision(&fx), tip);
    let image = fx.dir.path().join("git.img");
    let e = export(&fx, &image, &["--label", "GITSTICK"]);
    assert_eq!(e["marker"]["kind"], "git");
    assert_eq!(e["marker"]["revision"], tip.as_str());
    fsck_clean(&image);

    let dev = Fixture::new();
    config(&dev, "file:///nonexistent/fleet.git");
    let out = import(&dev, &image, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(current_revision(&dev), tip);
    assert_eq!(dev.snapshot(), fx.snapshot());
    let entries = audit(&dev, &["--event", "switched"]);
    assert!(
        entries[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with(&format!("usb:GITSTICK/{} (", blkid_uuid(&image))),
        "{entries:#?}"
    );

    // An older stick (the history rewound to the first commit) is a rollback.
    let old = fx.dir.path().join("old-export");
    let first = {
        let out = repo.git().args(["rev-parse", "HEAD~1"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    repo.push(&first);
    let exporter = Fixture::new();
    config(&exporter, &format!("file://{}", repo.bare.display()));
    export(&exporter, &old, &[]);
    refused(&dev, &old, 4, &["rollback"]);

    // A commit on the stick that no trusted key signed.
    repo.write("site.conf", "threshold = 1\n");
    let unsigned = repo.commit("unsigned", None);
    repo.push(&unsigned);
    let forged = fx.dir.path().join("forged");
    fs::create_dir_all(forged.join("git")).unwrap();
    fs::copy(
        old.join("ferry-bundle.json"),
        forged.join("ferry-bundle.json"),
    )
    .unwrap();
    bundle_main(&repo, &forged.join("git/ferry.bundle"));
    let packs = |dev: &Fixture| {
        let mut v: Vec<String> = fs::read_dir(dev.state.join("git/repo.git/objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = packs(&dev);
    refused(&dev, &forged, 4, &["is not signed"]);
    assert_eq!(current_revision(&dev), tip);
    // Regression: a refused bundle's pack stayed in the device's object
    // store for ever; it is unpacked into a quarantine that is dropped.
    assert_eq!(packs(&dev), before, "a refused bundle left objects behind");
    assert!(!dev.state.join("git/incoming.git").exists());

    // Regression: a small bundle holding a huge object was inflated into
    // memory whole (1 GB of RAM for a 1 MB bundle); now capped while
    // inflating (max_file_bytes, at least 64 MiB) and refused.
    repo.write("zeros.bin", &"\0".repeat(200 << 20));
    let huge = repo.commit("a 200 MiB file of zeros", Some(&keys.admin));
    repo.push(&huge);
    bundle_main(&repo, &forged.join("git/ferry.bundle"));
    assert!(fs::metadata(forged.join("git/ferry.bundle")).unwrap().len() < 4 << 20);
    refused(&dev, &forged, 3, &["ferry.bundle", "over"]);
    assert_eq!(packs(&dev), before);
    assert!(!dev.state.join("git/incoming.git").exists());

    // Not a git bundle, or a cut-short pack: exit 3, the file named.
    fs::write(forged.join("git/ferry.bundle"), "PK\x03\x04 not a bundle\n").unwrap();
    refused(&dev, &forged, 3, &["ferry.bundle", "not a git bundle"]);
    let good = fs::read(old.join("git/ferry.bundle")).unwrap();
    fs::write(forged.join("git/ferry.bundle"), &good[..good.len() - 40]).unwrap();
    refused(&dev, &forged, 3, &["ferry.bundle", "pack"]);
    assert_eq!(current_revision(&dev), tip);
}

/// Writes the pushed `main` of `repo` as a git bundle with git itself.
fn bundle_main(repo: &gitrepo::Repo, out: &Path) {
    let out = repo
        .git()
        .arg("--git-dir")
        .arg(&repo.bare)
        .args(["bundle", "create"])
        .arg(out)
        .arg("main")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Two bundles of the same repository, the device at the newer one.
struct Versions {
    d: Device,
    v1: PathBuf,
    v2: PathBuf,
    dev: Fixture,
}

fn two_versions() -> Versions {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/app.conf", "v = 1\n", "0644")]);
    let v1 = d.fx.dir.path().join("v1");
    export(&d.fx, &v1, &[]);
    d.publish(&[file("/etc/app.conf", "v = 2\n", "0644")]);
    let v2 = d.fx.dir.path().join("v2");
    export(&d.fx, &v2, &[]);
    let dev = offline_tuf(&d.repo.root_v1(), "");
    Versions { d, v1, v2, dev }
}

#[test]
fn older_tampered_and_mixed_tuf_bundles_are_refused_and_audited() {
    let v = two_versions();
    let out = import(&v.dev, &v.v2, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let at_v2 = v.dev.snapshot();

    // Rollback: the older stick.
    refused(&v.dev, &v.v1, 4, &["version"]);

    v.d.publish(&[file("/etc/app.conf", "v = 3\n", "0644")]);
    let v3 = v.d.fx.dir.path().join("v3");
    export(&v.d.fx, &v3, &[]);

    // Mix and match: v3's timestamp and snapshot with v2's targets role
    // under v3's name.
    let mixed = v.d.fx.dir.path().join("mixed");
    common::copy_tree(&v3, &mixed);
    let v3_targets = find(&mixed.join("tuf/metadata"), "targets.json");
    let v2_targets = find(&v.v2.join("tuf/metadata"), "targets.json");
    fs::copy(&v2_targets, &v3_targets).unwrap();
    refused(&v.dev, &mixed, 4, &["targets", "snapshot"]);

    // A target changed on the stick.
    let tampered = v.d.fx.dir.path().join("tampered");
    common::copy_tree(&v3, &tampered);
    let target = find(&tampered.join("tuf/targets/files"), "0");
    fs::write(&target, "v = 666\n").unwrap();
    refused(&v.dev, &tampered, 4, &["files/0"]);

    assert_eq!(v.dev.snapshot(), at_v2);
    // The untampered v3 still imports.
    let out = import(&v.dev, &v3, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The file in `dir` whose name ends with `suffix` (hash-prefixed names).
fn find(dir: &Path, suffix: &str) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dir.display()))
}

#[test]
fn a_bundle_signed_by_another_repository_is_refused() {
    let v = two_versions();
    // Same content, published by a repository with keys of its own.
    let other = Device::new(&[]);
    other.publish(&[file("/etc/app.conf", "evil = 1\n", "0644")]);
    let foreign = other.fx.dir.path().join("foreign");
    export(&other.fx, &foreign, &[]);
    // Metadata signed by the stranger's keys: the device trusts its own root.
    refused(&v.dev, &foreign, 4, &["timestamp", "signature"]);
    // Nor can the stranger's root pose as the next root version.
    let spliced = other.fx.dir.path().join("spliced");
    common::copy_tree(&v.v2, &spliced);
    fs::copy(
        foreign.join("tuf/metadata/1.root.json"),
        spliced.join("tuf/metadata/2.root.json"),
    )
    .unwrap();
    refused(&v.dev, &spliced, 4, &["root", "not signed by trusted root"]);
}

#[test]
fn offline_expiry_is_judged_at_the_time_floor_not_the_clock() {
    let d = Device::new(&[]);
    d.publish(&[file("/etc/app.conf", "v = 1\n", "0644")]);
    // Short-lived metadata, as a real timestamp role has.
    d.repo.run("expire", &["timestamp", "--days", "2"]);
    let stick = d.fx.dir.path().join("stick");
    export(&d.fx, &stick, &[]);

    // A device whose clock runs 30 days ahead (or a stick carried for a
    // month): the clock is not evidence offline, the floor is.
    let late = offline_tuf(&d.repo.root_v1(), "");
    let out = Command::new("faketime")
        .args(["-f", "+30d", FERRY, "--config"])
        .arg(&late.config)
        .args(["--facts", facts("gw-a.toml").to_str().unwrap(), "import"])
        .arg(&stick)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(late.snapshot()["etc/app.conf"].0, b"v = 1\n");
    // …and that clock did not become the floor.
    assert!(!late.state.join("tuf/time-floor").exists());

    // A device that has verified metadata later than the stick's expiry
    // (its floor, here baked into the image) refuses the stale stick.
    let floor = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(5 * 24);
    let fresh = offline_tuf(&d.repo.root_v1(), &format!("time_floor = \"{floor}\""));
    refused(&fresh, &stick, 4, &["timestamp", "expired"]);

    // With a right clock, an import raises the floor like an online refresh.
    let right = offline_tuf(&d.repo.root_v1(), "");
    let out = import(&right, &stick, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let f: i64 = fs::read_to_string(right.state.join("tuf/time-floor"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((f - jiff::Timestamp::now().as_second()).abs() < 600, "{f}");
}

#[test]
fn bad_sticks_get_clear_errors_and_change_nothing() {
    let (d, files) = tuf_device();
    let dir = d.fx.dir.path().join("bundle");
    export(
        &d.fx,
        &dir,
        &["--for-device", facts("gw-c.toml").to_str().unwrap()],
    );
    let dev = offline_tuf(&d.repo.root_v1(), "");

    // A stick for another device model (the device is a GW-3000).
    refused(&dev, &dir, 8, &["Other X1", "Acme GW-3000"]);

    // A stick without a bundle: exit 8, nothing recorded.
    let empty = d.fx.dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let before = dev.audit_len();
    let out = import(&dev, &empty, &[]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a ferry bundle"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dev.audit_len(), before);

    // A marker that is not one.
    let bad = d.fx.dir.path().join("bad-marker");
    common::copy_tree(&dir, &bad);
    fs::write(
        bad.join("ferry-bundle.json"),
        "{\"format\": 1,\n \"kind\": 7}",
    )
    .unwrap();
    refused(&dev, &bad, 3, &["ferry-bundle.json", "line 2"]);

    // A directory bundle may hold plain files only: a symlink (to a file
    // outside, or a FIFO that would block the import) is refused by name.
    let linked = d.fx.dir.path().join("linked");
    common::copy_tree(&dir, &linked);
    std::os::unix::fs::symlink(
        "/etc/hostname",
        linked.join("tuf/metadata/timestamp.json.tmp"),
    )
    .unwrap();
    refused(&dev, &linked, 3, &["timestamp.json.tmp", "symbolic link"]);

    // Corrupt and truncated FAT images.
    let image = d.fx.dir.path().join("ok.img");
    let full = d.fx.dir.path().join("full");
    export(&d.fx, &full, &[]);
    export(&d.fx, &image, &[]);
    let garbage = d.fx.dir.path().join("garbage.img");
    fs::write(&garbage, vec![0x5a; 1 << 20]).unwrap();
    refused(&dev, &garbage, 3, &["garbage.img", "FAT"]);
    let cut = d.fx.dir.path().join("cut.img");
    let bytes = fs::read(&image).unwrap();
    // Boot sector and part of the allocation tables, no data.
    fs::write(&cut, &bytes[..512 * 1024]).unwrap();
    let err = refused(&dev, &cut, 3, &["cut.img"]);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dev.state.join("import").exists(), "staging removed");

    // Exporting over a non-empty directory is refused.
    let out =
        d.fx.run(&["bundle", "export", "--out", full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    // After all that, the good image still imports.
    let out = import(&dev, &image, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dev.snapshot(), common::expected(&files));
}

#[test]
fn a_stick_pulled_out_while_files_stream_leaves_nothing_half_applied() {
    let (d, files) = tuf_device();
    let stick = d.fx.dir.path().join("stick");
    export(&d.fx, &stick, &[]);
    let dev = offline_tuf(&d.repo.root_v1(), "");
    let mut child = dev
        .cmd(&["--facts", facts("gw-a.toml").to_str().unwrap(), "import"])
        .arg(&stick)
        .env("FERRY_CRASH_AT", "transition::planned:stall")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Metadata verified, the transition planned: now the stick goes.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(
        line.contains("failpoint transition::planned reached"),
        "{line}"
    );
    fs::remove_dir_all(&stick).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{rest}");
    assert!(
        rest.contains("files/"),
        "names what could not be read: {rest}"
    );
    assert!(dev.generation_ids().is_empty(), "no generation");
    assert!(dev.snapshot().is_empty(), "no file installed");
    assert!(dev.integrity_ok());
    dev.ok(&["audit", "verify"]);
    let last = audit(&dev, &[]).last().unwrap().clone();
    assert_eq!(last["event"], "import-refused", "{last:#}");

    // Plugged in again (exported again): it imports.
    export(&d.fx, &stick, &[]);
    let out = import(&dev, &stick, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dev.snapshot(), common::expected(&files));
}

#[test]
fn audit_export_is_a_chain_a_fleet_server_can_verify_and_join() {
    let v = two_versions();
    for b in [&v.v1, &v.v2] {
        let out = import(&v.dev, b, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let text = v.dev.ok(&[
        "--facts",
        facts("gw-a.toml").to_str().unwrap(),
        "audit",
        "export",
    ]);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let schema: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(common::data_dir().join("../schemas/audit-export.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for l in &lines {
        let errors: Vec<String> = validator.iter_errors(l).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{l}: {errors:?}");
    }
    let header = &lines[0];
    assert_eq!(header["format"], "ferry-audit-export/1");
    assert_eq!(
        header["device"]["machine_id"],
        "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0"
    );
    let entries = &lines[1..];
    // The receiver recomputes every hash from the previous one.
    let mut prev = "0".repeat(64);
    for e in entries {
        assert_eq!(e["prev_hash"], prev.as_str());
        let entry: ferry_core::audit::AuditEntry = serde_json::from_value(e.clone()).unwrap();
        let prev_hash: ferry_core::Sha256 = prev.parse().unwrap();
        let h = entry.chain_hash(&prev_hash).to_string();
        assert_eq!(e["hash"], h.as_str(), "{e}");
        prev = h;
    }
    assert_eq!(header["head"]["hash"], prev.as_str());
    assert!(entries.iter().any(|e| e["event"] == "imported"));

    // Incremental: only what the receiver lacks, joined to what it has.
    let n = entries.len() as u64;
    let text = v
        .dev
        .ok(&["audit", "export", "--after", &(n - 2).to_string()]);
    let tail: Vec<serde_json::Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0]["prev_hash"], entries[entries.len() - 3]["hash"]);
    // Only the offline installs.
    let text = v
        .dev
        .ok(&["audit", "export", "--actor", "usb:", "--event", "imported"]);
    assert_eq!(text.lines().count(), 1 + 2, "{text}");
}

#[test]
fn a_bundle_that_does_not_fit_on_the_stick_leaves_no_image() {
    let d = Device::new(&[]);
    let big = "f".repeat(36 << 20);
    d.publish(&[file("/opt/big.bin", &big, "0644")]);
    let small = d.fx.dir.path().join("small.img");
    let out = d.fx.run(&[
        "bundle",
        "export",
        "--out",
        small.to_str().unwrap(),
        "--image-size",
        "34",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("small.img") && err.contains("does not fit"),
        "{err}"
    );
    assert!(!small.exists(), "no image");
    assert!(
        !d.fx.dir.path().join("small.img.part").exists(),
        "no leftovers"
    );
}

#[test]
fn a_bundle_carries_the_root_rotation_chain_to_a_device_with_the_first_root() {
    let d = Device::new(&[]);
    let files = [file("/etc/app.conf", "rotated\n", "0644")];
    d.publish(&files);
    // Three root versions since the device's image was baked with
    // 1.root.json (new root keys twice, then a new timestamp key).
    d.repo.run(
        "rotate",
        &["--role", "root", "--keys", "2", "--threshold", "2"],
    );
    d.repo.run("rotate", &["--role", "root"]);
    d.repo.run("rotate", &["--role", "timestamp"]);
    let stick = d.fx.dir.path().join("stick");
    let e = export(&d.fx, &stick, &[]);
    let paths = e["paths"].to_string();
    for v in 1..=4 {
        assert!(
            paths.contains(&format!("tuf/metadata/{v}.root.json")),
            "{paths}"
        );
    }
    let dev = offline_tuf(&d.repo.root_v1(), "");
    let out = import(&dev, &stick, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dev.snapshot(), common::expected(&files));
    let trusted: serde_json::Value =
        serde_json::from_slice(&fs::read(dev.state.join("tuf/metadata/root.json")).unwrap())
            .unwrap();
    assert_eq!(
        trusted["signed"]["version"], 4,
        "the device now trusts root v4"
    );

    // A chain with a link missing cannot be followed: the timestamp is then
    // signed by a key the device does not know.
    let broken = d.fx.dir.path().join("broken");
    common::copy_tree(&stick, &broken);
    fs::remove_file(broken.join("tuf/metadata/2.root.json")).unwrap();
    let dev = offline_tuf(&d.repo.root_v1(), "");
    refused(&dev, &broken, 4, &["timestamp"]);
}
