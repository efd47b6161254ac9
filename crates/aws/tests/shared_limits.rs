//! A registration's own rate and concurrency limits on DynamoDB (moto) hold across workers:
//! two deliverers, each with its own per-instance state, on one table never put more than the
//! limit in flight nor send faster than the rate, and nothing held back counts as an attempt.
//!
//! The deliverers send through a probe [`Sender`] that records when each request starts and
//! how many overlap (the limiter is what is under test, not HTTP; the API-level cases cover the
//! wire).
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use fluxcb_aws::deliverer::{Deliverer, Handled, Record};
use fluxcb_aws::queue::SqsQueue;
use fluxcb_aws::store::{Admission, DynamoStore, StoreRetention};
use fluxcb_core::attempt::SendOutcome;
use fluxcb_core::callback::Callback;
use fluxcb_core::destination::{DestinationMatch, RegisteredDestination};
use fluxcb_core::directory::DestinationDirectory;
use fluxcb_core::message::QueueMessage;
use fluxcb_core::ports::{CallbackStore, DestinationStore, OutboundRequest, Sender, SystemClock};
use fluxcb_core::retry::RetryPolicy;
use fluxcb_core::tenant::Scope;
use fluxcb_delivery::destinations::{DestinationLimits, Destinations};
use fluxcb_delivery::routes::{DestinationRoutes, RegisteredLimits};
use fluxcb_delivery::secrets::SecretCache;
use fluxcb_delivery::sender::SenderConfig;
use support::{ingest, legacy_callback, same_table, store_and_queue, tenant};

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn rate_slots_are_spaced_for_every_worker_and_later_ones_get_turns() {
    let Some((first, _)) = store_and_queue().await else {
        return;
    };
    let second = same_table(&first, StoreRetention::default());
    let limits = RegisteredLimits {
        rate_per_second: Some(10.0),
        max_in_flight: None,
    };
    // The table keeps microseconds.
    let now = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let lease = now + chrono::Duration::seconds(60);
    let mut waits = Vec::new();
    let mut turns = Vec::new();
    for i in 0..8 {
        let worker = if i % 2 == 0 { &first } else { &second };
        match worker
            .admit("t dest", limits, &format!("cb{i}"), lease, now)
            .await
            .unwrap()
        {
            Admission::Go { wait, slot } => {
                assert!(slot.is_none(), "no concurrency limit, no slot");
                waits.push(ms(wait));
            }
            Admission::Later(at) => turns.push((at - now).num_milliseconds()),
        }
    }
    // One slot per 100 ms, taken up to the 500 ms horizon; the rest come back one interval
    // apart, not all at once.
    assert_eq!(waits, vec![0, 100, 200, 300, 400, 500]);
    assert_eq!(turns, vec![100, 200]);
    // Another destination is not affected.
    match first
        .admit("t other", limits, "cb9", lease, now)
        .await
        .unwrap()
    {
        Admission::Go { wait, .. } => assert_eq!(wait, Duration::ZERO),
        other => panic!("another destination waited: {other:?}"),
    }
}

#[tokio::test]
async fn concurrency_slots_are_shared_released_and_freed_at_their_lease_end() {
    let Some((first, _)) = store_and_queue().await else {
        return;
    };
    let second = same_table(&first, StoreRetention::default());
    let limits = RegisteredLimits {
        rate_per_second: None,
        max_in_flight: Some(2),
    };
    let now = Utc::now();
    let lease = now + chrono::Duration::seconds(60);
    let go = |a: Admission| match a {
        Admission::Go { wait, slot } => {
            assert_eq!(wait, Duration::ZERO);
            slot.expect("a slot is held")
        }
        Admission::Later(at) => panic!("turned away until {at}"),
    };
    let a = go(first.admit("t d", limits, "a", lease, now).await.unwrap());
    let _b = go(second.admit("t d", limits, "b", lease, now).await.unwrap());
    let later = first.admit("t d", limits, "c", lease, now).await.unwrap();
    assert!(
        matches!(later, Admission::Later(at) if at > now),
        "a third holder waits: {later:?}"
    );
    second.release_slot(a).await;
    let _c = go(second.admit("t d", limits, "c", lease, now).await.unwrap());
    assert!(matches!(
        first.admit("t d", limits, "d", lease, now).await.unwrap(),
        Admission::Later(_)
    ));
    // A worker that died holding a slot frees it when its claim's lease ends.
    let after_leases = lease + chrono::Duration::seconds(1);
    let _d = go(first
        .admit(
            "t d",
            limits,
            "d",
            after_leases + chrono::Duration::seconds(60),
            after_leases,
        )
        .await
        .unwrap());

    // With a rate too: a slot taken for an attempt the rate turns away is given back.
    let both = RegisteredLimits {
        rate_per_second: Some(1.0),
        max_in_flight: Some(1),
    };
    let x = go(first.admit("t e", both, "x", lease, now).await.unwrap());
    second.release_slot(x).await;
    assert!(matches!(
        first.admit("t e", both, "y", lease, now).await.unwrap(),
        Admission::Later(_)
    ));
    let z = first.admit("t e", both, "z", lease, now + chrono::Duration::seconds(2));
    assert!(
        matches!(z.await.unwrap(), Admission::Go { .. }),
        "y's slot was given back when its rate said later"
    );
}

/// Records every request's start and how many were on the wire at once.
#[derive(Default)]
struct Probe {
    starts: Mutex<Vec<Instant>>,
    in_flight: Mutex<(usize, usize)>,
}

#[async_trait]
impl Sender for Probe {
    async fn send(&self, _request: OutboundRequest) -> SendOutcome {
        self.starts.lock().unwrap().push(Instant::now());
        {
            let mut f = self.in_flight.lock().unwrap();
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        self.in_flight.lock().unwrap().0 -= 1;
        SendOutcome {
            status_code: Some(200),
            error: None,
            headers: Default::default(),
            body_excerpt: Vec::new(),
            duration: Duration::from_millis(120),
        }
    }
}

fn worker(store: &Arc<DynamoStore>, queue: &SqsQueue, probe: &Arc<Probe>) -> Deliverer {
    let limits = DestinationLimits::default();
    Deliverer {
        store: store.clone(),
        queue: queue.clone(),
        sender: probe.clone(),
        secrets: Arc::new(SecretCache::new(store.clone(), Duration::from_secs(5))),
        legacy_secret: None,
        policy: RetryPolicy::default(),
        clock: Arc::new(SystemClock),
        destinations: Arc::new(Destinations::new(limits.clone())),
        routes: Some(Arc::new(DestinationRoutes::new(
            Arc::new(DestinationDirectory::new(
                store.clone(),
                Duration::from_secs(5),
            )),
            limits,
            3,
            RetryPolicy::default(),
            SenderConfig::default(),
        ))),
        lease: Duration::from_secs(60),
        follow_ups: Arc::new(fluxcb_core::notify::FollowUpSettings {
            ops: None,
            defaults: fluxcb_core::callback::CallbackDefaults {
                max_attempts: 3,
                timeout_ms: 2_000,
            },
        }),
        ops_events: None,
    }
}

/// Two workers hand every callback back and forth until all are delivered; returns the probe.
async fn deliver_with_two_workers(
    settings: fluxcb_core::destination::DestinationSettings,
    count: i64,
) -> Option<Arc<Probe>> {
    let (store, queue) = store_and_queue().await?;
    let store = Arc::new(store);
    let (mut registration, _) = RegisteredDestination::new(
        tenant("limited"),
        DestinationMatch::Origin("https://example.com:443".into()),
        Utc::now(),
    );
    registration.settings = settings;
    store.create_destination(&registration).await.unwrap();
    let callbacks: Vec<Callback> = (1..=count)
        .map(|i| legacy_callback("limited", i, None))
        .collect();
    ingest(&store, callbacks.clone()).await.unwrap();
    let probe = Arc::new(Probe::default());
    let workers = [
        worker(&store, &queue, &probe),
        worker(&store, &queue, &probe),
    ];
    let record = |cb: &Callback| Record {
        message_id: cb.id.to_string(),
        body: QueueMessage::deliver_for(cb.id, cb.tenant.clone()).encode(),
    };
    // Half the callbacks go to each worker, which offers each again when it is due after a
    // deferral (as its delayed queue message would), until it makes its attempt.
    let deadline = Instant::now() + Duration::from_secs(30);
    let offers = callbacks.iter().enumerate().map(|(i, cb)| {
        let (store, worker, r) = (&store, &workers[i % 2], record(cb));
        async move {
            loop {
                assert!(Instant::now() < deadline, "{} not delivered", cb.id);
                match worker.handle(&r).await.unwrap() {
                    Handled::Attempted => return,
                    Handled::Deferred => {
                        let now = store.get(&Scope::All, &cb.id).await.unwrap().unwrap();
                        let due = now.callback.next_attempt_at.expect("deferred to a time");
                        let wait = (due - Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(wait + Duration::from_millis(2)).await;
                    }
                    Handled::Stale => tokio::time::sleep(Duration::from_millis(20)).await,
                    Handled::Poison(reason) => panic!("poison: {reason}"),
                }
            }
        }
    });
    futures_util::future::join_all(offers).await;
    for cb in &callbacks {
        let now = store.get(&Scope::All, &cb.id).await.unwrap().unwrap();
        assert_eq!(
            now.attempts.len(),
            1,
            "held back is not an attempt: {:?}",
            now.attempts
        );
    }
    Some(probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_keep_one_request_in_flight_to_a_destination_limited_to_one() {
    let settings = fluxcb_core::destination::DestinationSettings {
        max_in_flight: Some(1),
        ..Default::default()
    };
    let Some(probe) = deliver_with_two_workers(settings, 6).await else {
        return;
    };
    let (_, most) = *probe.in_flight.lock().unwrap();
    assert_eq!(most, 1, "requests on the wire at once across two workers");
    assert_eq!(probe.starts.lock().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_together_keep_to_a_destination_rate() {
    let settings = fluxcb_core::destination::DestinationSettings {
        rate_limit_per_second: Some(2.0),
        ..Default::default()
    };
    let Some(probe) = deliver_with_two_workers(settings, 8).await else {
        return;
    };
    let starts = probe.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 8);
    let gaps: Vec<u128> = starts.windows(2).map(|w| ms(w[1] - w[0])).collect();
    // 2/s: slots 500 ms apart. A request starts at its slot or, when the table's answer came
    // after it, at the answer (moto under load answers up to ~0.5 s late), so two may start
    // close together; over any stretch the rate holds to within two slots. Per worker, each
    // worker would keep to 2/s alone: requests in pairs, 4/s in all (~1.8 s for eight against
    // at least 2.5 s).
    for i in 0..starts.len() {
        for j in i + 1..starts.len() {
            let allowed = (j - i).saturating_sub(2) as u128 * 500;
            assert!(
                ms(starts[j] - starts[i]) >= allowed,
                "requests {i}..={j} within {} ms, less than the rate allows ({allowed} ms); gaps {gaps:?} ms",
                ms(starts[j] - starts[i])
            );
        }
    }
    eprintln!("rate 2/s across two workers: gaps {gaps:?} ms");
}
