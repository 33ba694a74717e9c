//! The module host against real modules (WAT compiled with the `wat`
//! crate): decoding, hot swap under load, containment, grants, the
//! precompile cache, logging and bad input.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, mpsc};

#[path = "../../../integration/wasm/fixtures.rs"]
mod fixtures;

use ferry_wasm::{
    CacheOutcome, DirGrant, Host, HostConfig, ModuleSpec, Modules, Probe, Service, WasmError,
};
use fixtures::{FAULTS, decoder, frame};

const ESCAPE: &str = include_str!("../../../integration/wasm/escape.wat");

fn host() -> Host {
    Host::new(&HostConfig::default()).expect("host")
}

fn json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).expect("module output is JSON")
}

#[test]
fn decoder_turns_registers_into_json() {
    let host = host();
    let m = host
        .load("decoder", ModuleSpec::default(), &decoder(1))
        .expect("load");
    let mut i = m.take_instance().expect("instance");
    let out = i
        .call("decode", &frame(42, -35, 412, false))
        .expect("decode");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "modbus/decoded");
    assert_eq!(
        json(&out[0].payload),
        serde_json::json!({"v":1,"unit":7,"seq":42,"temperature_c":-3.5,"humidity_pct":41.2,"alarm":false})
    );
    let out = i
        .call("decode", &frame(4_000_000_000, 251, 0, true))
        .expect("decode");
    assert_eq!(
        json(&out[0].payload),
        serde_json::json!({"v":1,"unit":7,"seq":4_000_000_000u64,"temperature_c":25.1,"humidity_pct":0.0,"alarm":true})
    );
    // Input the module refuses: its status, no output, instance still fine.
    let e = i.call("decode", &[7, 3]).expect_err("short");
    assert!(matches!(e, WasmError::Status { status: 1, .. }), "{e}");
    let e = i
        .call("decode", &[7, 4, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .expect_err("func 4");
    assert!(e.to_string().contains("decode returned status 2"), "{e}");
    assert!(!e.poisons());
    let e = i.call("nope", b"x").expect_err("no export");
    assert!(e.to_string().contains("no export nope"), "{e}");
    i.call("decode", &frame(1, 0, 0, false))
        .expect("still serving");
}

/// Hot swap under a numbered stream: every event is processed exactly once,
/// in order, by v1 until the swap and by v2 after it.
#[test]
fn swap_under_a_numbered_stream_loses_and_repeats_nothing() {
    let host = Arc::new(host());
    let v1 = host
        .load("decoder", ModuleSpec::default(), &decoder(1))
        .expect("v1");
    let service = Service::start(Modules::from([("decoder".to_owned(), v1)]), None);
    let (tx, rx) = mpsc::channel();
    const N: u32 = 20_000;
    let (go, wait) = mpsc::channel::<()>();
    let swapper = {
        let (host, service) = (host.clone(), service.clone());
        std::thread::spawn(move || {
            wait.recv().expect("go");
            // Loaded (compiled, instantiated, health-checked) while v1 serves.
            let v2 = host
                .load("decoder", ModuleSpec::default(), &decoder(2))
                .expect("v2");
            service.swap(Modules::from([("decoder".to_owned(), v2)]));
        })
    };
    for seq in 0..N {
        let tx = tx.clone();
        service.submit(
            "decoder",
            "decode",
            frame(seq, 200, 500, false),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        if seq == N / 10 {
            go.send(()).expect("go");
        }
    }
    swapper.join().expect("swap");
    // Events after the swap are certainly served by v2.
    for seq in N..N + 100 {
        let tx = tx.clone();
        service.submit(
            "decoder",
            "decode",
            frame(seq, 200, 500, false),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
    }
    drop(tx);
    let mut seqs = Vec::new();
    let mut versions = Vec::new();
    for r in rx {
        let out = r.expect("every call succeeds");
        assert_eq!(out.len(), 1);
        let v = json(&out[0].payload);
        seqs.push(v["seq"].as_u64().expect("seq"));
        versions.push(v["v"].as_u64().expect("v"));
    }
    let expected: Vec<u64> = (0..u64::from(N) + 100).collect();
    assert_eq!(seqs, expected, "each event exactly once, in order");
    let first_v2 = versions.iter().position(|&v| v == 2).expect("v2 served");
    assert!(first_v2 > 0, "v1 served first");
    assert!(versions[..first_v2].iter().all(|&v| v == 1));
    assert!(
        versions[first_v2..].iter().all(|&v| v == 2),
        "no v1 after v2"
    );
    assert_eq!(
        service
            .stats()
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

fn small() -> ModuleSpec {
    let mut s = ModuleSpec::default();
    s.limits.memory_mib = 2;
    s.limits.fuel_per_event = 1_000_000;
    s
}

#[test]
fn faults_are_contained_and_the_rest_keeps_serving() {
    let host = host();
    let dec = host
        .load("decoder", ModuleSpec::default(), &decoder(1))
        .expect("decoder");
    let faults = host
        .load("faults", small(), &wat::parse_str(FAULTS).expect("wat"))
        .expect("faults");
    let faulted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = faulted.clone();
    let service = Service::start(
        Modules::from([("decoder".to_owned(), dec), ("faults".to_owned(), faults)]),
        Some(Box::new(move |m: &str, e: &str, err: &WasmError| {
            seen.lock().expect("lock").push(format!("{m}.{e}: {err}"));
        })),
    );
    let cases = [
        ("spin", "ran out of fuel"),
        ("grow", "memory cap (limits.memory_mib) exceeded"),
        ("trap", "unreachable instruction executed"),
        ("recurse", "stack overflow"),
        ("oob", "out-of-bounds memory access"),
        (
            "emit_oob",
            "ferry::emit: pointer outside the module's memory",
        ),
    ];
    for (export, expect) in cases {
        let e = service
            .call("faults", export, b"in".to_vec())
            .expect_err(export);
        assert!(e.poisons(), "{export}: {e}");
        assert!(e.to_string().contains(expect), "{export}: {e}");
        // The faulty module gets a fresh instance and serves again...
        let ok = service
            .call("faults", "ok", b"again".to_vec())
            .expect("fresh instance");
        assert_eq!(ok[0].payload, b"again");
        // ...and the other module never noticed.
        let out = service
            .call("decoder", "decode", frame(1, 1, 1, false))
            .expect("decoder");
        assert_eq!(json(&out[0].payload)["seq"], 1);
    }
    let faulted = faulted.lock().expect("lock");
    assert_eq!(faulted.len(), cases.len(), "{faulted:?}");
    assert!(faulted[0].starts_with("faults.spin: module faults: spin: ran out of fuel"));
}

#[test]
fn modules_get_only_what_is_granted() {
    let host = host();
    // An import nobody grants: refused at load, naming it.
    let bad = wat::parse_str(
        r#"(module (import "env" "socket" (func (param i32) (result i32))) (func (export "x") (param i32 i32) (result i32) (i32.const 0)))"#,
    )
    .expect("wat");
    let e = host
        .load("net", ModuleSpec::default(), &bad)
        .expect_err("env import");
    assert!(
        e.to_string()
            .contains("imports env::socket which is not granted"),
        "{e}"
    );
    // A name ferry's modules do not have.
    let bad = wat::parse_str(
        r#"(module (import "ferry" "exec" (func)) (func (export "x") (param i32 i32) (result i32) (i32.const 0)))"#,
    )
    .expect("wat");
    let e = host
        .load("exec", ModuleSpec::default(), &bad)
        .expect_err("ferry::exec");
    assert!(e.to_string().contains("ferry::exec"), "{e}");

    // Files: only inside the preopen.
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("m")).expect("mkdir");
    std::fs::write(data.join("m/inside.txt"), b"inside").expect("write");
    std::fs::write(data.join("outside.txt"), b"secret").expect("write");
    let mut spec = ModuleSpec::default();
    spec.capabilities.dirs.push(DirGrant {
        host: "m".into(),
        guest: "/data".into(),
        writable: false,
    });
    spec.confine_dirs(&data).expect("confine");
    let m = host
        .load("escape", spec, &wat::parse_str(ESCAPE).expect("wat"))
        .expect("load");
    let mut i = m.take_instance().expect("instance");
    let out = i.call("read", b"inside.txt").expect("inside");
    assert_eq!(out[0].payload, b"inside");
    for path in ["../outside.txt", "/etc/passwd", "../../../../etc/passwd"] {
        let e = i.call("read", path.as_bytes()).expect_err(path);
        // WASI errno 76 is ENOTCAPABLE; 44 ENOENT would mean it looked.
        assert!(
            matches!(
                e,
                WasmError::Status { status: 76, .. } | WasmError::Status { status: 63, .. }
            ),
            "{path}: {e}"
        );
    }
    // No preopen at all: fd 3 does not exist (EBADF = 8).
    let m = host
        .load(
            "escape2",
            ModuleSpec::default(),
            &wat::parse_str(ESCAPE).expect("wat"),
        )
        .expect("load");
    let e = m
        .take_instance()
        .expect("i")
        .call("read", b"inside.txt")
        .expect_err("no dirs");
    assert!(matches!(e, WasmError::Status { status: 8, .. }), "{e}");
}

#[test]
fn a_module_failing_its_checks_never_replaces_the_running_one() {
    let host = host();
    let v1 = host
        .load("decoder", ModuleSpec::default(), &decoder(1))
        .expect("v1");
    let service = Service::start(Modules::from([("decoder".to_owned(), v1)]), None);
    let faults = wat::parse_str(FAULTS).expect("wat");
    // A probe that spins, one that traps, and a health export saying no.
    for (export, expect) in [("spin", "ran out of fuel"), ("trap", "unreachable")] {
        let mut spec = small();
        spec.probe = Some(Probe {
            export: export.into(),
            input: "hex:0703".into(),
        });
        let e = host.load("decoder", spec, &faults).expect_err(export);
        assert!(matches!(e, WasmError::Unhealthy { .. }), "{e}");
        assert!(e.to_string().contains(expect), "{e}");
    }
    let unhealthy =
        wat::parse_str(r#"(module (func (export "ferry_health") (result i32) (i32.const 3)))"#)
            .expect("wat");
    let e = host
        .load("decoder", ModuleSpec::default(), &unhealthy)
        .expect_err("health 3");
    assert!(e.to_string().contains("ferry_health returned 3"), "{e}");
    // A start function that traps fails instantiation.
    let bad_start = wat::parse_str(r#"(module (func $s unreachable) (start $s))"#).expect("wat");
    let e = host
        .load("decoder", ModuleSpec::default(), &bad_start)
        .expect_err("start");
    assert!(e.to_string().contains("unreachable"), "{e}");
    // Memory declared beyond the cap cannot be instantiated.
    let big = wat::parse_str(r#"(module (memory 100))"#).expect("wat");
    let e = host
        .load("decoder", small(), &big)
        .expect_err("memory 100 pages > 2 MiB");
    assert!(
        e.to_string()
            .contains("memory cap (limits.memory_mib) exceeded"),
        "{e}"
    );
    // None of that reached the service.
    let out = service
        .call("decoder", "decode", frame(9, 0, 0, false))
        .expect("v1 serves");
    assert_eq!(json(&out[0].payload)["v"], 1);
}

#[test]
fn bad_module_bytes_are_refused_clearly() {
    let host = host();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly binary",
        ),
        ("text", b"(module)".to_vec(), "not a WebAssembly binary"),
        ("truncated", decoder(1)[..40].to_vec(), "invalid module"),
        ("component", b"\0asm\x0d\0\x01\0".to_vec(), "component"),
        (
            "version",
            b"\0asm\x02\0\0\0".to_vec(),
            "unsupported WebAssembly version",
        ),
    ];
    for (name, bytes, expect) in cases {
        let e = host
            .load(name, ModuleSpec::default(), &bytes)
            .expect_err(name);
        assert!(e.to_string().contains(expect), "{name}: {e}");
        assert!(
            e.to_string().contains(&format!("module {name}")),
            "{name}: {e}"
        );
    }
    let mut spec = ModuleSpec::default();
    spec.limits.max_module_bytes = 100;
    let e = host.load("big", spec, &decoder(1)).expect_err("too big");
    assert!(
        e.to_string().contains("limits.max_module_bytes is 100"),
        "{e}"
    );
    let mut spec = ModuleSpec::default();
    spec.limits.memory_mib = 1024;
    let e = host
        .load("huge", spec, &decoder(1))
        .expect_err("cap above host max");
    assert!(e.to_string().contains("max_memory_mib"), "{e}");
}

#[test]
fn the_precompile_cache_is_used_and_tampering_is_detected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = HostConfig {
        cache_dir: Some(tmp.path().join("cache")),
        ..HostConfig::default()
    };
    let bytes = decoder(1);
    let h1 = Host::new(&config).expect("host");
    let m = h1
        .load("decoder", ModuleSpec::default(), &bytes)
        .expect("load");
    assert_eq!(m.cache, CacheOutcome::Compiled);
    let artifact = h1.cache().expect("cache").path(&m.sha256, h1.fingerprint());
    assert!(artifact.is_file());
    // A new host (a restarted agent) loads the artifact.
    let h2 = Host::new(&config).expect("host");
    assert_eq!(h1.fingerprint(), h2.fingerprint());
    let m = h2
        .load("decoder", ModuleSpec::default(), &bytes)
        .expect("load");
    assert_eq!(m.cache, CacheOutcome::Hit);
    let out = m
        .take_instance()
        .expect("i")
        .call("decode", &frame(3, 0, 0, false))
        .expect("call");
    assert_eq!(json(&out[0].payload)["seq"], 3);
    // Flip one byte of native code: detected, recompiled, replaced.
    let mut data = std::fs::read(&artifact).expect("read");
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::write(&artifact, &data).expect("write");
    let m = h2
        .load("decoder", ModuleSpec::default(), &bytes)
        .expect("load");
    match &m.cache {
        CacheOutcome::Rejected(why) => assert!(why.contains("seal does not verify"), "{why}"),
        other => panic!("tampered artifact not rejected: {other:?}"),
    }
    m.take_instance()
        .expect("i")
        .call("decode", &frame(4, 0, 0, false))
        .expect("call");
    let m = h2
        .load("decoder", ModuleSpec::default(), &bytes)
        .expect("load");
    assert_eq!(m.cache, CacheOutcome::Hit, "replaced by a good artifact");
}

/// A writer that keeps what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn module_stdout_and_stderr_go_to_the_log_line_by_line_with_the_module_name() {
    let printer = wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "ferry_alloc") (param i32) (result i32) (i32.const 64))
          (func $out (param $fd i32) (param $p i32) (param $n i32) (result i32)
            (i32.store (i32.const 0) (local.get $p))
            (i32.store (i32.const 4) (local.get $n))
            (call $w (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
          (func (export "stdout") (param $p i32) (param $n i32) (result i32)
            (call $out (i32.const 1) (local.get $p) (local.get $n)))
          (func (export "stderr") (param $p i32) (param $n i32) (result i32)
            (call $out (i32.const 2) (local.get $p) (local.get $n))))"#,
    )
    .unwrap();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let host = host();
        let m = host
            .load("printer", ModuleSpec::default(), &printer)
            .unwrap();
        let mut i = m.take_instance().unwrap();
        i.call("stdout", b"first line\nsecond ").unwrap();
        i.call("stdout", b"line\nunterminated").unwrap();
        i.call("stderr", b"on stderr\n").unwrap();
        drop(i);
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("ferry::wasm")).collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (line, (stream, msg)) in lines.iter().zip([
        ("stdout", "first line"),
        ("stdout", "second line"),
        ("stderr", "on stderr"),
        ("stdout", "unterminated"),
    ]) {
        assert!(line.contains(msg), "{line}");
        assert!(line.contains("module=printer"), "{line}");
        assert!(line.contains(&format!("stream=\"{stream}\"")), "{line}");
    }
}

#[test]
fn clocks_read_zero_unless_granted() {
    let clock = wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "clock_time_get" (func $c (param i32 i64 i32) (result i32)))
          (import "ferry" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) "t")
          (func (export "now") (param i32 i32) (result i32)
            (drop (call $c (i32.const 0) (i64.const 1) (i32.const 0)))
            (drop (call $emit (i32.const 100) (i32.const 1) (i32.const 0) (i32.const 8)))
            (i32.const 0)))"#,
    )
    .unwrap();
    let host = host();
    let now = |spec: ModuleSpec| {
        let m = host.load("clock", spec, &clock).unwrap();
        let out = m.take_instance().unwrap().call("now", &[]).unwrap();
        u64::from_le_bytes(out[0].payload[..8].try_into().unwrap())
    };
    assert_eq!(now(ModuleSpec::default()), 0);
    let mut granted = ModuleSpec::default();
    granted.capabilities.clocks = true;
    assert!(
        now(granted) > 1_700_000_000_000_000_000,
        "nanoseconds since 1970"
    );
}

#[test]
fn a_backed_up_queue_refuses_calls_instead_of_growing() {
    let host = host();
    let mut spec = ModuleSpec::default();
    spec.limits.fuel_per_event = 300_000_000;
    let faults = host
        .load("faults", spec, &wat::parse_str(FAULTS).unwrap())
        .unwrap();
    let service =
        Service::start_bounded(Modules::from([("faults".to_owned(), faults)]), None, 10_000);
    let (tx, rx) = mpsc::channel();
    // The first call keeps the worker busy; the rest wait in the queue.
    for _ in 0..20 {
        let tx = tx.clone();
        service.submit(
            "faults",
            "spin",
            vec![0; 1000],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
    }
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    assert_eq!(results.len(), 20, "every call answered");
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(WasmError::Busy(10_000))))
        .count();
    assert!(busy >= 9, "{busy} refused");
    assert_eq!(
        service
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        busy as u64
    );
    // Once drained, calls are taken again.
    let out = service.call("faults", "ok", b"x".to_vec()).unwrap();
    assert_eq!(out[0].payload, b"x");
}
