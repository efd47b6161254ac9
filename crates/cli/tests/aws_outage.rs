//! The AWS emulator unreachable for a while (issue 7's network faults on the AWS backend): the
//! app reaches DynamoDB and SQS through a loopback proxy that the test cuts (every open
//! connection dropped, new ones refused) and restores. Meanwhile ingest answers 503 with
//! `Retry-After` and stores nothing half; afterwards it recovers by itself, and every
//! acknowledged callback is delivered.
//!
//! One delay is expected and waited for: a claim that DynamoDB applied but whose answer the
//! outage cut off leaves the callback leased to nobody, so it comes back only when its lease
//! expires and the sweeper returns it. Late, never lost. The lease here is the shortest the
//! 2 s attempt timeout allows (`aws_claim_lease` 7 s; 90 s by default).
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{spawn_on, Backend, TestReceiver};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards loopback connections to `upstream` while `up` is true; when it turns false, drops
/// every forwarded connection and refuses new ones.
async fn cuttable_proxy(upstream: SocketAddr, up: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !*up.borrow() {
                continue; // dropped at once: the client sees a reset
            }
            let mut up = up.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = up.wait_for(|on| !*on) => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_emulator_answers_503_and_delivery_resumes() {
    let Some(moto) = common::aws::endpoint() else {
        return;
    };
    let upstream: SocketAddr = moto
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("moto on a loopback address");
    let (switch, up) = watch::channel(true);
    let proxy = cuttable_proxy(upstream, up).await;
    let receiver = TestReceiver::start().await;
    let Some(app) = spawn_on(Backend::Aws, |config| {
        config.aws_claim_lease = "7s".into();
        // The table and queues were made directly; the app goes through the proxy. The SDK
        // reads this when the app builds its clients, right after this closure.
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://{proxy}"));
    })
    .await
    else {
        return;
    };
    let target = receiver.url("/ok/outage");
    let mut acked = BTreeSet::new();
    let create = |n: usize| {
        let app = &app;
        let target = target.clone();
        async move {
            app.post(
                "/v1/callbacks",
                &json!({"url": target, "payload": {"n": n}}),
            )
            .await
        }
    };
    for n in 0..10 {
        let r = create(n).await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        acked.insert(v["id"].as_str().unwrap().to_owned());
    }

    switch.send(false).unwrap();
    let mut refused = Vec::new();
    for n in 10..13 {
        let r = create(n).await;
        let status = r.status().as_u16();
        let retry_after = r.headers().contains_key("retry-after");
        if status == 202 {
            let v: Value = r.json().await.unwrap();
            acked.insert(v["id"].as_str().unwrap().to_owned());
        } else {
            refused.push((status, retry_after));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    switch.send(true).unwrap();
    assert!(
        !refused.is_empty(),
        "ingest with the emulator unreachable is refused"
    );
    assert!(
        refused.iter().all(|(s, ra)| *s == 503 && *ra),
        "503 with Retry-After: {refused:?}"
    );

    // Back: ingest recovers by itself, and everything acknowledged is delivered.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 100;
    loop {
        n += 1;
        let r = create(n).await;
        if r.status() == 202 {
            let v: Value = r.json().await.unwrap();
            acked.insert(v["id"].as_str().unwrap().to_owned());
            break;
        }
        assert!(Instant::now() < deadline, "ingest did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The lease (7 s) plus a sweep, for a claim whose answer was lost, with room.
    let deadline = Instant::now() + Duration::from_secs(60);
    let lost = loop {
        let seen: BTreeSet<String> = receiver
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        let lost = acked.difference(&seen).count();
        if lost == 0 || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "emulator outage: {} acknowledged, {} refused while unreachable, lost {lost}",
        acked.len(),
        refused.len()
    );
    if lost > 0 {
        let seen: BTreeSet<String> = receiver
            .received()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        for id in acked.difference(&seen) {
            let r = app.get(&format!("/v1/callbacks/{id}")).await;
            let status = r.status();
            eprintln!(
                "not delivered: {status} {}",
                r.text().await.unwrap_or_default()
            );
        }
    }
    assert_eq!(
        lost, 0,
        "every acknowledged callback delivered after the outage"
    );
    app.stop().await;
}
