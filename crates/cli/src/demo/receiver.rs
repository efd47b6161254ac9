//! The demo's receivers: real HTTP servers on loopback, one per behaviour, that check each
//! request's Standard Webhooks signature and then answer as their story says (a healthy shop,
//! a flaky billing service, a retired CRM endpoint, a warehouse that is down).
//!
//! Each receiver gets its own loopback address where the system has them (Linux routes all of
//! 127.0.0.0/8 to the loopback interface), so the console's per-host statistics and dead
//! letter groups tell them apart, and the SSRF allow-list can name exactly these addresses
//! instead of loopback as a whole. Elsewhere they share 127.0.0.1 on different ports.
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use fluxcb_core::signing::{self, SigningSecret};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a receiver answers. The traffic mix decides how many callbacks each one gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Behaviour {
    /// Answers 200 after a few milliseconds (now and then a few hundred).
    Healthy,
    /// Fails some callbacks' first attempt or two (503 with `Retry-After`, or 500), then
    /// answers 200: they are delivered on a retry.
    Flaky,
    /// Answers 410 Gone: fluxcb stops at once and dead-letters the callback.
    Gone,
    /// Answers 500 to everything: callbacks run out of attempts and are dead-lettered, and
    /// the destination's circuit breaker opens.
    Down,
}

impl Behaviour {
    pub(crate) const ALL: [Behaviour; 4] = [
        Behaviour::Healthy,
        Behaviour::Flaky,
        Behaviour::Gone,
        Behaviour::Down,
    ];

    /// The service the receiver plays; also its `receiver` metadata tag.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Behaviour::Healthy => "shop",
            Behaviour::Flaky => "billing",
            Behaviour::Gone => "crm",
            Behaviour::Down => "warehouse",
        }
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            Behaviour::Healthy => "/shop/orders",
            Behaviour::Flaky => "/billing/invoices",
            Behaviour::Gone => "/crm/contacts",
            Behaviour::Down => "/warehouse/stock",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Behaviour::Healthy => "answers 200",
            Behaviour::Flaky => {
                "1 in 4 get 503 (Retry-After: 1) first, 1 in 10 get 500 twice; then 200"
            }
            Behaviour::Gone => "410 Gone: dead letter at the first attempt",
            Behaviour::Down => "always 500: dead letter after 4 attempts; its circuit opens",
        }
    }
}

/// What the receivers have answered, for the demo's summary.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ok: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Requests whose signature did not verify (answered 401). Should stay 0.
    pub(crate) bad_signatures: AtomicU64,
}

pub(crate) struct Receiver {
    pub(crate) behaviour: Behaviour,
    pub(crate) addr: SocketAddr,
}

impl Receiver {
    pub(crate) fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.behaviour.path())
    }
}

pub(crate) struct Receivers {
    pub(crate) list: Vec<Receiver>,
    pub(crate) tally: Arc<Tally>,
    tasks: Vec<JoinHandle<()>>,
}

/// The first of the dedicated loopback addresses: 127.0.100.1 and up, one per behaviour.
const DEDICATED: Ipv4Addr = Ipv4Addr::new(127, 0, 100, 1);

impl Receivers {
    /// Binds every receiver and serves until `stop` is cancelled.
    pub(crate) async fn start(
        secret: SigningSecret,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let listeners = match bind_dedicated().await {
            Some(listeners) => listeners,
            None => {
                let mut shared = Vec::new();
                for _ in Behaviour::ALL {
                    shared.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?);
                }
                shared
            }
        };
        let tally = Arc::new(Tally::default());
        let mut list = Vec::new();
        let mut tasks = Vec::new();
        for (behaviour, listener) in Behaviour::ALL.into_iter().zip(listeners) {
            let addr = listener.local_addr()?;
            let state = Arc::new(ReceiverState {
                behaviour,
                secret: secret.clone(),
                tally: tally.clone(),
                seen: Mutex::default(),
            });
            let app = Router::new()
                .route(behaviour.path(), post(answer))
                .with_state(state);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            }));
            list.push(Receiver { behaviour, addr });
        }
        Ok(Self { list, tally, tasks })
    }

    /// The allow-list entries that let deliveries reach these receivers and nothing else the
    /// policy blocks: each receiver's address on its own (`/32`), never a whole range.
    pub(crate) fn allow_list(&self) -> String {
        let mut ips: Vec<IpAddr> = self.list.iter().map(|r| r.addr.ip()).collect();
        ips.sort();
        ips.dedup();
        ips.iter()
            .map(|ip| format!("{ip}/32"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn get(&self, behaviour: Behaviour) -> &Receiver {
        self.list
            .iter()
            .find(|r| r.behaviour == behaviour)
            .expect("every behaviour has a receiver")
    }

    /// Waits for the receivers to finish after their `stop` token was cancelled.
    pub(crate) async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One listener per behaviour on 127.0.100.1, .2, ...; `None` where the system has only
/// 127.0.0.1 (macOS, for one).
async fn bind_dedicated() -> Option<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for (i, _) in Behaviour::ALL.iter().enumerate() {
        let ip = Ipv4Addr::from(u32::from(DEDICATED) + i as u32);
        listeners.push(TcpListener::bind((ip, 0)).await.ok()?);
    }
    Some(listeners)
}

struct ReceiverState {
    behaviour: Behaviour,
    secret: SigningSecret,
    tally: Arc<Tally>,
    /// Attempts seen per `webhook-id` (the callback id, the same on every attempt), for the
    /// flaky receiver; removed once it answers 200.
    seen: Mutex<HashMap<String, u32>>,
}

/// How long Standard Webhooks receivers accept a timestamp either side of their clock.
const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

async fn answer(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header("webhook-signature"),
    ) else {
        state.tally.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::UNAUTHORIZED, "unsigned request").into_response();
    };
    let now = chrono::Utc::now().timestamp();
    if !signing::verify(
        &state.secret,
        id,
        timestamp,
        &body,
        signature,
        now,
        TIMESTAMP_TOLERANCE_SECS,
    ) {
        state.tally.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::UNAUTHORIZED, "signature does not verify").into_response();
    }
    // Decisions follow from the callback id, which is random, so each callback keeps its
    // fate across attempts and the mix is steady.
    let dice = roll(id);
    let response = match state.behaviour {
        Behaviour::Healthy => {
            let ms = if dice.is_multiple_of(20) {
                150 + dice % 450
            } else {
                5 + dice % 40
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                r#"{"received":true}"#,
            )
                .into_response()
        }
        Behaviour::Flaky => {
            tokio::time::sleep(Duration::from_millis(20 + dice % 60)).await;
            let attempt = {
                let mut seen = state.seen.lock().expect("not poisoned");
                let n = seen.entry(id.to_owned()).or_insert(0);
                *n += 1;
                *n
            };
            match (dice % 20, attempt) {
                (0..=4, 1) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    "billing is busy; try again in a second",
                )
                    .into_response(),
                (5..=6, 1..=2) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "billing database timed out",
                )
                    .into_response(),
                _ => {
                    state.seen.lock().expect("not poisoned").remove(id);
                    (StatusCode::OK, "invoice recorded").into_response()
                }
            }
        }
        Behaviour::Gone => (
            StatusCode::GONE,
            "this endpoint was retired; stop sending here",
        )
            .into_response(),
        Behaviour::Down => {
            tokio::time::sleep(Duration::from_millis(5 + dice % 25)).await;
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "inventory service down for maintenance",
            )
                .into_response()
        }
    };
    let tally = if response.status().is_success() {
        &state.tally.ok
    } else {
        &state.tally.errors
    };
    tally.fetch_add(1, Ordering::Relaxed);
    response
}

/// A stable pseudo-random number for a callback id.
fn roll(id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}
