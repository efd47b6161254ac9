//! The circuit breaker's events for the operational event stream: `destination.circuit_opened`
//! and `destination.recovered`, debounced per destination on this node.
//!
//! The breaker is each node's own (each Lambda instance, each server), so these events are
//! per-node hints, not a cluster-wide truth: `/v1/destinations/health` stays the live view.
//! A recovery is held until the destination has stayed healthy for the quiet period; a
//! re-opening inside it cancels the recovery and sends nothing (the outage never ended), so a
//! flapping destination costs at most one opened/recovered pair per quiet period.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fluxcb_core::callback::{Callback, CallbackDefaults};
use fluxcb_core::metric_names as names;
use fluxcb_core::notify::{operational_event, rfc3339, EventType, OpsStream, SYSTEM_TENANT};
use fluxcb_core::ports::{CallbackStore, IngestBatch};
use fluxcb_core::tenant::TenantId;
use serde_json::json;

use crate::destinations::BreakerChange;

/// Destinations followed at once; past it new outages are not reported (and counted).
const MAX_EPISODES: usize = 10_000;
/// Events emitted per minute at most; the excess is dropped (and counted).
const MAX_PER_MINUTE: u32 = 60;

struct Episode {
    open_since: DateTime<Utc>,
    openings: u32,
    /// Healthy again since then; the recovery is sent once this is `quiet` old.
    healthy_since: Option<Instant>,
}

struct State {
    episodes: HashMap<String, Episode>,
    ready: Vec<Callback>,
    minute_started: Instant,
    sent_this_minute: u32,
}

pub struct OpsEvents {
    stream: OpsStream,
    quiet: Duration,
    defaults: CallbackDefaults,
    /// Which node saw it: host name and process id, or the Lambda log stream.
    node: String,
    state: Mutex<State>,
}

impl OpsEvents {
    pub fn new(
        stream: OpsStream,
        quiet: Duration,
        defaults: CallbackDefaults,
        node: String,
    ) -> Self {
        Self {
            stream,
            quiet,
            defaults,
            node,
            state: Mutex::new(State {
                episodes: HashMap::new(),
                ready: Vec::new(),
                minute_started: Instant::now(),
                sent_this_minute: 0,
            }),
        }
    }

    /// Learns of a breaker change on `key` from an attempt of a callback of `tenant`. The
    /// stream's own callbacks are never reported: a down receiver must not report on itself.
    pub fn observe(
        &self,
        key: &str,
        tenant: &TenantId,
        change: Option<BreakerChange>,
        now: Instant,
        at: DateTime<Utc>,
    ) {
        let Some(change) = change else {
            return;
        };
        if tenant.as_str() == SYSTEM_TENANT {
            return;
        }
        let mut st = self.state.lock().expect("ops events poisoned");
        match change {
            BreakerChange::Opened {
                consecutive_failures,
                open_for,
            } => {
                if let Some(episode) = st.episodes.get_mut(key) {
                    // Open again within the quiet period: the outage goes on, say nothing.
                    episode.healthy_since = None;
                    episode.openings += 1;
                    return;
                }
                if st.episodes.len() >= MAX_EPISODES {
                    metrics::counter!(names::OPS_EVENTS_DROPPED).increment(1);
                    return;
                }
                st.episodes.insert(
                    key.to_owned(),
                    Episode {
                        open_since: at,
                        openings: 1,
                        healthy_since: None,
                    },
                );
                if self.stream.carries(EventType::DestinationCircuitOpened) {
                    let data = json!({
                        "destination": key,
                        "node": self.node,
                        "consecutive_failures": consecutive_failures,
                        "open_for_ms": open_for.as_millis() as u64,
                    });
                    self.emit(&mut st, EventType::DestinationCircuitOpened, data, now, at);
                }
            }
            BreakerChange::Closed { .. } => {
                if let Some(episode) = st.episodes.get_mut(key) {
                    episode.healthy_since.get_or_insert(now);
                }
            }
        }
    }

    /// The events ready to be written (as `_system` callbacks): those emitted since the last
    /// call, and the recoveries whose quiet period has passed.
    pub fn take_ready(&self, now: Instant, at: DateTime<Utc>) -> Vec<Callback> {
        let mut st = self.state.lock().expect("ops events poisoned");
        let recovered: Vec<String> = st
            .episodes
            .iter()
            .filter(|(_, e)| e.healthy_since.is_some_and(|h| now - h >= self.quiet))
            .map(|(k, _)| k.clone())
            .collect();
        for key in recovered {
            let episode = st.episodes.remove(&key).expect("listed above");
            if self.stream.carries(EventType::DestinationRecovered) {
                let data = json!({
                    "destination": key,
                    "node": self.node,
                    "open_since": rfc3339(episode.open_since),
                    "openings": episode.openings,
                });
                self.emit(&mut st, EventType::DestinationRecovered, data, now, at);
            }
        }
        std::mem::take(&mut st.ready)
    }

    /// Whether anything is waiting on the quiet period (the caller keeps ticking while so).
    pub fn has_pending(&self) -> bool {
        let st = self.state.lock().expect("ops events poisoned");
        !st.ready.is_empty() || st.episodes.values().any(|e| e.healthy_since.is_some())
    }

    fn emit(
        &self,
        st: &mut State,
        event: EventType,
        data: serde_json::Value,
        now: Instant,
        at: DateTime<Utc>,
    ) {
        if now - st.minute_started >= Duration::from_secs(60) {
            st.minute_started = now;
            st.sent_this_minute = 0;
        }
        if st.sent_this_minute >= MAX_PER_MINUTE {
            metrics::counter!(names::OPS_EVENTS_DROPPED).increment(1);
            return;
        }
        st.sent_this_minute += 1;
        st.ready.push(operational_event(
            &self.stream,
            event,
            data,
            &self.defaults,
            at,
        ));
    }
}

/// Writes ready events as `_system` callbacks. Returns them, for a queue-backed deployment to
/// announce; on failure they are logged and dropped (these events are hints, see above).
pub async fn write_ready(
    events: &OpsEvents,
    store: &dyn CallbackStore,
    now: Instant,
    at: DateTime<Utc>,
) -> Vec<Callback> {
    let rows = events.take_ready(now, at);
    if rows.is_empty() {
        return rows;
    }
    let batch = IngestBatch {
        tenant: fluxcb_core::notify::system_tenant(),
        callbacks: rows.clone(),
        idempotency: None,
    };
    match store.ingest(batch).await {
        Ok(_) => rows,
        Err(e) => {
            tracing::warn!(error = %e, events = rows.len(), "could not write operational events; dropped");
            metrics::counter!(names::OPS_EVENTS_DROPPED).increment(rows.len() as u64);
            Vec::new()
        }
    }
}

/// This node's name in events: `FLUXCB_NODE_NAME`, the Lambda log stream, or host and pid.
pub fn node_name() -> String {
    if let Ok(name) = std::env::var("FLUXCB_NODE_NAME") {
        return name;
    }
    if let Ok(stream) = std::env::var("AWS_LAMBDA_LOG_STREAM_NAME") {
        return stream;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    fn events(quiet: Duration) -> OpsEvents {
        OpsEvents::new(
            OpsStream {
                url: Url::parse("https://ops.test/events").unwrap(),
                types: EventType::OPERATIONAL.to_vec(),
            },
            quiet,
            CallbackDefaults {
                max_attempts: 5,
                timeout_ms: 10_000,
            },
            "node-1".into(),
        )
    }

    fn opened() -> Option<BreakerChange> {
        Some(BreakerChange::Opened {
            consecutive_failures: 2,
            open_for: Duration::from_secs(10),
        })
    }

    fn closed() -> Option<BreakerChange> {
        Some(BreakerChange::Closed { openings: 1 })
    }

    fn types(rows: &[Callback]) -> Vec<String> {
        rows.iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(r.spec.payload.bytes()).unwrap();
                v["type"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn an_outage_is_one_opened_and_one_recovered_after_the_quiet_period() {
        let ev = events(Duration::from_secs(5));
        let acme = TenantId::parse("acme").unwrap();
        let t0 = Instant::now();
        ev.observe("https://a.test:443", &acme, opened(), t0, Utc::now());
        let first = ev.take_ready(t0, Utc::now());
        assert_eq!(types(&first), ["destination.circuit_opened"]);
        assert_eq!(first[0].tenant.as_str(), SYSTEM_TENANT);
        ev.observe("https://a.test:443", &acme, closed(), t0, Utc::now());
        assert!(ev
            .take_ready(t0 + Duration::from_secs(4), Utc::now())
            .is_empty());
        assert!(ev.has_pending());
        let later = ev.take_ready(t0 + Duration::from_secs(5), Utc::now());
        assert_eq!(types(&later), ["destination.recovered"]);
        let v: serde_json::Value = serde_json::from_slice(later[0].spec.payload.bytes()).unwrap();
        assert_eq!(v["data"]["destination"], "https://a.test:443");
        assert_eq!(v["data"]["node"], "node-1");
        assert!(!ev.has_pending());
    }

    #[test]
    fn flapping_inside_the_quiet_period_is_one_pair() {
        let ev = events(Duration::from_secs(5));
        let acme = TenantId::parse("acme").unwrap();
        let t0 = Instant::now();
        let mut all = Vec::new();
        for i in 0..30 {
            let t = t0 + Duration::from_millis(100 * i);
            ev.observe("k", &acme, opened(), t, Utc::now());
            ev.observe("k", &acme, closed(), t, Utc::now());
            all.extend(ev.take_ready(t, Utc::now()));
        }
        all.extend(ev.take_ready(t0 + Duration::from_secs(60), Utc::now()));
        assert_eq!(
            types(&all),
            ["destination.circuit_opened", "destination.recovered"]
        );
    }

    #[test]
    fn the_streams_own_callbacks_report_nothing() {
        let ev = events(Duration::from_secs(1));
        let system = TenantId::parse(SYSTEM_TENANT).unwrap();
        let t0 = Instant::now();
        ev.observe("k", &system, opened(), t0, Utc::now());
        assert!(ev.take_ready(t0, Utc::now()).is_empty());
        assert!(!ev.has_pending());
    }

    #[test]
    fn output_is_capped_per_minute() {
        let ev = events(Duration::from_secs(1));
        let acme = TenantId::parse("acme").unwrap();
        let t0 = Instant::now();
        for i in 0..100 {
            ev.observe(&format!("k{i}"), &acme, opened(), t0, Utc::now());
        }
        assert_eq!(ev.take_ready(t0, Utc::now()).len(), MAX_PER_MINUTE as usize);
    }
}
