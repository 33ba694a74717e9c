//! The rule engine against a real mosquitto on loopback: events in over
//! MQTT, actions out over MQTT, and rule sets swapped under load without an
//! event lost or evaluated twice.
#![allow(clippy::unwrap_used)]

#[path = "../../../integration/tests/support/mosquitto.rs"]
mod mosquitto;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_rules::runtime::{Loaded, MqttTarget, Options, Runtime};
use mosquitto::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

fn loaded(label: &str, src: &str) -> Loaded {
    Loaded {
        label: label.into(),
        sets: vec![(
            "main".into(),
            Arc::new(ferry_rules::compile_source(src).unwrap()),
        )],
    }
}

/// A client subscribed to `filter` (acknowledged by the broker when this
/// returns); received (topic, payload) pairs arrive on the channel.
async fn subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<(String, String)> {
    let mut opts = MqttOptions::new(format!("test-sub-{filter}"), "127.0.0.1", port);
    opts.set_inflight(1000);
    let (client, mut el) = AsyncClient::new(opts, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    tokio::spawn(async move {
        let _client = client;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                    ));
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    ready_rx.await.unwrap();
    rx
}

async fn publisher(port: u16) -> AsyncClient {
    let mut opts = MqttOptions::new("test-pub", "127.0.0.1", port);
    opts.set_inflight(1000);
    let (client, mut el) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move {
        loop {
            if let Err(e) = el.poll().await {
                panic!("publisher: {e}");
            }
        }
    });
    client
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no message within 20 s")
        .expect("subscriber ended")
}

/// Publishes `probe` until the engine's subscription is live and the first
/// output arrives (the engine subscribes asynchronously after connecting).
async fn until_live(
    client: &AsyncClient,
    rx: &mut mpsc::UnboundedReceiver<(String, String)>,
    topic: &str,
    probe: &str,
) {
    for _ in 0..200 {
        client
            .publish(topic, QoS::AtLeastOnce, false, probe)
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            // Drain duplicates of the probe.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {}
            return;
        }
    }
    panic!("the rule engine never answered a probe");
}

fn options(broker: &Mosquitto) -> Options {
    Options {
        mqtt: Some(MqttTarget::parse(&broker.url()).unwrap()),
        client_id: "ferry-test".into(),
        alert_topic: Some("alerts".into()),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_mqtt_event_produces_the_published_action() {
    let broker = Mosquitto::start();
    let rules = r#"
        RULE overheat
        ON topic ~ "plant/+/temp" and temperature > 85
        THEN publish("plant/alerts/{sensor.id}", "{sensor.id} at {temperature}"), alert("overheat {sensor.id}")
    "#;
    let rt = Runtime::start(options(&broker), loaded("v1", rules), None).unwrap();
    let mut rx = subscriber(broker.port, "plant/alerts/#").await;
    let mut alerts = subscriber(broker.port, "alerts").await;
    let client = publisher(broker.port).await;
    until_live(
        &client,
        &mut rx,
        "plant/0/temp",
        r#"{"sensor": {"id": "probe"}, "temperature": 99}"#,
    )
    .await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), alerts.recv()).await {}

    client
        .publish(
            "plant/7/temp",
            QoS::AtLeastOnce,
            false,
            r#"{"sensor": {"id": "th-7"}, "temperature": 80}"#,
        )
        .await
        .unwrap();
    client
        .publish(
            "plant/7/hum",
            QoS::AtLeastOnce,
            false,
            r#"{"sensor": {"id": "th-7"}, "temperature": 99}"#,
        )
        .await
        .unwrap();
    client
        .publish("plant/7/temp", QoS::AtLeastOnce, false, "not json")
        .await
        .unwrap();
    client
        .publish(
            "plant/7/temp",
            QoS::AtLeastOnce,
            false,
            r#"{"sensor": {"id": "th-7"}, "temperature": 91.5}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx).await,
        ("plant/alerts/th-7".into(), "th-7 at 91.5".into())
    );
    let (topic, alert) = recv(&mut alerts).await;
    assert_eq!(topic, "alerts");
    let alert: serde_json::Value = serde_json::from_str(&alert).unwrap();
    assert_eq!(alert["message"], "overheat th-7");
    assert_eq!(alert["rule"], "overheat");
    // Nothing else: the cool reading, the other topic and the bad payload
    // produced no action.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    assert!(rt.stats().bad_events.load(Ordering::Relaxed) >= 1);
}

/// 20,000 numbered events while the rule set is swapped 100 times between
/// two versions: every event is evaluated exactly once, in order, and both
/// versions did part of the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_loses_and_repeats_no_event() {
    const N: u64 = 20_000;
    const SWAPS: u64 = 100;
    let broker = Mosquitto::start();
    let v = |tag: &str| {
        format!(
            "SUBSCRIBE \"in/#\"\nRULE fwd ON exists(seq) THEN publish(\"out/{tag}\", \"{{seq}}\")\n\
             RULE probe ON exists(probe) THEN publish(\"out/probe\", \"{{probe}}\")"
        )
    };
    let rt = Runtime::start(options(&broker), loaded("a", &v("a")), None).unwrap();
    let mut rx = subscriber(broker.port, "out/#").await;
    let client = publisher(broker.port).await;
    until_live(&client, &mut rx, "in/x", r#"{"probe": 1}"#).await;
    let base = rt.stats().events.load(Ordering::Relaxed);

    let swapper = {
        let rt = rt.clone();
        let (a, b) = (v("a"), v("b"));
        tokio::spawn(async move {
            for k in 1..=SWAPS {
                // Spread the swaps over the stream.
                while rt.stats().events.load(Ordering::Relaxed) - base < k * N / (SWAPS + 1) {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let src = if k % 2 == 1 { &b } else { &a };
                rt.swap(loaded(&format!("v{k}"), src));
            }
        })
    };
    for seq in 0..N {
        client
            .publish(
                "in/x",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"seq": {seq}}}"#),
            )
            .await
            .unwrap();
    }
    let mut got = Vec::with_capacity(N as usize);
    let mut by_tag = [0u64; 2];
    while (got.len() as u64) < N {
        let (topic, payload) = recv(&mut rx).await;
        match topic.as_str() {
            "out/a" => by_tag[0] += 1,
            "out/b" => by_tag[1] += 1,
            _ => continue,
        }
        got.push(payload.parse::<u64>().unwrap());
    }
    swapper.await.unwrap();
    // Nothing beyond N arrives: no event was evaluated twice.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err()
    );
    let expected: Vec<u64> = (0..N).collect();
    assert!(
        got == expected,
        "sequence differs, first mismatch at {:?}",
        got.iter().zip(&expected).position(|(a, b)| a != b)
    );
    assert_eq!(rt.stats().events.load(Ordering::Relaxed) - base, N);
    assert_eq!(rt.stats().swaps.load(Ordering::Relaxed), SWAPS);
    assert!(by_tag[0] > 0 && by_tag[1] > 0, "{by_tag:?}");
}
