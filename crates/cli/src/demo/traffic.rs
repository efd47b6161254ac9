//! The demo's sample traffic: callbacks created through the real HTTP API, as a caller would,
//! at a steady rate, spread over the receivers in a fixed mix.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::receiver::{Behaviour, Receivers};

/// Which receiver the n-th callback goes to, repeating: 13 in 20 to the healthy one, 5 to the
/// flaky one, 1 each to the two that dead-letter. The first few cover every behaviour, so
/// the first dead letter shows up within seconds of the start.
const MIX: [Behaviour; 20] = {
    use Behaviour::{Down, Flaky, Gone, Healthy};
    [
        Healthy, Flaky, Gone, Healthy, Healthy, Down, Healthy, Flaky, Healthy, Healthy, //
        Healthy, Flaky, Healthy, Healthy, Healthy, Flaky, Healthy, Healthy, Flaky, Healthy,
    ]
};

/// Requests to the API in flight at once; beyond that the sender waits (and falls behind
/// the rate rather than piling up requests).
const MAX_IN_FLIGHT: usize = 32;

/// How much to send.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) per_second: u32,
    pub(crate) duration: Option<Duration>,
    pub(crate) count: Option<u64>,
}

/// The API as the demo's caller sees it.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(base: String, key: String) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            // Only loopback is talked to; a proxy from the environment must not get in between.
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { base, key, http })
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("GET {path}: {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }
}

/// What the sender has done so far.
#[derive(Default)]
pub(crate) struct Sent {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
}

/// The receiver URL of each slot of the mix.
pub(crate) fn urls(receivers: &Receivers) -> Vec<String> {
    MIX.iter().map(|b| receivers.get(*b).url()).collect()
}

/// Sends callbacks until the plan is done or `stop` is cancelled; returns when the last
/// request has been answered.
pub(crate) async fn send(
    api: Api,
    urls: Vec<String>,
    plan: Plan,
    sent: Arc<Sent>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / plan.per_second.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut n: u64 = 0;
    loop {
        if plan.count.is_some_and(|max| n >= max)
            || plan.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => match slots.clone().acquire_owned().await {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let index = (n % MIX.len() as u64) as usize;
        let body = sample(MIX[index], n, &urls[index]);
        let (api, sent) = (api.clone(), sent.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let answer = api
                .http
                .post(format!("{}/v1/callbacks", api.base))
                .bearer_auth(&api.key)
                .json(&body)
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                    sent.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => {
                    // Only the first refusal is shown: the rest would say the same.
                    if sent.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        eprintln!("demo: the API refused a sample callback ({status}): {text}");
                    }
                }
                Err(e) => {
                    if sent.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("demo: cannot reach the API: {e}");
                    }
                }
            }
        });
        n += 1;
    }
    // Every request answered before returning, so the count is final.
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// The n-th sample callback for a receiver: a Standard Webhooks style event, tagged so the
/// console can filter by receiver.
fn sample(behaviour: Behaviour, n: u64, url: &str) -> Value {
    let number = 1000 + n;
    let (kind, data) = match behaviour {
        Behaviour::Healthy => (
            "order.created",
            json!({"order_id": format!("ord_{number}"), "total_cents": 1999 + (n * 731) % 20_000, "currency": "EUR"}),
        ),
        Behaviour::Flaky => (
            "invoice.paid",
            json!({"invoice_id": format!("inv_{number}"), "amount_cents": 4900 + (n * 397) % 9_000}),
        ),
        Behaviour::Gone => (
            "contact.updated",
            json!({"contact_id": format!("ct_{number}"), "email": format!("customer{number}@example.com")}),
        ),
        Behaviour::Down => (
            "stock.reserved",
            json!({"sku": format!("SKU-{}", 100 + n % 50), "quantity": 1 + n % 4}),
        ),
    };
    json!({
        "url": url,
        "payload": {
            "type": kind,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": data,
        },
        "metadata": {"source": "demo", "receiver": behaviour.name()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_starts_with_every_behaviour_and_keeps_its_shares() {
        for b in Behaviour::ALL {
            assert!(MIX[..6].contains(&b), "{b:?} within the first six");
        }
        let count = |b| MIX.iter().filter(|m| **m == b).count();
        assert_eq!(count(Behaviour::Healthy), 13);
        assert_eq!(count(Behaviour::Flaky), 5);
        assert_eq!(count(Behaviour::Gone), 1);
        assert_eq!(count(Behaviour::Down), 1);
    }
}
