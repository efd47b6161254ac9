//! The load generator: plain HTTP/1.1 keep-alive connections over hyper's connection API, so
//! the number of connections is exactly what was asked for and no client pool logic sits
//! between the bench and the wire.
//!
//! - [`closed_loop`]: N connections, each sending its next request as soon as the previous
//!   answer arrives. Measures capacity; its latencies are queueing at saturation.
//! - [`open_loop`]: requests at a fixed rate, scheduled by the clock whatever the server does.
//!   Latency is measured from the time a request *should* have been sent, so a stalled server
//!   is charged for every request it delayed (no coordinated omission).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clock;

pub type Body = Full<Bytes>;
pub type Conn = SendRequest<Body>;
/// Builds request `index`, given the time (bench clock, ns) at which it is sent or was due.
pub type MakeRequest = Arc<dyn Fn(u64, u64) -> Request<Body> + Send + Sync>;
/// Sees each answer: request index, status, body, time of completion (bench clock, ns).
pub type OnResponse = Arc<dyn Fn(u64, StatusCode, &Bytes, u64) + Send + Sync>;

/// Bounds every request, so that a wedged server cannot hang the bench.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 5 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("valid histogram bounds")
}

pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    auth: Option<&HeaderValue>,
    body: Bytes,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string());
    if !body.is_empty() {
        b = b.header(CONTENT_TYPE, "application/json");
    }
    if let Some(a) = auth {
        b = b.header(AUTHORIZATION, a.clone());
    }
    b.body(Full::new(body)).expect("a valid request")
}

/// Sends one request and reads the whole answer, so the connection can be reused.
pub async fn exchange(conn: &mut Conn, req: Request<Body>) -> Result<(StatusCode, Bytes), String> {
    conn.ready().await.map_err(|e| e.to_string())?;
    let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Counts and latencies of one load run.
pub struct Tally {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: BTreeMap::new(),
            latency_us: histogram(),
        }
    }

    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn record(&mut self, status: Option<StatusCode>, latency: Duration) {
        match status {
            Some(s) if s.is_success() => {
                self.ok += 1;
                let _ = self.latency_us.record(clock::micros(latency));
            }
            Some(s) => self.error(format!("http {}", s.as_u16())),
            None => self.error("transport"),
        }
    }
}

pub struct LoadResult {
    pub tally: Tally,
    /// The measured window: the configured duration, or for a budgeted run the time it took.
    pub elapsed: Duration,
}

#[derive(Clone)]
pub struct ClosedLoop {
    pub connections: usize,
    pub start: Instant,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop after this many requests instead of at the end of `duration`.
    pub budget: Option<u64>,
    /// A new connection for every request (for servers that close each one).
    pub fresh_connections: bool,
}

pub async fn closed_loop(
    addr: SocketAddr,
    cfg: ClosedLoop,
    make: MakeRequest,
    on_response: Option<OnResponse>,
) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let measure_from = cfg.start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut set = JoinSet::new();
    for _ in 0..cfg.connections {
        let (make, on_response, next) = (make.clone(), on_response.clone(), next.clone());
        let (budget, fresh) = (cfg.budget, cfg.fresh_connections);
        set.spawn(async move {
            let mut tally = Tally::new();
            let mut conn: Option<Conn> = None;
            let mut last_done = Instant::now();
            loop {
                if Instant::now() >= end {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if budget.is_some_and(|b| index >= b) {
                    break;
                }
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connect(addr).await {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            tally.error("connect");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                let req = make(index, clock::now_ns());
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange(c, req)).await;
                let t1 = Instant::now();
                last_done = t1;
                let status = match outcome {
                    Ok(Ok((status, body))) => {
                        if let Some(h) = &on_response {
                            h(index, status, &body, clock::ns_of(t1));
                        }
                        Some(status)
                    }
                    Ok(Err(_)) | Err(_) => {
                        conn = None;
                        None
                    }
                };
                if fresh {
                    conn = None;
                }
                // Completions inside the window, so that requests/window is the rate.
                if t1 >= measure_from && t1 < end {
                    tally.record(status, t1 - t0);
                }
            }
            (tally, last_done)
        });
    }
    let mut tally = Tally::new();
    let mut last = cfg.start;
    while let Some(done) = set.join_next().await {
        if let Ok((t, at)) = done {
            tally.merge(t);
            last = last.max(at);
        }
    }
    let elapsed = match cfg.budget {
        Some(_) => last.saturating_duration_since(measure_from),
        None => cfg.duration,
    };
    LoadResult { tally, elapsed }
}

#[derive(Clone)]
pub struct OpenLoop {
    pub rate: f64,
    pub start: Instant,
    pub warmup: Duration,
    pub duration: Duration,
    /// Connections are opened on demand up to this many; a request that finds none free
    /// waits, and that wait counts in its latency.
    pub max_connections: usize,
}

impl OpenLoop {
    /// Index of the first request inside the measured window.
    pub fn first_measured(&self) -> u64 {
        (self.warmup.as_secs_f64() * self.rate).ceil() as u64
    }

    pub fn total(&self) -> u64 {
        ((self.warmup + self.duration).as_secs_f64() * self.rate).floor() as u64
    }

    pub fn intended(&self, index: u64) -> Instant {
        self.start + Duration::from_secs_f64(index as f64 / self.rate)
    }
}

struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
}

pub async fn open_loop(
    addr: SocketAddr,
    cfg: OpenLoop,
    make: MakeRequest,
    on_response: Option<OnResponse>,
) -> LoadResult {
    let pool = Arc::new(Pool {
        addr,
        idle: Mutex::new(Vec::new()),
        slots: Arc::new(Semaphore::new(cfg.max_connections)),
    });
    let tally = Arc::new(Mutex::new(Tally::new()));
    let first_measured = cfg.first_measured();
    let mut set = JoinSet::new();
    for index in 0..cfg.total() {
        let intended = cfg.intended(index);
        tokio::time::sleep_until(intended.into()).await;
        while set.try_join_next().is_some() {}
        let (pool, make, on_response, tally) = (
            pool.clone(),
            make.clone(),
            on_response.clone(),
            tally.clone(),
        );
        set.spawn(async move {
            let Ok(_slot) = pool.slots.clone().acquire_owned().await else {
                return;
            };
            let reused = pool.idle.lock().expect("pool poisoned").pop();
            let mut conn = match reused {
                Some(c) => Some(c),
                None => connect(pool.addr).await.ok(),
            };
            let status = match conn.as_mut() {
                None => None,
                Some(c) => {
                    let req = make(index, clock::ns_of(intended));
                    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(c, req)).await {
                        Ok(Ok((status, body))) => {
                            if let Some(h) = &on_response {
                                h(index, status, &body, clock::now_ns());
                            }
                            Some(status)
                        }
                        _ => {
                            conn = None;
                            None
                        }
                    }
                }
            };
            let latency = intended.elapsed();
            if let Some(c) = conn {
                pool.idle.lock().expect("pool poisoned").push(c);
            }
            if index >= first_measured {
                tally
                    .lock()
                    .expect("tally poisoned")
                    .record(status, latency);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let tally = Arc::try_unwrap(tally)
        .ok()
        .expect("every request task has finished")
        .into_inner()
        .expect("tally poisoned");
    LoadResult {
        tally,
        elapsed: cfg.duration,
    }
}
