//! What one delivered callback costs the deliverer in CPU time and heap allocations: the work a
//! Lambda invocation bills for, apart from waiting on the receiver and on AWS.
//!
//! ```text
//! eval "$(bash scripts/moto.sh start)"
//! AWS_ENDPOINT_URL=$FLUXCB_TEST_AWS_ENDPOINT cargo run --release -p fluxcb-aws \
//!     --example deliverer_cost -- 2000
//! bash scripts/moto.sh stop
//! ```
//!
//! The deliverer runs on a single-threaded runtime on its own thread, and only that thread's CPU
//! time and allocations are counted: the receiver (another thread) and moto (another process)
//! are excluded. It handles the callbacks in batches of 10, as the SQS trigger hands them over:
//! claim (a read and a conditional update), one HTTP attempt, the attempt record (a read and a
//! transaction), all through the real AWS SDK. Prints the figures; asserts nothing.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fluxcb_aws::deliverer::{Deliverer, Record};
use fluxcb_aws::queue::SqsQueue;
use fluxcb_aws::store::{DynamoStore, StoreRetention};
use fluxcb_aws::AwsClients;
use fluxcb_core::callback::{Callback, CallbackDefaults, NewCallback};
use fluxcb_core::id::CallbackId;
use fluxcb_core::message::QueueMessage;
use fluxcb_core::ports::{CallbackStore, IngestBatch, SystemClock};
use fluxcb_core::retry::RetryPolicy;
use fluxcb_core::target::TargetPolicy;
use fluxcb_core::tenant::TenantId;
use fluxcb_delivery::destinations::{DestinationLimits, Destinations};
use fluxcb_delivery::secrets::SecretCache;
use fluxcb_delivery::sender::{HttpSender, SenderConfig};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MEASURED: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURED.with(|m| m.get()) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A receiver answering 200 at once, on its own thread and runtime.
fn start_receiver() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {
                                let _ = stream
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                    .await;
                            }
                        }
                    }
                });
            }
        });
    });
    rx.recv().unwrap()
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        eprintln!("set AWS_ENDPOINT_URL (a moto server: scripts/moto.sh start)");
        std::process::exit(2);
    }
    let receiver = start_receiver();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(count, receiver));
}

async fn run(count: usize, receiver: SocketAddr) {
    let clients = AwsClients::from_env().await;
    let prefix = format!("bench{}", std::process::id());
    let resources = fluxcb_aws::bootstrap::bootstrap(&clients, &prefix)
        .await
        .expect("bootstrap");
    let store = Arc::new(DynamoStore::new(
        clients.dynamodb.clone(),
        resources.table.clone(),
        StoreRetention::default(),
    ));
    let url = format!("http://{receiver}/hook");
    let mut ids = Vec::with_capacity(count);
    let callbacks: Vec<Callback> = (0..count)
        .map(|i| {
            let spec = NewCallback {
                url: url.clone(),
                payload: Some(serde_json::json!({"order": i, "status": "paid", "amount": 1234})),
                ..NewCallback::default()
            }
            .validate(Utc::now())
            .unwrap();
            let cb = Callback::accept(
                CallbackId::generate(),
                TenantId::default_tenant(),
                spec,
                &CallbackDefaults {
                    max_attempts: 3,
                    timeout_ms: 5_000,
                },
                "bench".into(),
                Utc::now(),
            );
            ids.push(cb.id);
            cb
        })
        .collect();
    for chunk in callbacks.chunks(90) {
        store
            .ingest(IngestBatch {
                tenant: TenantId::default_tenant(),
                callbacks: chunk.to_vec(),
                idempotency: None,
            })
            .await
            .expect("ingest");
    }
    let deliverer = Deliverer {
        store: store.clone(),
        queue: SqsQueue::new(
            clients.sqs.clone(),
            resources.queue_url.clone(),
            resources.dlq_url.clone(),
        ),
        sender: Arc::new(
            HttpSender::new(SenderConfig::new(TargetPolicy::with_allowed(vec![
                "127.0.0.0/8".parse().unwrap(),
            ])))
            .unwrap(),
        ),
        secrets: Arc::new(SecretCache::new(store.clone(), Duration::from_secs(300))),
        legacy_secret: None,
        policy: RetryPolicy::default(),
        clock: Arc::new(SystemClock),
        destinations: Arc::new(Destinations::new(DestinationLimits::default())),
        routes: None,
        lease: Duration::from_secs(90),
        follow_ups: std::sync::Arc::new(fluxcb_core::notify::FollowUpSettings {
            ops: None,
            defaults: fluxcb_core::callback::CallbackDefaults {
                max_attempts: 5,
                timeout_ms: 10_000,
            },
        }),
        ops_events: None,
    };
    let records: Vec<Record> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Record {
            message_id: i.to_string(),
            body: QueueMessage::deliver_for(*id, TenantId::default_tenant()).encode(),
        })
        .collect();
    // Warm-up outside the measurement: connections, the signing secret cache.
    let (warm, measured) = records.split_at(10.min(records.len()));
    deliverer.handle_batch(warm).await;

    MEASURED.with(|m| m.set(true));
    let cpu0 = thread_cpu();
    let wall0 = Instant::now();
    let mut failed = 0;
    for batch in measured.chunks(10) {
        failed += deliverer.handle_batch(batch).await.len();
    }
    let wall = wall0.elapsed();
    let cpu = thread_cpu() - cpu0;
    MEASURED.with(|m| m.set(false));
    let n = measured.len().max(1) as f64;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) as f64;
    let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed) as f64;
    println!(
        "deliverer cost over {} callbacks (batches of 10, moto on loopback)",
        measured.len()
    );
    println!("  failed records:              {failed}");
    println!(
        "  CPU per delivered callback:  {:.3} ms (deliverer thread only)",
        cpu.as_secs_f64() * 1000.0 / n
    );
    println!(
        "  wall per delivered callback: {:.3} ms (includes waiting on moto and the receiver)",
        wall.as_secs_f64() * 1000.0 / n
    );
    println!(
        "  allocations per callback:    {:.0} ({:.1} KiB)",
        allocs / n,
        bytes / n / 1024.0
    );
    println!(
        "json: {{\"callbacks\":{},\"cpu_ms_per_callback\":{:.4},\"wall_ms_per_callback\":{:.4},\"allocations_per_callback\":{:.1},\"allocated_kib_per_callback\":{:.2}}}",
        measured.len(),
        cpu.as_secs_f64() * 1000.0 / n,
        wall.as_secs_f64() * 1000.0 / n,
        allocs / n,
        bytes / n / 1024.0
    );
}
