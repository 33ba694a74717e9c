//! Delta updates end to end: firmware v2 delivered by chunks through a real
//! TUF repository (python-tuf) on a loopback HTTP server, built in the
//! inactive slot from the running slot's bytes; tampered, foreign and
//! truncated chunks, an unsigned index, a dropping server, a power cut
//! mid-write and a full disk. The bootloader is GRUB, played with
//! grub-editenv as in firmware.rs.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::tuf::{Device, Fault};
use common::*;

const SLOT: usize = 8 << 20;

/// A deterministic pseudo-random image of `len` bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn v1() -> Vec<u8> {
    noise(6 << 20, 1)
}

/// v1 with a 4 KiB insertion near the start (every later offset shifts)
/// and three 20 KiB edits.
fn v2() -> Vec<u8> {
    let mut v = v1();
    v.splice(100_000..100_000, noise(4096, 2));
    for (i, at) in [1usize << 20, 3 << 20, 5 << 20].into_iter().enumerate() {
        v[at..at + 20_000].copy_from_slice(&noise(20_000, 10 + i as u64));
    }
    v
}

struct Gateway {
    d: Device,
    grubenv: PathBuf,
    cmdline: PathBuf,
    slot_b: PathBuf,
    boot: std::cell::Cell<u32>,
}

impl Gateway {
    fn new() -> Gateway {
        Self::with_slot_b(None)
    }

    /// `slot_b`: where slot B's image file lives (default: the fixture).
    fn with_slot_b(slot_b: Option<PathBuf>) -> Gateway {
        let d = Device::new(&[]);
        let dir = d.fx.dir.path().to_path_buf();
        let (grubenv, cmdline) = (dir.join("grubenv"), dir.join("cmdline"));
        let slot_b = slot_b.unwrap_or_else(|| dir.join("slot-b.img"));
        *d.extra.borrow_mut() = format!(
            "[firmware]\nbootenv = \"grub\"\ngrubenv = {grubenv:?}\ncmdline = {cmdline:?}\n\
             boot_id = {:?}\nreboot_command = [\"true\"]\n\
             slots = [{{ name = \"A\", device = {:?}, size = {SLOT} }}, {{ name = \"B\", device = {slot_b:?}, size = {SLOT} }}]\n",
            dir.join("boot_id"),
            dir.join("slot-a.img"),
        );
        d.configure(&d.repo.root_v1());
        // Chunks of ~64 KiB must arrive within 2 s + 1 s (a drip fails fast).
        let text = fs::read_to_string(&d.fx.config).unwrap().replace(
            "stall_timeout = \"2s\"\n",
            "stall_timeout = \"2s\"\nmin_rate_bytes_per_sec = 65536\n",
        );
        fs::write(&d.fx.config, text).unwrap();
        let g = grubenv.to_str().unwrap();
        tool("grub-editenv", &[g, "create"]);
        tool(
            "grub-editenv",
            &[
                g,
                "set",
                "ORDER=A B",
                "A_OK=1",
                "A_TRY=0",
                "B_OK=0",
                "B_TRY=0",
            ],
        );
        fs::write(dir.join("slot-a.img"), v1()).unwrap();
        fs::write(&slot_b, b"").unwrap();
        let slot_b = slot_b.clone();
        let gw = Gateway {
            d,
            grubenv,
            cmdline,
            slot_b,
            boot: std::cell::Cell::new(0),
        };
        gw.power_on();
        gw.d.fx.ok(&["firmware", "mark-good"]);
        gw
    }

    fn get(&self, name: &str) -> Option<String> {
        let list = tool("grub-editenv", &[self.grubenv.to_str().unwrap(), "list"]);
        list.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    /// GRUB: the first slot in ORDER with OK=1 and TRY=0 boots (TRY=1 saved).
    /// The slot it boots must hold v1 or v2 completely.
    fn power_on(&self) -> String {
        self.boot.set(self.boot.get() + 1);
        fs::write(
            self.d.fx.dir.path().join("boot_id"),
            format!("boot-{}\n", self.boot.get()),
        )
        .unwrap();
        let g = self.grubenv.to_str().unwrap();
        let order = self.get("ORDER").unwrap();
        for slot in order.split_whitespace() {
            if self.get(&format!("{slot}_OK")).as_deref() == Some("1")
                && self.get(&format!("{slot}_TRY")).as_deref() == Some("0")
            {
                tool("grub-editenv", &[g, "set", &format!("{slot}_TRY=1")]);
                fs::write(&self.cmdline, format!("rauc.slot={slot}\n")).unwrap();
                let image = self.slot(slot);
                assert!(
                    image == v1() || image == v2(),
                    "slot {slot} booted with an incomplete image ({} bytes)",
                    image.len()
                );
                return slot.to_owned();
            }
        }
        panic!("GRUB finds no bootable slot");
    }

    fn slot(&self, name: &str) -> Vec<u8> {
        let path = if name == "A" {
            self.d.fx.dir.path().join("slot-a.img")
        } else {
            self.slot_b.clone()
        };
        fs::read(path).unwrap()
    }

    /// Publishes firmware `image` with a chunk index (unless `chunks` is
    /// false); the chunk store goes below the targets URL (`chunks/`).
    /// Returns the store directory.
    fn publish(&self, version: &str, image: &[u8], chunks: bool) -> PathBuf {
        let dir = self.d.fx.dir.path();
        let src = dir.join(".publish");
        let _ = fs::remove_dir_all(&src);
        fs::create_dir_all(src.join("images")).unwrap();
        fs::create_dir_all(src.join("ferry")).unwrap();
        fs::write(src.join("images/os.img"), image).unwrap();
        let store = self.d.repo.dir.join("targets");
        let delta = if chunks {
            let out = self.d.fx.ok(&[
                "chunk",
                src.join("images/os.img").to_str().unwrap(),
                "--out",
                store.to_str().unwrap(),
            ]);
            assert!(out.contains("chunks"), "{out}");
            fs::rename(
                store.join("os.img.chunks"),
                src.join("images/os.img.chunks"),
            )
            .unwrap();
            ", chunks: {index: images/os.img.chunks}"
        } else {
            ""
        };
        fs::write(
            src.join("ferry/manifest.yaml"),
            format!(
                "apiVersion: ferry.dev/v1\nresources:\n  - {{kind: firmware, name: gateway-os, version: \"{version}\", source: images/os.img{delta}}}\n"
            ),
        )
        .unwrap();
        self.d.repo.run("tree", &[src.to_str().unwrap()]);
        fs::remove_dir_all(&src).unwrap();
        store.join("chunks")
    }

    fn audit(&self, event: &str) -> Vec<serde_json::Value> {
        let a = self.d.fx.json(&["audit", "list", "--json"]);
        a.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == event)
            .cloned()
            .collect()
    }

    fn full_image_fetched(&self) -> bool {
        self.d
            .server
            .requests()
            .iter()
            .any(|r| r.starts_with("/targets/images/") && r.ends_with(".os.img"))
    }

    fn chunk_requests(&self) -> usize {
        self.d
            .server
            .requests()
            .iter()
            .filter(|r| r.starts_with("/targets/chunks/"))
            .count()
    }

    /// Boots the new slot and confirms it.
    fn boot_new(&self) {
        assert_eq!(self.power_on(), "B");
        self.d.fx.ok(&["recover"]);
        assert_eq!(self.get("B_OK").as_deref(), Some("1"));
    }
}

/// The chunk files of v2 that v1 lacks (what a delta fetches).
fn new_chunks(store: &Path) -> Vec<PathBuf> {
    let mut v1_store = tempfile::tempdir().unwrap();
    let img = v1_store.path().join("v1.img");
    fs::write(&img, v1()).unwrap();
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let out = Command::new(ferry)
        .args(["chunk", img.to_str().unwrap(), "--out"])
        .arg(v1_store.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut have = std::collections::HashSet::new();
    walk(&v1_store.path().join("chunks"), &mut |p| {
        have.insert(p.file_name().unwrap().to_owned());
    });
    let mut missing = Vec::new();
    walk(store, &mut |p| {
        if !have.contains(p.file_name().unwrap()) {
            missing.push(p.to_owned());
        }
    });
    let _ = &mut v1_store;
    missing.sort();
    missing
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

#[test]
fn a_delta_update_reuses_the_running_slot_and_is_bit_identical() {
    let g = Gateway::new();
    let store = g.publish("2.0", &v2(), true);
    let fetchable = new_chunks(&store);
    assert!(!fetchable.is_empty());

    let plan = g.d.fx.ok(&["plan"]);
    assert!(plan.contains("by delta"), "{plan}");
    let json = g.d.fx.json(&["plan", "--json"]);
    let download = &json["steps"][0]["download"];
    let (full, delta) = (
        download["full"].as_u64().unwrap(),
        download["delta"].as_u64().unwrap(),
    );
    assert_eq!(full, v2().len() as u64);
    assert!(delta * 5 < full, "delta {delta} of {full}");

    g.d.server.clear_requests();
    g.d.fx.ok(&["apply", "--no-reboot"]);
    assert_eq!(g.slot("B"), v2(), "bit-identical");
    assert_eq!(g.slot("A"), v1(), "the running slot is untouched");
    assert!(!g.full_image_fetched(), "{:?}", g.d.server.requests());
    assert_eq!(g.chunk_requests(), fetchable.len(), "only what v1 lacks");

    let entries = g.audit("delta");
    let entry = &entries[0]["details"];
    let fetched = entry["bytes_fetched"].as_u64().unwrap();
    let reused = entry["bytes_reused"].as_u64().unwrap();
    assert!(fetched > 0 && fetched * 5 < v2().len() as u64, "{entry}");
    assert!(reused > v2().len() as u64 / 2, "{entry}");
    assert_eq!(entry["slot"], "B");
    // Plan's estimate is what was fetched.
    assert_eq!(delta, fetched, "{entry}");
    g.d.fx.ok(&["audit", "verify"]);
    g.boot_new();
    // The next update is seeded from B by the index cached when B was written.
    let cached = fs::read_dir(g.d.fx.state.join("delta")).unwrap().count();
    assert!(cached >= 1);
}

#[test]
fn bad_chunks_fall_back_to_the_full_image_and_never_boot_a_corrupt_slot() {
    type Spoil = fn(&Path, &[PathBuf]);
    let cases: [(&str, Spoil); 3] = [
        ("tampered", |p, _| {
            // A valid zstd frame of other bytes, same name.
            let other = zstd_frame(&noise(30_000, 99));
            fs::write(p, other).unwrap();
        }),
        ("another chunk", |p, all| {
            let other = all.iter().find(|o| *o != p).unwrap();
            fs::copy(other, p).unwrap();
        }),
        ("truncated", |p, _| {
            let bytes = fs::read(p).unwrap();
            fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
        }),
    ];
    for (what, spoil) in cases {
        let g = Gateway::new();
        let store = g.publish("2.0", &v2(), true);
        let fetchable = new_chunks(&store);
        spoil(&fetchable[fetchable.len() / 2], &fetchable);
        g.d.fx.ok(&["apply", "--no-reboot"]);
        let entries = g.audit("delta");
        let entry = &entries[0]["details"];
        let reason = entry["fallback"].as_str().unwrap_or_default();
        assert!(reason.contains("chunk"), "{what}: {entry}");
        assert!(
            g.full_image_fetched(),
            "{what}: fell back to the full image"
        );
        assert_eq!(g.slot("B"), v2(), "{what}");
        assert_eq!(g.slot("A"), v1(), "{what}");
        g.boot_new();
    }
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    fs::write(&p, data).unwrap();
    tool("zstd", &["-q", "-f", p.to_str().unwrap()]);
    fs::read(dir.path().join("x.zst")).unwrap()
}

#[test]
fn an_index_that_is_not_signed_is_refused() {
    let g = Gateway::new();
    // The index is on the server but not in the signed targets metadata.
    g.publish("2.0", &v2(), false);
    let img = g.d.fx.dir.path().join("v2.img");
    fs::write(&img, v2()).unwrap();
    let targets = g.d.repo.dir.join("targets");
    g.d.fx.ok(&[
        "chunk",
        img.to_str().unwrap(),
        "--out",
        targets.to_str().unwrap(),
    ]);
    fs::rename(
        targets.join("v2.img.chunks"),
        targets.join("images/os.img.chunks"),
    )
    .unwrap();
    let src = g.d.fx.dir.path().join(".manifest");
    fs::create_dir_all(src.join("ferry")).unwrap();
    fs::write(
        src.join("ferry/manifest.yaml"),
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: firmware, name: gateway-os, version: \"2.0\", source: images/os.img, chunks: {index: images/os.img.chunks}}\n",
    )
    .unwrap();
    g.d.repo.run("tree", &[src.to_str().unwrap()]);
    let before = g.d.fx.audit_len();
    let out = g.d.fx.run(&["apply", "--no-reboot"]);
    let err = stderr(&out);
    // Not in the signed metadata: not part of the revision (exit 3), refused and audited.
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("/resources/0/chunks/index")
            && err.contains("images/os.img.chunks: not found in revision"),
        "{err}"
    );
    assert!(g.d.fx.audit_len() > before);
    assert_eq!(g.d.fx.generation_ids().len(), 0);
    g.d.fx.ok(&["audit", "verify"]);
    assert_eq!(g.slot("B"), b"", "slot B untouched");
    assert_eq!(g.get("B_OK").as_deref(), Some("0"));
}

/// A signed index far larger than its image needs is refused before it is
/// read, and the full image is fetched: what an index may cost in memory
/// follows the image it describes, not what its signer claims.
#[test]
fn an_oversized_index_is_refused_before_it_is_read() {
    let g = Gateway::new();
    g.publish("2.0", &v2(), true);
    // Re-published with the same chunks, as plain JSON padded to 4 MiB
    // (a ~7 MiB image needs at most ~1.8 MiB).
    let targets = g.d.repo.dir.join("targets");
    let src = g.d.fx.dir.path().join(".bloated");
    fs::create_dir_all(src.join("images")).unwrap();
    fs::create_dir_all(src.join("ferry")).unwrap();
    fs::write(src.join("images/os.img"), v2()).unwrap();
    let published = g.d.fx.dir.path().join("published.chunks");
    let img = g.d.fx.dir.path().join("v2.img");
    fs::write(&img, v2()).unwrap();
    g.d.fx.ok(&[
        "chunk",
        img.to_str().unwrap(),
        "--out",
        targets.to_str().unwrap(),
    ]);
    fs::rename(targets.join("v2.img.chunks"), &published).unwrap();
    let index =
        ferry_delta::index::ChunkIndex::parse(&fs::read(&published).unwrap(), "index").unwrap();
    let mut json = serde_json::to_vec(&index).unwrap();
    json.resize(4 << 20, b' ');
    fs::write(src.join("images/os.img.chunks"), &json).unwrap();
    fs::write(
        src.join("ferry/manifest.yaml"),
        "apiVersion: ferry.dev/v1\nresources:\n  - {kind: firmware, name: gateway-os, version: \"2.0\", source: images/os.img, chunks: {index: images/os.img.chunks}}\n",
    )
    .unwrap();
    g.d.repo.run("tree", &[src.to_str().unwrap()]);
    g.d.fx.ok(&["apply", "--no-reboot"]);
    assert!(g.full_image_fetched());
    assert_eq!(g.slot("B"), v2());
    let entries = g.audit("delta");
    let reason = entries[0]["details"]["fallback"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("more than an index of a"), "{entries:#?}");
}

#[test]
fn a_dropping_server_is_retried_and_a_dead_store_falls_back() {
    let g = Gateway::new();
    let store = g.publish("2.0", &v2(), true);
    let fetchable = new_chunks(&store);
    // One chunk's connection drops mid-body every time; another one once.
    let path = |p: &Path| {
        format!(
            "/targets/chunks/{}",
            p.strip_prefix(&store).unwrap().display()
        )
    };
    g.d.server
        .fault(&path(&fetchable[0]), Some(Fault::CutAfter(100)));
    g.d.fx.ok(&["apply", "--no-reboot"]);
    let entries = g.audit("delta");
    let entry = &entries[0]["details"];
    assert!(
        entry["fallback"].as_str().unwrap_or_default().contains(
            fetchable[0]
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(".zst")
        ),
        "{entry}"
    );
    let tries =
        g.d.server
            .requests()
            .iter()
            .filter(|r| **r == path(&fetchable[0]))
            .count();
    assert_eq!(tries, 4, "retried before giving up");
    assert_eq!(g.slot("B"), v2());
    g.boot_new();
}

#[test]
fn a_slow_drip_chunk_is_given_up_and_the_full_image_fetched() {
    let g = Gateway::new();
    let store = g.publish("2.0", &v2(), true);
    let fetchable = new_chunks(&store);
    // One byte every 100 ms: far below source.tuf.min_rate_bytes_per_sec.
    let path = format!(
        "/targets/chunks/{}",
        fetchable[0].strip_prefix(&store).unwrap().display()
    );
    g.d.server.fault(&path, Some(Fault::Drip));
    g.d.fx.ok(&["apply", "--no-reboot"]);
    let entries = g.audit("delta");
    let entry = &entries[0]["details"];
    assert!(
        entry["fallback"]
            .as_str()
            .unwrap_or_default()
            .contains("did not arrive within"),
        "{entry}"
    );
    let tries = g.d.server.requests().iter().filter(|r| **r == path).count();
    assert_eq!(tries, 1, "a drip is not retried");
    assert!(g.full_image_fetched());
    assert_eq!(g.slot("B"), v2());
    g.boot_new();
}

#[test]
fn a_power_cut_mid_write_boots_the_old_slot_and_the_next_run_resumes() {
    let g = Gateway::new();
    let store = g.publish("2.0", &v2(), true);
    let fetchable = new_chunks(&store).len();
    // Killed after 60 chunks were written (of about 100).
    let out =
        g.d.fx
            .cmd(&["apply", "--no-reboot"])
            .env("FERRY_CRASH_AT", "delta::chunk:abort:60")
            .output()
            .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(6),
        "{}",
        stderr(&out)
    );
    let written = g.chunk_requests();
    assert!(
        written > 0 && written < fetchable,
        "{written} of {fetchable}"
    );
    // Power cut: GRUB boots A (B is marked bad and incomplete).
    assert_eq!(g.power_on(), "A");
    g.d.fx.ok(&["recover"]);
    g.d.server.clear_requests();
    g.d.fx.ok(&["apply", "--no-reboot"]);
    let entries = g.audit("delta");
    let entry = &entries.last().unwrap()["details"];
    assert_eq!(entry["resumed"], true, "{entry}");
    assert_eq!(
        g.chunk_requests(),
        fetchable - written,
        "chunks written before the cut are not fetched again"
    );
    assert_eq!(g.slot("B"), v2());
    g.boot_new();
    g.d.fx.ok(&["audit", "verify"]);
}

#[test]
fn a_full_disk_while_writing_the_slot_fails_cleanly() {
    if !is_root() {
        panic!("mounting a size-limited tmpfs needs root: run integration/run-tests as root");
    }
    let mnt = tempfile::tempdir().unwrap();
    tool(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=3m,mode=0700",
            "tmpfs",
            mnt.path().to_str().unwrap(),
        ],
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.path().to_owned());
    let g = Gateway::with_slot_b(Some(mnt.path().join("slot-b.img")));
    g.publish("2.0", &v2(), true);
    let out = g.d.fx.run(&["apply", "--no-reboot"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("slot B") && err.contains("No space left"),
        "{err}"
    );
    assert_eq!(g.get("B_OK").as_deref(), Some("0"), "never marked bootable");
    assert_eq!(g.power_on(), "A");
    assert_eq!(g.slot("A"), v1());
    g.d.fx.ok(&["recover"]);
    g.d.fx.ok(&["audit", "verify"]);
    assert_eq!(
        g.d.fx.json(&["status", "--json"])["open_transitions"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_power_cut_at_every_step_of_a_delta_install_boots_a_complete_image() {
    use ferry_engine::failpoints as fp;
    for point in fp::DELTA {
        let g = Gateway::new();
        g.publish("2.0", &v2(), true);
        let out =
            g.d.fx
                .cmd(&["apply", "--no-reboot"])
                .env("FERRY_CRASH_AT", format!("{point}:abort"))
                .output()
                .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(6),
            "{point}: {}",
            stderr(&out)
        );
        // B is marked bad until it is complete and activated: A boots.
        assert_eq!(g.power_on(), "A", "{point}");
        assert_eq!(g.slot("A"), v1(), "{point}");
        g.d.fx.ok(&["recover"]);
        g.d.fx.ok(&["apply", "--no-reboot"]);
        assert_eq!(g.slot("B"), v2(), "{point}");
        g.boot_new();
        g.d.fx.ok(&["audit", "verify"]);
    }
}

#[test]
fn a_delta_bundle_carries_only_the_chunks_the_devices_lack() {
    let g = Gateway::new();
    g.publish("2.0", &v2(), true);
    // The publisher keeps the index of what the devices run (v1).
    let work = tempfile::tempdir().unwrap();
    let v1_img = work.path().join("v1.img");
    fs::write(&v1_img, v1()).unwrap();
    g.d.fx.ok(&[
        "chunk",
        v1_img.to_str().unwrap(),
        "--out",
        work.path().to_str().unwrap(),
    ]);
    let facts = work.path().join("facts.toml");
    fs::write(&facts, "hostname = \"gw-1\"\n").unwrap();
    let bundle = work.path().join("bundle");
    let out = g.d.fx.json(&[
        "bundle",
        "export",
        "--json",
        "--out",
        bundle.to_str().unwrap(),
        "--for-device",
        facts.to_str().unwrap(),
        "--delta-from",
        work.path().join("v1.img.chunks").to_str().unwrap(),
    ]);
    let mut sizes = Vec::new();
    walk(&bundle, &mut |p| sizes.push(fs::metadata(p).unwrap().len()));
    let total: u64 = sizes.iter().sum();
    assert!(
        total * 5 < v2().len() as u64,
        "bundle of {total} bytes for a {}-byte image: {out:#}",
        v2().len()
    );
    assert!(
        !sizes.contains(&(v2().len() as u64)),
        "the full image is not in the bundle"
    );

    // Imported with the network gone: the chunks come from the bundle.
    g.d.server.clear_requests();
    let out =
        g.d.fx
            .cmd(&[
                "--facts",
                facts.to_str().unwrap(),
                "import",
                bundle.to_str().unwrap(),
                "--no-reboot",
            ])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        g.d.server.requests().is_empty(),
        "{:?}",
        g.d.server.requests()
    );
    assert_eq!(g.slot("B"), v2());
    let entries = g.audit("delta");
    let entry = &entries[0]["details"];
    assert!(
        entry["store"].as_str().unwrap().starts_with("file://"),
        "{entry}"
    );
    g.boot_new();

    // Without --for-device the bundle cannot know what to leave out.
    let err = g.d.fx.run(&[
        "bundle",
        "export",
        "--out",
        work.path().join("b2").to_str().unwrap(),
        "--delta-from",
        work.path().join("v1.img.chunks").to_str().unwrap(),
    ]);
    assert!(stderr(&err).contains("--for-device"), "{}", stderr(&err));
}

/// A WASM module with a `len`-byte data segment of noise (`seed`), with
/// `patch` bytes at `at` changed.
fn module(len: usize, patch: Option<usize>) -> Vec<u8> {
    let mut data = noise(len, 5);
    if let Some(at) = patch {
        data[at..at + 4096].copy_from_slice(&noise(4096, 6));
    }
    let escaped: String = data.iter().map(|b| format!("\\{b:02x}")).collect();
    wat::parse_str(format!(
        "(module (memory 8) (data (i32.const 0) \"{escaped}\") (func (export \"run\")))"
    ))
    .unwrap()
}

#[test]
fn a_wasm_module_is_built_from_the_version_it_replaces() {
    let f = Fixture::new();
    let publish = |m: &[u8], chunks: bool| {
        let dir = f.repo.join("modules");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("m.wasm"), m).unwrap();
        let delta = if chunks {
            f.ok(&[
                "chunk",
                dir.join("m.wasm").to_str().unwrap(),
                "--out",
                f.repo.to_str().unwrap(),
            ]);
            fs::rename(f.repo.join("m.wasm.chunks"), dir.join("m.wasm.chunks")).unwrap();
            ", chunks: {index: modules/m.wasm.chunks}"
        } else {
            ""
        };
        fs::write(
            f.repo.join("ferry.yaml"),
            format!("apiVersion: ferry.dev/v1\nresources:\n  - {{kind: wasm, name: m, source: modules/m.wasm{delta}}}\n"),
        )
        .unwrap();
    };
    let v1 = module(400_000, None);
    publish(&v1, false);
    f.ok(&["apply"]);
    let v2 = module(400_000, Some(200_000));
    publish(&v2, true);
    let plan = f.json(&["plan", "--json"]);
    let planned = plan["steps"][0]["download"]["delta"].as_u64().unwrap();
    assert!(planned * 2 < v2.len() as u64, "{plan:#}");
    f.ok(&["apply"]);
    let entries = f.json(&["audit", "list", "--json", "--event", "delta"]);
    let entry = &entries[0]["details"];
    assert_eq!(entry["resource"], "wasm m", "{entry}");
    assert_eq!(entry["bytes_fetched"].as_u64().unwrap(), planned, "{entry}");
    assert!(entry["chunks_reused"].as_u64().unwrap() > 0, "{entry}");
    // The store holds the new module, verified.
    let sha = ferry_core::Sha256::of(&v2).to_string();
    assert_eq!(fs::read(f.state.join("store").join(&sha)).unwrap(), v2);
}
