//! The CoAP server against a real client, libcoap's `coap-client` (Debian
//! `libcoap3-bin`), and against hand-made datagrams for what no client
//! sends on purpose: JSON and CBOR posts, a block-wise upload, oversize,
//! a full queue, duplicates, malformed datagrams, and the server still
//! answering after all of it.
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_ingest::coap::CoapServer;
use ferry_ingest::config::CoapPlan;
use ferry_rules::runtime::{EventReceiver, EventSink};

const CLIENT: &str = "coap-client-notls";

/// Runs coap-client; returns what it printed (an error response as
/// "4.13 diagnostic"; a 2.04 without payload prints nothing).
async fn client(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(CLIENT)
            .args(["-B", "10"])
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{CLIENT} (apt-get install libcoap3-bin): {e}"));
        assert!(out.status.success(), "{CLIENT} {args:?}: {out:?}");
        // Error responses go to stderr, payloads to stdout.
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text.trim().to_owned()
    })
    .await
    .unwrap()
}

/// A confirmable JSON POST; what coap-client printed.
async fn post_json(url: &str, body: &str) -> String {
    client(&["-m", "post", "-t", "json", "-e", body, url]).await
}

async fn server(queue: usize, max_payload: usize) -> (CoapServer, EventReceiver, String) {
    let (sink, rx) = EventSink::channel(queue);
    let plan = CoapPlan {
        bind: "127.0.0.1:0".parse().unwrap(),
        max_payload,
    };
    let s = CoapServer::start(&plan, sink).await.unwrap();
    let base = format!("coap://{}", s.local);
    (s, rx, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_posts_json_cbor_and_blocks_and_meets_every_limit() {
    let (s, mut rx, base) = server(3, 2048).await;
    let dir = tempfile::tempdir().unwrap();

    // JSON.
    let out = post_json(&format!("{base}/plant/t1"), r#"{"temperature": 90}"#).await;
    assert_eq!(out, "");
    let e = rx.recv().await.unwrap();
    assert_eq!(e.topic, "coap/plant/t1");
    assert_eq!(e.payload, br#"{"temperature": 90}"#);
    assert_eq!(e.fields, None);

    // CBOR: {"temperature": 100, "sensor": {"id": "t2"}}, from a file.
    let mut cbor = Vec::new();
    ciborium_like(&mut cbor);
    let f = dir.path().join("p.cbor");
    std::fs::write(&f, &cbor).unwrap();
    let out = client(&[
        "-m",
        "put",
        "-t",
        "cbor",
        "-f",
        f.to_str().unwrap(),
        &format!("{base}/plant/t2"),
    ])
    .await;
    assert_eq!(out, "");
    let e = rx.recv().await.unwrap();
    assert_eq!(e.payload, cbor);
    let fields: serde_json::Value = serde_json::from_slice(&e.fields.unwrap()).unwrap();
    assert_eq!(
        fields,
        serde_json::json!({"temperature": 100, "sensor": {"id": "t2"}})
    );

    // A block-wise upload (RFC 7959): 1500 bytes in 512-byte blocks.
    let body: Vec<u8> = (0..1500u32).map(|i| b'a' + (i % 26) as u8).collect();
    let f = dir.path().join("body");
    std::fs::write(&f, &body).unwrap();
    let out = client(&[
        "-m",
        "post",
        "-b",
        "512",
        "-f",
        f.to_str().unwrap(),
        &format!("{base}/bulk"),
    ])
    .await;
    assert_eq!(out, "");
    assert_eq!(rx.recv().await.unwrap().payload, body);
    assert_eq!(s.stats.blocks.load(Ordering::Relaxed), 2);

    // Over the payload limit, whole or in blocks: 4.13.
    std::fs::write(&f, vec![b'x'; 5000]).unwrap();
    for block in ["64", "1024"] {
        let out = client(&[
            "-m",
            "post",
            "-b",
            block,
            "-f",
            f.to_str().unwrap(),
            &format!("{base}/bulk"),
        ])
        .await;
        assert!(out.starts_with("4.13"), "-b {block}: {out:?}");
    }

    // Bad requests: 4.xx, nothing queued.
    // The diagnostic is cut to the request's size: the server never sends
    // more than it received (the peer's address may be spoofed).
    let out = post_json(&format!("{base}/a"), "{nope").await;
    assert!(out.starts_with("4.00 payload is"), "{out}");
    let out = client(&[
        "-m",
        "post",
        "-t",
        "cbor",
        "-e",
        "\u{7f}",
        &format!("{base}/a"),
    ])
    .await;
    assert!(out.starts_with("4.00 CB"), "{out}");
    let out = client(&["-m", "get", &format!("{base}/a")]).await;
    assert!(out.starts_with("4.05"), "{out}");
    let out = client(&[
        "-m",
        "post",
        "-t",
        "application/xml",
        "-e",
        "<a/>",
        &format!("{base}/a"),
    ])
    .await;
    assert!(out.starts_with("4.15"), "{out}");

    // The queue (3 events) fills: 5.03, and the event is not queued. Once
    // the rule engine takes events again, requests are accepted again.
    let post = |path: &'static str| {
        let url = format!("{base}/{path}");
        async move { client(&["-m", "post", "-t", "json", "-e", "{}", &url]).await }
    };
    for _ in 0..3 {
        assert_eq!(post("q").await, "");
    }
    assert!(post("q").await.starts_with("5.03"));
    assert_eq!(s.stats.overloaded.load(Ordering::Relaxed), 1);
    for _ in 0..3 {
        rx.recv().await.unwrap();
    }
    assert!(rx.try_recv().is_none());
    assert_eq!(post("q").await, "");
    assert_eq!(rx.recv().await.unwrap().topic, "coap/q");
}

/// `{"temperature": 100, "sensor": {"id": "t2"}}` in CBOR, written out.
fn ciborium_like(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xa2, 0x6b]);
    out.extend_from_slice(b"temperature");
    out.extend_from_slice(&[0x18, 100, 0x66]);
    out.extend_from_slice(b"sensor");
    out.extend_from_slice(&[0xa1, 0x62]);
    out.extend_from_slice(b"id");
    out.push(0x62);
    out.extend_from_slice(b"t2");
}

/// A confirmable POST to /dup with message id `id`.
fn con_post(id: u16, payload: &[u8]) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let mut d = vec![0x42, 0x02, a, b, 0xaa, 0xbb, 0xb3];
    d.extend_from_slice(b"dup");
    d.push(0xff);
    d.extend_from_slice(payload);
    d
}

fn exchange(sock: &UdpSocket, datagram: &[u8]) -> Option<Vec<u8>> {
    sock.send(datagram).unwrap();
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_malformed_datagrams_are_answered_without_harm() {
    let (s, mut rx, base) = server(16, 1024).await;
    let local = s.local;
    let replies = tokio::task::spawn_blocking(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(local).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let first = exchange(&sock, &con_post(0x0101, b"1")).unwrap();
        let again = exchange(&sock, &con_post(0x0101, b"1")).unwrap();
        let mut odd = Vec::new();
        // Garbage, a reserved token length on a CON (Reset), a header cut
        // short, an ACK nobody asked for, an empty datagram, 64 KiB.
        for d in [
            vec![0xde, 0xad, 0xbe, 0xef, 0x00],
            vec![0x49, 0x02, 0x77, 0x77],
            vec![0x40, 0x02],
            vec![0x60, 0x44, 0x00, 0x01],
            vec![],
            vec![0x40; 65_000],
        ] {
            odd.push(exchange(&sock, &d));
        }
        (first, again, odd)
    })
    .await
    .unwrap();
    let (first, again, odd) = replies;
    assert_eq!(first, again, "a duplicate gets the same answer");
    assert_eq!(first[0] >> 4 & 3, 2, "an ACK");
    assert_eq!(first[1], 0x44, "2.04 Changed");
    assert_eq!(rx.recv().await.unwrap().payload, b"1");
    assert!(
        rx.try_recv().is_none(),
        "the duplicate was not queued again"
    );
    assert_eq!(s.stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(
        odd[1],
        Some(vec![0x70, 0x00, 0x77, 0x77]),
        "Reset for a bad CON"
    );
    assert!(
        odd.iter()
            .enumerate()
            .all(|(i, r)| i == 1 || i == 5 || r.is_none()),
        "{odd:?}"
    );
    assert!(s.stats.malformed.load(Ordering::Relaxed) >= 3);
    // Still serving real clients.
    let out = client(&["-m", "post", "-e", "after", &format!("{base}/still")]).await;
    assert_eq!(out, "");
    assert_eq!(rx.recv().await.unwrap().payload, b"after");
}
