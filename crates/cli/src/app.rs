//! The composition root of `fluxcb serve`: opens the store, makes sure an admin key and a
//! signing secret exist, and runs the HTTP API, the dispatcher and maintenance until shutdown.
//! Tests build it on port 0 with a temporary data directory.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fluxcb_core::auth::{PlainKey, Role};
use fluxcb_core::directory::DestinationDirectory;
use fluxcb_core::ports::{
    CallbackStore, Clock, Due, KeyStore, LegacyTable, NewApiKey, Queue, SecretStore, SendNow,
    Sender, StoreError, SystemClock,
};
use fluxcb_core::target::TargetPolicy;
use fluxcb_core::tenant::TenantId;
use fluxcb_delivery::destinations::{DestinationLimits, Destinations};
use fluxcb_delivery::dispatcher::{DeliveryParts, Dispatcher, DispatcherConfig};
use fluxcb_delivery::maintenance::{self, Retention};
use fluxcb_delivery::routes::DestinationRoutes;
use fluxcb_delivery::secrets::SecretCache;
use fluxcb_delivery::send_now::ImmediateDelivery;
use fluxcb_delivery::sender::{HttpSender, SenderConfig};
use fluxcb_delivery::wake::DispatcherWake;
use fluxcb_http::legacy_api::{LegacyUpstream, MigrationControl};
use fluxcb_http::{ApiLimits, AppParts, AppState};
use fluxcb_store_sqlite::{DataDirLock, SqliteStore};
use tokio::net::TcpListener;

use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Settings};

const CONFIGURED_ADMIN: &str = "configured-admin";

/// The process-wide Prometheus registry, installed on first use (the `metrics` facade has one
/// global recorder; several `App`s in one test process share it).
pub(crate) fn prometheus() -> fluxcb_http::MetricsRender {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
            for name in [
                fluxcb_core::metric_names::ATTEMPT_DURATION,
                fluxcb_core::metric_names::ACCEPTED_TO_DELIVERED,
            ] {
                builder = builder
                    .set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(name.to_owned()),
                        fluxcb_core::metric_names::LATENCY_BUCKETS,
                    )
                    .expect("the bucket list is not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone();
    Arc::new(move || handle.render())
}

/// A scrape also samples the destinations' breaker states and loads (per process).
pub(crate) fn with_destinations(
    render: fluxcb_http::MetricsRender,
    destinations: Arc<Destinations>,
) -> fluxcb_http::MetricsRender {
    Arc::new(move || {
        destinations.publish_metrics(std::time::Instant::now());
        render()
    })
}

/// The console's live view of the delivery engine's destinations in this process.
pub(crate) struct EngineHealth(pub Arc<Destinations>);

#[async_trait::async_trait]
impl fluxcb_http::console::DestinationHealthSource for EngineHealth {
    async fn loads(&self) -> Result<Vec<fluxcb_http::console::DestinationLoad>, StoreError> {
        Ok(self
            .0
            .health(std::time::Instant::now())
            .into_iter()
            .map(|d| fluxcb_http::console::DestinationLoad {
                destination: d.destination,
                in_flight: d.in_flight,
                consecutive_failures: d.consecutive_failures,
                circuit_open: d.circuit_open,
            })
            .collect())
    }
}

fn destination_health(
    destinations: Arc<Destinations>,
) -> fluxcb_http::console::DestinationHealthFn {
    Arc::new(EngineHealth(destinations))
}

/// The embedded store is its own queue: a notification only wakes the dispatcher early.
struct WakeDispatcher(Arc<DispatcherWake>);

#[async_trait::async_trait]
impl Queue for WakeDispatcher {
    async fn notify(&self, due: &[Due]) -> Result<(), StoreError> {
        // No ids: something made work due now that the caller cannot name (a released key).
        if due.is_empty() {
            self.0.now();
        } else {
            self.0.work_due(due.iter().map(|d| d.at));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] fluxcb_store_sqlite::OpenError),
    #[error("store: {0}")]
    StoreOp(#[from] fluxcb_core::ports::StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Sender(String),
    #[error("cannot reach the legacy database: {0}")]
    LegacyDb(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct App {
    listener: TcpListener,
    state: AppState,
    engine: Engine,
    /// Set when this start generated the admin key: shown once, never stored in clear.
    pub generated_admin_key: Option<String>,
}

/// What runs beside the API: the embedded dispatcher and maintenance, or the AWS backend's
/// SQS poller and sweeper.
enum Engine {
    Local(LocalEngine),
    #[cfg(feature = "aws")]
    Aws(crate::aws_backend::AwsEngine),
}

struct LocalEngine {
    dispatcher: Dispatcher,
    store: SqliteStore,
    clock: Arc<dyn Clock>,
    retention: Retention,
    /// Held until the server stops: one server per data directory.
    lock: DataDirLock,
}

/// What the legacy caller API needs beyond the stores: the legacy table while the legacy
/// database is configured, and the synchronous sender behind its `send` action.
#[derive(Default)]
pub struct LegacyParts {
    pub table: Option<Arc<dyn LegacyTable>>,
    pub send_now: Option<Arc<dyn SendNow>>,
    pub upstream: Option<Arc<dyn LegacyUpstream>>,
}

/// The legacy services as an upstream, when configured (shadow and split mode).
pub fn legacy_upstream(settings: &Settings) -> Result<Option<Arc<dyn LegacyUpstream>>, StartError> {
    let (Some(insert), Some(send)) = (&settings.legacy_upstream, &settings.legacy_send_upstream)
    else {
        return Ok(None);
    };
    let upstream = crate::upstream::HttpUpstream::new(insert.clone(), send.clone())
        .map_err(StartError::Config)?;
    Ok(Some(Arc::new(upstream)))
}

/// Connects to the legacy database when `legacy_database_url` is set.
pub async fn legacy_table(settings: &Settings) -> Result<Option<Arc<dyn LegacyTable>>, StartError> {
    let Some(url) = &settings.legacy_database_url else {
        return Ok(None);
    };
    let db = fluxcb_migrate::LegacyDb::connect(url)
        .await
        .map_err(|e| StartError::LegacyDb(e.to_string()))?;
    Ok(Some(Arc::new(db)))
}

/// The API's state over any backend's stores and queue. `console` says where console sessions
/// live (this process's memory unless the backend shares them between instances).
#[allow(clippy::too_many_arguments)]
pub fn api_state(
    settings: &Settings,
    callbacks: Arc<dyn CallbackStore>,
    keys: Arc<dyn KeyStore>,
    secrets: Arc<dyn SecretStore>,
    destinations: Arc<DestinationDirectory>,
    queue: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    metrics: Option<fluxcb_http::MetricsRender>,
    legacy: LegacyParts,
    console: fluxcb_http::console::ConsoleState,
) -> AppState {
    AppState::new(AppParts {
        callbacks,
        keys,
        secrets,
        destinations,
        clock,
        defaults: settings.callback_defaults(),
        limits: ApiLimits {
            body_bytes: settings.body_limit,
            batch_body_bytes: settings.batch_body_limit,
            ..ApiLimits::default()
        },
        queue,
        metrics,
        legacy_secret: settings.legacy_signing_secret.clone(),
        key_cache: Default::default(),
        rate_limit: fluxcb_http::rate_limit::KeyRateLimiter::new(settings.api_rate_limit),
        in_flight: Default::default(),
        legacy_table: legacy.table,
        send_now: legacy.send_now,
        legacy_upstream: legacy.upstream,
        migration: MigrationControl::new(settings.migration),
        legacy_receiver_formats: settings.legacy_receiver_formats.clone(),
        console,
    })
}

/// The outbound HTTP client's SSRF policy, timeouts and trust from the settings.
pub fn sender_config(settings: &Settings) -> SenderConfig {
    SenderConfig {
        policy: TargetPolicy::with_allowed(settings.allow_private_targets.clone()),
        connect_timeout: settings.connect_timeout,
        ca_bundle: settings.ca_bundle.clone(),
        ..SenderConfig::default()
    }
}

/// The outbound HTTP client with the SSRF policy and timeouts from the settings.
pub fn http_sender(settings: &Settings) -> Result<HttpSender, StartError> {
    HttpSender::new(sender_config(settings)).map_err(|e| StartError::Sender(e.to_string()))
}

impl App {
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let (state, engine, generated_admin_key) = match settings.backend {
            Backend::Sqlite => Self::local(settings).await?,
            #[cfg(feature = "aws")]
            Backend::Aws => {
                let parts = crate::aws_backend::AwsParts::from_env(settings).await?;
                let generated = parts.prepare(settings).await?;
                let engine = parts.engine(settings)?;
                let metrics = with_destinations(prometheus(), engine.destinations());
                let legacy = parts.legacy_parts(settings).await?;
                // This process's engine, and what every other worker recorded in the table.
                let state =
                    parts.api_state(settings, Some(metrics), legacy, Some(engine.destinations()));
                (state, Engine::Aws(engine), generated)
            }
            #[cfg(not(feature = "aws"))]
            Backend::Aws => unreachable!("validation refuses the AWS backend in this build"),
        };
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            state,
            engine,
            generated_admin_key,
        })
    }

    async fn local(settings: &Settings) -> Result<(AppState, Engine, Option<String>), StartError> {
        let lock = DataDirLock::acquire(&settings.data_dir)?;
        let store = SqliteStore::open(&settings.data_dir)?;
        store.set_after_dead_letter(settings.ordering_after_dead_letter);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // A single process owns the embedded store: anything still marked in flight was in
        // flight when the previous process died, and goes back to pending (at-least-once).
        let recovered = store
            .recover_expired_leases(Utc::now() + chrono::Duration::days(3650))
            .await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "returned callbacks left in flight by the previous run to pending"
            );
        }
        let generated_admin_key = ensure_admin_key(&store, settings.api_key.as_deref()).await?;
        ensure_signing_secret(&store, settings).await?;

        let sender = http_sender(settings)?;
        let wake = Arc::new(DispatcherWake::default());
        let store_arc = Arc::new(store.clone());
        let limits = DestinationLimits {
            max_in_flight: settings.destination_max_in_flight,
            ..DestinationLimits::default()
        };
        let destinations = Arc::new(Destinations::new(limits.clone()));
        let directory = Arc::new(DestinationDirectory::new(
            store_arc.clone(),
            fluxcb_core::directory::DEFAULT_TTL,
        ));
        let routes = Arc::new(
            DestinationRoutes::new(
                directory.clone(),
                limits,
                settings.max_attempts,
                settings.retry.clone(),
                sender_config(settings),
            )
            .with_paused_recheck(settings.paused_recheck),
        );
        let sender: Arc<dyn Sender> = Arc::new(sender);
        let secret_cache = Arc::new(SecretCache::new(store_arc.clone(), Duration::from_secs(5)));
        let send_now = ImmediateDelivery {
            store: store_arc.clone(),
            sender: sender.clone(),
            secrets: secret_cache.clone(),
            legacy_secret: settings.legacy_signing_secret.clone(),
            policy: settings.retry.clone(),
            clock: clock.clone(),
            routes: Some(routes.clone()),
            follow_ups: settings.follow_ups(),
        };
        let legacy = LegacyParts {
            table: legacy_table(settings).await?,
            send_now: Some(Arc::new(send_now)),
            upstream: legacy_upstream(settings)?,
        };
        let parts = Arc::new(DeliveryParts {
            store: store_arc.clone(),
            sender,
            secrets: secret_cache,
            legacy_secret: settings.legacy_signing_secret.clone(),
            policy: settings.retry.clone(),
            clock: clock.clone(),
            destinations: destinations.clone(),
            routes,
            follow_ups: settings.follow_ups(),
            ops_events: settings.ops_events(),
        });
        let dispatcher = Dispatcher::new(
            parts,
            DispatcherConfig {
                max_in_flight: settings.max_in_flight,
                ..DispatcherConfig::default()
            },
            wake.clone(),
        );
        let state = api_state(
            settings,
            store_arc.clone(),
            store_arc.clone(),
            store_arc,
            directory,
            Arc::new(WakeDispatcher(wake)),
            clock.clone(),
            Some(with_destinations(prometheus(), destinations.clone())),
            legacy,
            Default::default(),
        );
        let _ = state
            .console
            .destination_health
            .set(destination_health(destinations));
        let engine = Engine::Local(LocalEngine {
            dispatcher,
            store,
            clock,
            retention: Retention {
                callbacks: settings.retention,
                idempotency_keys: settings.idempotency_retention,
                // At least twice per retention period, so a short one is honoured.
                interval: (settings.retention / 2)
                    .clamp(Duration::from_secs(1), Retention::default().interval),
            },
            lock,
        });
        Ok((state, engine, generated_admin_key))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then stops taking requests, lets in-flight
    /// deliveries finish (or returns them to pending), and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let router = crate::telemetry::trace_requests(fluxcb_http::router(self.state));
        let workers = match self.engine {
            Engine::Local(local) => tokio::spawn(local.run(shutdown.clone())),
            #[cfg(feature = "aws")]
            Engine::Aws(aws) => tokio::spawn(aws.run(shutdown.clone())),
        };
        let token = shutdown.clone();
        // The peer address counts failed console logins per client.
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
        shutdown.cancel();
        let _ = workers.await;
        served
    }
}

impl LocalEngine {
    async fn run(self, shutdown: CancellationToken) {
        let store: Arc<dyn CallbackStore> = Arc::new(self.store.clone());
        let dispatcher = tokio::spawn(self.dispatcher.run(shutdown.clone()));
        let upkeep = tokio::spawn(maintenance::run(
            store.clone(),
            self.clock.clone(),
            self.retention,
            shutdown.clone(),
        ));
        shutdown.cancelled().await;
        let _ = dispatcher.await;
        let _ = upkeep.await;
        // Whatever the grace period did not finish goes back to pending before exit.
        match store
            .recover_expired_leases(Utc::now() + chrono::Duration::days(3650))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(returned = n, "returned unfinished deliveries to pending"),
            Err(e) => {
                tracing::warn!(error = %e, "could not return unfinished deliveries; the next start will")
            }
        }
        // Only now may another server (or a restore) take the data directory.
        drop(self.lock);
    }
}

pub(crate) async fn ensure_admin_key(
    store: &dyn KeyStore,
    configured: Option<&str>,
) -> Result<Option<String>, StartError> {
    if let Some(key) = configured {
        let plain = PlainKey::from_configured(key.to_owned());
        if store.find_key(&plain.hash()).await?.is_none() {
            // The configured key changed: the previous one stops working.
            for old in store.list_keys().await? {
                if old.name.starts_with(CONFIGURED_ADMIN) && old.revoked_at.is_none() {
                    store.revoke_key(&old.id).await?;
                }
            }
            store
                .create_key(NewApiKey {
                    name: format!("{CONFIGURED_ADMIN}-{}", Utc::now().timestamp_millis()),
                    tenant: TenantId::default_tenant(),
                    role: Role::Admin,
                    hash: plain.hash(),
                })
                .await?;
        }
        return Ok(None);
    }
    if store.has_admin_key().await? {
        return Ok(None);
    }
    let plain = PlainKey::generate();
    store
        .create_key(NewApiKey {
            name: "admin".into(),
            tenant: TenantId::default_tenant(),
            role: Role::Admin,
            hash: plain.hash(),
        })
        .await?;
    Ok(Some(plain.expose().to_owned()))
}

pub(crate) async fn ensure_signing_secret(
    store: &dyn SecretStore,
    settings: &Settings,
) -> Result<(), StartError> {
    let tenant = TenantId::default_tenant();
    let now = Utc::now();
    let active = store.active_secrets(&tenant, now).await?;
    match &settings.signing_secret {
        // A newly configured secret takes over at once: the operator chose it.
        Some(s) if !active.contains(s) => store.add_secret(&tenant, s, now).await?,
        Some(_) => {}
        None if active.is_empty() => {
            store
                .add_secret(
                    &tenant,
                    &fluxcb_core::signing::SigningSecret::generate(),
                    now,
                )
                .await?
        }
        None => {}
    }
    Ok(())
}
