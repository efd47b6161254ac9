//! The `ordered` scenario: many keys, many callbacks per key, some attempts failing on purpose,
//! and a receiver that proves the order: per key, every request must be for the callback after
//! the last one it accepted (or a retry of the one it is waiting for), and never two at once.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::httpd::{empty, serve};
use crate::procs;
use crate::report::{Goal, Run};
use crate::scenarios::{cpu_between, finish, snapshot, Opts};

#[derive(Default)]
struct KeyState {
    /// The next sequence number this key may deliver.
    next: u32,
    in_flight: u32,
    /// Attempts of each sequence number so far (for the failures on purpose).
    tries: HashMap<u32, u32>,
}

#[derive(Default)]
struct Proof {
    keys: Mutex<HashMap<String, KeyState>>,
    delivered: AtomicU64,
    failed_on_purpose: AtomicU64,
    /// A request for a callback other than the key's next one (ahead of a predecessor, or
    /// after it was already accepted).
    out_of_order: AtomicU64,
    /// A request while another of its key was being answered.
    overlapping: AtomicU64,
}

struct OrderedReceiver {
    addr: std::net::SocketAddr,
    proof: Arc<Proof>,
    task: JoinHandle<()>,
}

impl Drop for OrderedReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the first attempt of this callback fails (10 % of them, spread by a hash).
fn fails_first(key: u32, seq: u32) -> bool {
    (key.wrapping_mul(2_654_435_761) ^ seq.wrapping_mul(40_503)).is_multiple_of(10)
}

impl OrderedReceiver {
    async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let proof = Arc::new(Proof::default());
        let shared = proof.clone();
        let task = serve(listener, move |req: Request<Incoming>| {
            let proof = shared.clone();
            async move {
                // /o/{key}/{seq}
                let path = req.uri().path().to_owned();
                let mut parts = path.trim_start_matches("/o/").split('/');
                let (Some(key), Some(seq)) = (parts.next(), parts.next()) else {
                    return empty(StatusCode::NOT_FOUND);
                };
                let (Ok(key_n), Ok(seq)) = (key.parse::<u32>(), seq.parse::<u32>()) else {
                    return empty(StatusCode::NOT_FOUND);
                };
                let fail = {
                    let mut keys = proof.keys.lock().expect("poisoned");
                    let st = keys.entry(key.to_owned()).or_default();
                    st.in_flight += 1;
                    if st.in_flight > 1 {
                        proof.overlapping.fetch_add(1, Ordering::Relaxed);
                    }
                    if seq != st.next {
                        proof.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    let tries = st.tries.entry(seq).or_insert(0);
                    *tries += 1;
                    *tries == 1 && fails_first(key_n, seq)
                };
                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                let mut keys = proof.keys.lock().expect("poisoned");
                let st = keys.get_mut(key).expect("entered above");
                st.in_flight -= 1;
                if fail {
                    proof.failed_on_purpose.fetch_add(1, Ordering::Relaxed);
                    return empty(StatusCode::SERVICE_UNAVAILABLE);
                }
                if seq == st.next {
                    st.next += 1;
                }
                st.tries.remove(&seq);
                proof.delivered.fetch_add(1, Ordering::Relaxed);
                empty(StatusCode::OK)
            }
        });
        Ok(Self { addr, proof, task })
    }
}

pub const KEYS: u32 = 1_000;
pub const PER_KEY: u32 = 100;

/// Registers the receiver with a breaker that tolerates the failures on purpose, then
/// accepts `keys` × `per_key` callbacks in per-key order (one batch after another), and waits
/// until the receiver has accepted them all.
pub async fn ordered(o: &Opts, rep: usize, keys: u32, per_key: u32) -> Result<Run, String> {
    let receiver = OrderedReceiver::start().await.map_err(|e| e.to_string())?;
    let mut env = o.server_env.clone();
    env.push(("FLUXCB_RETRY_SCHEDULE".into(), "50ms,200ms,1s".into()));
    let server = procs::start_fluxcb(&o.fluxcb_bin, &env).await?;
    let mut run = Run::new("ordered", "fluxcb", rep, "deliveries/s");
    let mut api = Api::new(server.addr);
    let (status, answer) = api
        .post(
            "/v1/destinations",
            Bytes::from(
                json!({
                    "match": { "origin": format!("http://{}", receiver.addr) },
                    "settings": { "circuit_failure_threshold": 1000 },
                })
                .to_string(),
            ),
        )
        .await?;
    if status != 201 {
        return Err(format!("registering the receiver: {status} {answer}"));
    }
    let total = u64::from(keys) * u64::from(per_key);
    let started = Instant::now();
    let a = snapshot(server.pid);
    // Sequence-major, so each key's callbacks are accepted in sequence order across batches.
    let items: Vec<Value> = (0..per_key)
        .flat_map(|seq| {
            (0..keys).map(move |key| {
                json!({
                    "url": format!("http://{}/o/{key}/{seq}", receiver.addr),
                    "ordering_key": format!("key-{key}"),
                    "payload": { "key": key, "seq": seq },
                })
            })
        })
        .collect();
    let mut accepted = 0u64;
    for chunk in items.chunks(1000) {
        let body = Bytes::from(json!({ "callbacks": chunk }).to_string());
        let mut tries = 0;
        loop {
            let (status, answer) = api.post("/v1/callbacks/batch", body.clone()).await?;
            if status == 202 {
                accepted += chunk.len() as u64;
                break;
            }
            tries += 1;
            if tries > 5 {
                return Err(format!("batch refused: {status} {answer}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let limit = Instant::now() + Duration::from_secs(600);
    let proof = &receiver.proof;
    while proof.delivered.load(Ordering::Relaxed) < total && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = snapshot(server.pid);
    let seconds = started.elapsed().as_secs_f64();
    let delivered = proof.delivered.load(Ordering::Relaxed);
    let out_of_order = proof.out_of_order.load(Ordering::Relaxed);
    let overlapping = proof.overlapping.load(Ordering::Relaxed);
    run.requests = delivered + proof.failed_on_purpose.load(Ordering::Relaxed);
    run.items = delivered;
    run.seconds = seconds;
    run.throughput = delivered as f64 / seconds;
    run.cpu = cpu_between(&a, &b);
    run.errors = total.saturating_sub(delivered);
    run.fact("keys", keys);
    run.fact("callbacks_per_key", per_key);
    run.fact("accepted", accepted);
    run.fact("ingest_s", (ingest_s * 100.0).round() / 100.0);
    run.fact(
        "failed_on_purpose",
        proof.failed_on_purpose.load(Ordering::Relaxed),
    );
    run.fact("out_of_order_requests", out_of_order);
    run.fact("overlapping_requests", overlapping);
    run.notes.push(
        "throughput = callbacks / (first batch sent -> receiver accepted the last); 10% of first \
         attempts fail (503) and are retried after 50 ms, holding their key"
            .into(),
    );
    run.goal = Some(Goal {
        text: "every key in acceptance order, one request at a time".into(),
        met: delivered == total && out_of_order == 0 && overlapping == 0,
    });
    finish(&mut run, server).await;
    Ok(run)
}
