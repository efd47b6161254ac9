//! A receiver that proves ordered delivery: it records every request per ordering key, notes
//! any that arrived while another of its key was still being answered, and fails chosen
//! callbacks a chosen number of times; and the checks on what it saw.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::TestApp;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub key: String,
    pub seq: u32,
    pub ok: bool,
}

#[derive(Default)]
struct Seen {
    arrivals: Vec<Arrival>,
    in_flight: HashMap<String, u32>,
    /// Requests that arrived while another of their key was still being answered.
    overlaps: Vec<String>,
    /// Failures still to give per (key, seq).
    failures: HashMap<(String, u32), u32>,
}

#[derive(Clone, Default)]
pub struct OrderedReceiver(Arc<Mutex<Seen>>);

impl OrderedReceiver {
    /// `POST /k/{key}/{seq}`: answers after a few milliseconds, failing as many times as
    /// `fail(key, seq)` says first.
    pub async fn start(
        fail: impl Fn(&str, u32) -> u32 + Send + Sync + 'static,
    ) -> (Self, SocketAddr) {
        let me = OrderedReceiver::default();
        let fail = Arc::new(fail);
        let app = Router::new()
            .route(
                "/k/{key}/{seq}",
                post(
                    move |State(me): State<OrderedReceiver>,
                          Path((key, seq)): Path<(String, u32)>| {
                        let fail = fail.clone();
                        async move { me.answer(key, seq, fail.as_ref()).await }
                    },
                ),
            )
            .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (me, addr)
    }

    async fn answer(
        &self,
        key: String,
        seq: u32,
        fail: &(dyn Fn(&str, u32) -> u32 + Send + Sync),
    ) -> StatusCode {
        let ok = {
            let mut seen = self.0.lock().unwrap();
            let n = seen.in_flight.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                seen.overlaps.push(format!("{key}/{seq}"));
            }
            let left = seen
                .failures
                .entry((key.clone(), seq))
                .or_insert_with(|| fail(&key, seq));
            let ok = *left == 0;
            *left = left.saturating_sub(1);
            ok
        };
        // A request whose sender went away (`kill -9`) is dropped mid-answer: it leaves the
        // key's in-flight count all the same.
        struct Leave(OrderedReceiver, String);
        impl Drop for Leave {
            fn drop(&mut self) {
                if let Ok(mut seen) = self.0 .0.lock() {
                    if let Some(n) = seen.in_flight.get_mut(&self.1) {
                        *n -= 1;
                    }
                }
            }
        }
        let leave = Leave(self.clone(), key.clone());
        // Long enough that a second request of the key would overlap if one were sent.
        tokio::time::sleep(Duration::from_millis(3 + u64::from(seq % 4))).await;
        drop(leave);
        let mut seen = self.0.lock().unwrap();
        seen.arrivals.push(Arrival { key, seq, ok });
        if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.0.lock().unwrap().arrivals.clone()
    }

    pub fn overlaps(&self) -> Vec<String> {
        self.0.lock().unwrap().overlaps.clone()
    }

    /// Distinct callbacks delivered (a redelivery counts once).
    pub fn delivered(&self) -> usize {
        self.arrivals()
            .iter()
            .filter(|a| a.ok)
            .map(|a| (a.key.clone(), a.seq))
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    pub async fn wait_delivered(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.delivered() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} delivered",
                self.delivered()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Per key: the successful deliveries are 0, 1, 2, … in order, and no request of a callback
/// arrives once a later one of its key has been delivered (a retry or a redelivery after a
/// crash comes before its successors, never after).
pub fn assert_in_order(arrivals: &[Arrival], per_key: u32) {
    let mut by_key: HashMap<&str, Vec<&Arrival>> = HashMap::new();
    for a in arrivals {
        by_key.entry(&a.key).or_default().push(a);
    }
    for (key, list) in by_key {
        let delivered: Vec<u32> = list.iter().filter(|a| a.ok).map(|a| a.seq).collect();
        let mut firsts = delivered.clone();
        firsts.dedup();
        assert_eq!(
            firsts,
            (0..per_key).collect::<Vec<_>>(),
            "key {key}: deliveries in this order: {delivered:?}"
        );
        let mut highest_delivered: Option<u32> = None;
        for a in &list {
            if let Some(h) = highest_delivered {
                assert!(
                    a.seq >= h,
                    "key {key}: {} arrived after {h} was delivered: {list:?}",
                    a.seq
                );
            }
            if a.ok {
                highest_delivered = Some(highest_delivered.map_or(a.seq, |h| h.max(a.seq)));
            }
        }
    }
}

/// The receiver registered with a breaker that tolerates the test's failures.
pub fn patient(addr: SocketAddr) -> Value {
    json!({
        "match": { "origin": format!("http://{addr}") },
        "settings": { "circuit_failure_threshold": 1000 },
    })
}

pub fn batch(addr: SocketAddr, keys: &[String], seqs: std::ops::Range<u32>) -> Value {
    // Interleaved across keys, each key's callbacks in sequence: acceptance order per key is
    // the sequence.
    let callbacks: Vec<Value> = seqs
        .flat_map(|seq| {
            keys.iter().map(move |key| {
                json!({
                    "url": format!("http://{addr}/k/{key}/{seq}"),
                    "ordering_key": key,
                    "payload": { "key": key, "seq": seq },
                })
            })
        })
        .collect();
    json!({ "callbacks": callbacks })
}

pub async fn post_batch(app: &TestApp, body: &Value) -> Vec<String> {
    let r = app.post("/v1/callbacks/batch", body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}
