//! Fuzz targets: one function per parser of untrusted input, each taking
//! arbitrary bytes. A target may return errors, never panic, hang or
//! allocate without bound; the `ferry-fuzz TARGET` binary (`src/main.rs`)
//! feeds one of them stdin (the AFL++ protocol) and aborts on a panic so the
//! fuzzer sees a crash.
//!
//! `integration/fuzz/afl` runs them under AFL++; `tests/replay.rs` runs
//! every corpus file and every regression (a crash found once, kept under
//! `regressions/<target>/`) through them in the test suite, plus a short
//! seeded mutation run.

use std::io::Cursor;

use ferry_engine::activate::firmware::env::BootEnv;
use ferry_engine::activate::firmware::{grub, uboot};
use ferry_engine::fetch::bundle::fat;
use ferry_git::{parse_bundle_header, sig::Trust};
use ferry_tuf::meta;

/// A fuzz target: arbitrary bytes in, nothing out (errors are fine).
pub type Target = fn(&[u8]);

/// Every target, by name (the directory names under `corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("rules", rules),
    ("tuf_metadata", tuf_metadata),
    ("trust", trust),
    ("git_bundle", git_bundle),
    ("bootenv", bootenv),
    ("fat", fat_image),
    ("sigstore", sigstore),
    ("control", control),
    ("chunk_index", chunk_index),
    ("chunk", chunk),
    ("fleet", fleet),
    ("coap", coap),
    ("modbus", modbus),
    ("cbor", cbor),
    ("ingest_config", ingest_config),
];

/// Runs target `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

/// Desired state: YAML or JSON, then the schema checks.
pub fn manifest(data: &[u8]) {
    if let Ok(doc) = ferry_engine::render::manifest::parse("ferry.yaml", data) {
        let _ = ferry_engine::render::manifest::check("ferry.yaml", &doc);
    }
}

/// The rule language: parse, type-check, compile.
pub fn rules(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ferry_rules::compile_source(text);
    }
}

/// TUF metadata before signatures are trusted: the envelope, each role's
/// body, and signature checks with the keys a root would give.
pub fn tuf_metadata(data: &[u8]) {
    let Ok(env) = meta::Envelope::parse(data) else {
        return;
    };
    if let Ok(root) = meta::Root::parse(&env) {
        let _ = env.verify(&root.keys, root.role("root"));
    }
    let _ = meta::Timestamp::parse(&env);
    let _ = meta::Snapshot::parse(&env);
    if let Ok(t) = meta::Targets::parse(&env)
        && let Some(d) = &t.delegations
    {
        let _ = d.roles_for("files/a/b.conf");
    }
}

/// Git trust files: allowed_signers text, then (after a NUL) a keyring.
pub fn trust(data: &[u8]) {
    let (text, keyring) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    if let Ok(text) = std::str::from_utf8(text) {
        let _ = Trust::parse(Some(text), keyring);
    }
}

/// A git bundle's header (the pack after it goes to gix, capped).
pub fn git_bundle(data: &[u8]) {
    let _ = parse_bundle_header(&mut Cursor::new(data));
}

/// GRUB environment blocks (read, then changed as grub-editenv would) and
/// U-Boot environment copies (single and redundant layout).
pub fn bootenv(data: &[u8]) {
    if let Ok(env) = grub::parse(data) {
        let mut changed: BootEnv = env.clone();
        changed.set("FERRY_OK", "1");
        changed.unset("ORDER");
        let _ = grub::update(data, &changed);
    }
    let _ = uboot::decode(data, false);
    let _ = uboot::decode(data, true);
}

/// A FAT image as a USB stick carries it, extracted with tight limits.
pub fn fat_image(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let image = dir.path().join("stick.img");
    if std::fs::write(&image, data).is_err() {
        return;
    }
    let limits = fat::Limits {
        max_bytes: 1 << 20,
        max_files: 256,
        max_depth: 8,
    };
    let _ = fat::extract(&image, &dir.path().join("out"), &limits);
}

/// A Sigstore bundle, verified against the public-good root for an
/// artifact digest of zeros.
pub fn sigstore(data: &[u8]) {
    use ferry_sigstore::{IdentityMatch, IdentityPolicy, Requirement, TrustedRoot};
    let requirement = Requirement::Identity(IdentityPolicy {
        identity: IdentityMatch::Exact("ops@example.com".into()),
        issuer: "https://accounts.example.com".into(),
        claims: Vec::new(),
    });
    let _ = ferry_sigstore::verify(
        data,
        "bundle.sigstore.json",
        &[0; 32],
        TrustedRoot::production(),
        &requirement,
    );
}

/// A control-socket request line.
pub fn control(data: &[u8]) {
    let _ = ferry_core::control::parse_request(data);
}

/// A delta chunk index (plain or zstd-compressed JSON), then its checks.
pub fn chunk_index(data: &[u8]) {
    if let Ok(index) = ferry_delta::ChunkIndex::parse(data, "fuzz") {
        let _ = index.missing_bytes(|_| false);
    }
}

/// A stored chunk from a chunk store: decompressed into at most the length
/// its index gives (the first two bytes pick it), then checked.
pub fn chunk(data: &[u8]) {
    let Some((len, packed)) = data.split_first_chunk::<2>() else {
        return;
    };
    let length = u32::from(u16::from_le_bytes(*len)) * 16 + 1;
    if let Ok(plain) = ferry_delta::store::decompress(packed, length) {
        let c = ferry_delta::Chunk {
            offset: 0,
            length,
            sha256: ferry_core::Sha256::of(b""),
            stored: packed.len() as u32,
        };
        let _ = ferry_delta::store::check(&plain, &c);
    }
}

/// What each binary's `main` does: read stdin, run the target, abort on a
/// panic (AFL++ counts an abort as a crash, not an exit status of 101).
pub fn main_for(name: &str) {
    use std::io::Read as _;
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        std::process::abort();
    }));
    let mut data = Vec::new();
    if std::io::stdin()
        .take(16 << 20)
        .read_to_end(&mut data)
        .is_ok()
    {
        run(name, &data);
    }
}

/// What a fleet broker hands `ferry fleet status|audit`: retained messages
/// (split at 0x1E). The first byte picks the view: even, device statuses;
/// odd, one device's audit entries on topics `…/audit/1`, `…/audit/2`, …
/// (sorted and their chain checked).
pub fn fleet(data: &[u8]) {
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let messages = rest.split(|b| *b == 0x1e);
    if pick % 2 == 0 {
        // Each message's first byte picks the device and topic it came on.
        let mut c = ferry_fleet::admin::StatusCollector::new("ferry");
        for m in messages {
            let Some((&at, payload)) = m.split_first() else {
                continue;
            };
            let leaf = ["status", "online", "junk"][usize::from(at % 3)];
            let topic = format!("ferry/device/gw{}/{leaf}", at / 3 % 4);
            if c.add(&topic, payload).is_err() {
                return;
            }
        }
        let status = c.finish(None, std::time::Duration::from_secs(900), 1);
        for r in &status.devices {
            // Listed under the device its topic names.
            assert!(r.status.device.starts_with("gw"));
            for s in [
                &r.status.device,
                r.status.last_error.as_deref().unwrap_or(""),
            ] {
                let shown = ferry_core::text::terminal(s);
                assert!(!shown.chars().any(char::is_control), "{shown:?}");
            }
        }
        assert!(status.unreadable.len() <= ferry_fleet::admin::MAX_UNREADABLE);
    } else {
        let messages: Vec<(String, Vec<u8>)> = messages
            .enumerate()
            .map(|(i, m)| (format!("ferry/device/gw/audit/{}", i + 1), m.to_vec()))
            .collect();
        let _ = ferry_fleet::admin::device_audit("ferry", "gw", messages);
    }
}

/// A Modbus device's answer (a response PDU) to a read or a register
/// write: the first byte picks the table (or a write), the next two the
/// count (or the value written). What passes the checks is what was asked
/// for.
pub fn modbus(data: &[u8]) {
    let [pick, a, b, pdu @ ..] = data else {
        return;
    };
    let n = u16::from_be_bytes([*a, *b]);
    let Some(response) = ferry_ingest::modbus::decode_response(pdu) else {
        return;
    };
    use ferry_ingest::config::Table;
    let table = match pick % 5 {
        0 => Table::Coils,
        1 => Table::Discrete,
        2 => Table::Holding,
        3 => Table::Input,
        _ => {
            if ferry_ingest::modbus::write_echo(7, n, &response).is_ok() {
                assert_eq!(
                    response,
                    ferry_ingest::modbus::Response::WriteSingleRegister(7, n)
                );
            }
            return;
        }
    };
    match ferry_ingest::modbus::read_answer(table, n, response) {
        Ok(ferry_ingest::modbus::Data::Bits(b)) => assert_eq!(b.len(), usize::from(n)),
        Ok(ferry_ingest::modbus::Data::Words(w)) => assert_eq!(w.len(), usize::from(n)),
        Err(_) => {}
    }
}

/// CoAP datagrams from one network peer (split at 0x1E), through the
/// server's handler with small bounds: duplicates, block-wise uploads and
/// a queue that fills. The first byte picks the time step between
/// datagrams (in seconds), so exchanges and uploads also expire.
pub fn coap(data: &[u8]) {
    let Some((step, rest)) = data.split_first() else {
        return;
    };
    let (sink, _rx) = ferry_rules::runtime::EventSink::channel(4);
    let mut h = ferry_ingest::coap::Handler::new(512, sink, Default::default());
    let peer: std::net::SocketAddr = "127.0.0.1:5683".parse().unwrap_or_else(|_| unreachable!());
    let mut now = std::time::Instant::now();
    for d in rest.split(|b| *b == 0x1e) {
        let _ = h.handle(peer, d, now);
        now += std::time::Duration::from_secs(u64::from(*step));
    }
}

/// CBOR payloads of CoAP requests → the JSON their fields come from.
pub fn cbor(data: &[u8]) {
    let _ = ferry_ingest::cbor::to_json(data);
}

/// The `ingest` object of a signed ruleset resource (JSON), planned.
pub fn ingest_config(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(c) = ferry_ingest::IngestConfig::from_json(&v)
    {
        let _ = c.plan("ingest");
    }
}
