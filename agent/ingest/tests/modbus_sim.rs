//! Modbus polling against a real Modbus TCP server (pymodbus, driven by
//! `integration/modbus/sim.py`) whose registers change on every read:
//! decoded events, raw frames, register writes (and refusals), and the
//! server going away and coming back: one alert, then events again
//! without restarting anything.
#![allow(clippy::unwrap_used)]

#[path = "../../../integration/modbus/sim.rs"]
mod sim;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use ferry_ingest::Ingest;
use ferry_ingest::config::{
    BlockPlan, DevicePlan, FieldSpec, FieldType, PayloadForm, Plan, Table, WordOrder,
};
use ferry_rules::runtime::{EventReceiver, EventSink};
use sim::Sim;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn plan(port: u16, payload: PayloadForm) -> Plan {
    let field = |name: &str, offset, ty, scale| FieldSpec {
        name: name.into(),
        offset,
        ty,
        order: WordOrder::Big,
        scale,
    };
    let device = DevicePlan {
        name: "plc1".into(),
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        unit: 1,
        timeout: Duration::from_millis(300),
        retries: 3,
        writable: BTreeSet::from([10]),
        blocks: vec![BlockPlan {
            name: "temps".into(),
            table: Table::Holding,
            start: 0,
            count: 5,
            period: Duration::from_millis(50),
            topic: "modbus/plc1/temps".into(),
            payload,
            fields: vec![
                field("seq", 0, FieldType::U32, 1.0),
                field("temperature", 2, FieldType::I16, 0.1),
            ],
        }],
    };
    Plan {
        coap: None,
        devices: [("plc1".to_owned(), device)].into(),
    }
}

async fn next_event(rx: &mut EventReceiver) -> serde_json::Value {
    let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no Modbus event within 10 s")
        .unwrap();
    assert_eq!(e.topic, "modbus/plc1/temps");
    serde_json::from_slice(e.fields.as_deref().unwrap_or(&e.payload)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_registers_become_events_and_writes_reach_the_device() {
    let port = free_port();
    let sim = Sim::start(port);
    let (sink, mut rx) = EventSink::channel(64);
    let alerts = Arc::new(Mutex::new(Vec::<String>::new()));
    let a = alerts.clone();
    let mut ingest = Ingest::new(sink, Arc::new(move |_, m| a.lock().unwrap().push(m)));
    ingest.apply(&plan(port, PayloadForm::Json)).await.unwrap();

    let first = next_event(&mut rx).await;
    let second = next_event(&mut rx).await;
    assert_eq!(first["device"], "plc1");
    assert_eq!(first["registers"].as_array().unwrap().len(), 5);
    let seq = |v: &serde_json::Value| v["seq"].as_f64().unwrap();
    assert!(seq(&second) > seq(&first), "{first} then {second}");
    let t = second["temperature"].as_f64().unwrap();
    assert!(
        (20.0..40.0).contains(&t) && (t * 2.0).fract() == 0.0,
        "{second}"
    );

    // A listed register is written; another one is refused before the wire.
    let w = tokio::task::spawn_blocking({
        let writer = ingest.writer();
        move || {
            let (tx, rx) = mpsc::channel();
            writer.write("plc1", 10, 1, Box::new(move |r| tx.send(r).unwrap()));
            let ok = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            let (tx, rx) = mpsc::channel();
            writer.write("plc1", 11, 1, Box::new(move |r| tx.send(r).unwrap()));
            (ok, rx.recv_timeout(Duration::from_secs(10)).unwrap())
        }
    })
    .await
    .unwrap();
    assert_eq!(w.0, Ok(()));
    assert_eq!(w.1, Err("register 11 of plc1 is not writable".to_owned()));
    assert_eq!(
        sim.writes.recv_timeout(Duration::from_secs(5)).unwrap(),
        "10 1"
    );
    assert!(sim.writes.try_recv().is_err());

    // The server goes away: one alert, however long it stays away, and
    // writes fail at once meanwhile.
    drop(sim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while rx.try_recv().is_some() {}
    let down = alerts.lock().unwrap().clone();
    assert_eq!(down.len(), 1, "{down:?}");
    assert!(
        down[0].contains("modbus device plc1 at 127.0.0.1:"),
        "{down:?}"
    );
    let snap = ingest.snapshot();
    assert!(
        !snap.devices[0]
            .1
            .up
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let refused = tokio::task::spawn_blocking({
        let writer = ingest.writer();
        move || {
            let (tx, rx) = mpsc::channel();
            writer.write("plc1", 10, 2, Box::new(move |r| tx.send(r).unwrap()));
            rx.recv_timeout(Duration::from_secs(10)).unwrap()
        }
    })
    .await
    .unwrap();
    assert!(refused.is_err(), "{refused:?}");

    // It comes back on the same port: events flow again, no new alert.
    let _sim = Sim::start(port);
    let back = next_event(&mut rx).await;
    assert_eq!(back["device"], "plc1");
    assert!(
        snap.devices[0]
            .1
            .up
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(alerts.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_payloads_carry_the_raw_response_and_fields_beside_it() {
    let port = free_port();
    let _sim = Sim::start(port);
    let (sink, mut rx) = EventSink::channel(64);
    let mut ingest = Ingest::new(sink, Arc::new(|_, _| {}));
    ingest.apply(&plan(port, PayloadForm::Frame)).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    // unit 1, function 3, 10 bytes, five registers; humidity 480 = 0x01e0.
    assert_eq!(&e.payload[..3], &[1, 3, 10]);
    assert_eq!(&e.payload[9..11], &[0x01, 0xe0]);
    let fields: serde_json::Value = serde_json::from_slice(&e.fields.unwrap()).unwrap();
    assert_eq!(fields["registers"][3], 480);

    // A changed plan restarts the device; an unchanged one keeps it.
    let before = ingest.snapshot().devices[0].1.clone();
    ingest.apply(&plan(port, PayloadForm::Frame)).await.unwrap();
    assert!(Arc::ptr_eq(&before, &ingest.snapshot().devices[0].1));
    ingest.apply(&plan(port, PayloadForm::Json)).await.unwrap();
    assert!(!Arc::ptr_eq(&before, &ingest.snapshot().devices[0].1));
    ingest.apply(&Plan::default()).await.unwrap();
    assert!(ingest.snapshot().devices.is_empty());
}

/// A peer that accepts connections and then says nothing, or drips one
/// byte a second: every request times out, the device is down after its
/// retries with one alert, and nothing waits longer than the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_dripping_device_times_out_into_one_alert() {
    for drip in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                if drip {
                    std::thread::spawn(move || {
                        use std::io::Write;
                        // A plausible MBAP header, one byte at a time, forever.
                        for b in [0u8, 1, 0, 0, 0, 200].iter().cycle() {
                            if s.write_all(&[*b]).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    });
                } else {
                    held.push(s);
                }
            }
        });
        let mut p = plan(port, PayloadForm::Json);
        let d = p.devices.get_mut("plc1").unwrap();
        d.timeout = Duration::from_millis(100);
        d.retries = 2;
        let (sink, mut rx) = EventSink::channel(8);
        let alerts = Arc::new(Mutex::new(Vec::<String>::new()));
        let a = alerts.clone();
        let mut ingest = Ingest::new(sink, Arc::new(move |_, m| a.lock().unwrap().push(m)));
        ingest.apply(&p).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let got = alerts.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "drip={drip}: {got:?}");
        assert!(got[0].contains("timed out after 100 ms"), "{got:?}");
        assert!(rx.try_recv().is_none());
        let failures = ingest.snapshot().devices[0]
            .1
            .failures
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(failures >= 2, "{failures}");
    }
}
