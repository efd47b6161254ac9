//! The two HTTP servers the bench needs besides fluxcb: the loopback receiver that fluxcb
//! delivers to (in-process, so it shares the bench's clock), and the trivial server that only
//! answers 202 (run in a child process, see `procs::start_trivial`).
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::clock;
use crate::load::histogram;

/// Serves HTTP/1.1 on `listener` until the returned task is aborted; aborting it also ends
/// every open connection, since they live in its `JoinSet`.
pub(crate) fn serve<F, Fut>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let fut = handler(req);
                            async move { Ok::<_, Infallible>(fut.await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

pub(crate) fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// The `--serve-202` role: reads each request body in full and answers `202` with no body.
pub async fn run_trivial(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let task = serve(listener, |req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        empty(StatusCode::ACCEPTED)
    });
    let _ = task.await;
    Ok(())
}

/// What the receiver saw.
pub struct Seen {
    pub count: AtomicU64,
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
    pub duplicates: AtomicU64,
    /// `webhook-id` to the time of its first arrival.
    pub arrivals: Mutex<HashMap<String, u64>>,
    /// Payload send stamps older than this are warm-up and not recorded.
    pub measure_from_ns: AtomicU64,
    /// Due-to-delivered: payload `t` (when the load generator should have sent the
    /// callback) to its arrival here, µs.
    pub send_to_delivery_us: Mutex<Histogram<u64>>,
    /// Attempts answered 503 on purpose (see [`Receiver::start_failing`]); not in `count`.
    pub failed: AtomicU64,
    /// Attempts so far per `webhook-id`, kept only by a failing receiver.
    tries: Mutex<HashMap<String, u32>>,
}

#[derive(Deserialize)]
struct Stamp {
    t: Option<u64>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers 200 to everything on a loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(0, std::time::Duration::ZERO).await
    }

    /// Answers 503 to `percent` % of attempts, each attempt of a callback (by `webhook-id`)
    /// drawn independently but reproducibly (a hash of the id and the attempt's number), and
    /// 200 to the rest, each after `delay`.
    pub async fn start_with(percent: u32, delay: std::time::Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Seen {
            count: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            arrivals: Mutex::new(HashMap::new()),
            measure_from_ns: AtomicU64::new(0),
            send_to_delivery_us: Mutex::new(histogram()),
            failed: AtomicU64::new(0),
            tries: Mutex::new(HashMap::new()),
        });
        let shared = seen.clone();
        let task = serve(listener, move |req: Request<Incoming>| {
            let seen = shared.clone();
            async move {
                let id = req
                    .headers()
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return empty(StatusCode::BAD_REQUEST),
                };
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if percent > 0 && seen.fails(id.as_deref(), percent) {
                    seen.failed.fetch_add(1, Ordering::Relaxed);
                    return empty(StatusCode::SERVICE_UNAVAILABLE);
                }
                seen.arrived(id, &body, clock::now_ns());
                empty(StatusCode::OK)
            }
        });
        Ok(Self { addr, seen, task })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Seen {
    /// Whether this attempt of callback `id` is one to fail (FNV-1a of the id and the
    /// attempt's number, so a rerun fails the same attempts).
    fn fails(&self, id: Option<&str>, percent: u32) -> bool {
        let Some(id) = id else { return false };
        let attempt = {
            let mut tries = self.tries.lock().expect("tries poisoned");
            let n = tries.entry(id.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes().chain(attempt.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h % 100 < u64::from(percent)
    }

    fn arrived(&self, id: Option<String>, body: &[u8], now: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .first_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        if let Some(id) = id {
            let mut arrivals = self.arrivals.lock().expect("arrivals poisoned");
            match arrivals.entry(id) {
                Entry::Occupied(_) => {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Entry::Vacant(slot) => {
                    slot.insert(now);
                }
            }
        }
        if let Ok(Stamp { t: Some(t) }) = serde_json::from_slice::<Stamp>(body) {
            if t >= self.measure_from_ns.load(Ordering::Relaxed) && now >= t {
                let _ = self
                    .send_to_delivery_us
                    .lock()
                    .expect("histogram poisoned")
                    .record(((now - t) / 1000).max(1));
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
