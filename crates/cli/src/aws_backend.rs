//! The AWS backend's composition, shared by `fluxcb serve --backend aws` (container mode: the
//! API, an SQS poller and a sweeper timer in one process) and the Lambda entry points (one
//! piece per function). Clients and caches are created once per process, which on Lambda
//! means once per cold start.
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fluxcb_aws::deliverer::Deliverer;
use fluxcb_aws::poller::{self, PollerConfig};
use fluxcb_aws::queue::SqsQueue;
use fluxcb_aws::store::{DynamoStore, StoreRetention};
use fluxcb_aws::sweeper::Sweeper;
use fluxcb_aws::{AwsClients, AwsResources};
use fluxcb_core::ports::{Clock, StoreError, SystemClock};
use fluxcb_delivery::destinations::{DestinationLimits, Destinations};
use fluxcb_delivery::routes::DestinationRoutes;
use fluxcb_delivery::secrets::SecretCache;
use fluxcb_http::AppState;
use tokio_util::sync::CancellationToken;

use crate::app::{
    api_state, ensure_admin_key, ensure_signing_secret, http_sender, legacy_table, legacy_upstream,
    LegacyParts, StartError,
};
use crate::config::Settings;
use fluxcb_delivery::send_now::ImmediateDelivery;

pub struct AwsParts {
    pub resources: AwsResources,
    pub clients: AwsClients,
    pub store: Arc<DynamoStore>,
    pub queue: SqsQueue,
    pub clock: Arc<dyn Clock>,
}

impl AwsParts {
    /// The table and queues from the settings (`FLUXCB_DYNAMODB_TABLE`, `FLUXCB_SQS_QUEUE_URL`,
    /// `FLUXCB_SQS_DLQ_URL`), credentials and region from the standard AWS environment.
    pub async fn from_env(settings: &Settings) -> Result<Self, StartError> {
        let names = settings.aws.clone().ok_or_else(|| {
            StartError::Config("the AWS backend is not configured (backend = aws)".into())
        })?;
        let resources = AwsResources {
            table: names.table,
            queue_url: names.queue_url,
            dlq_url: names.dlq_url,
        };
        Ok(Self::new(settings, resources, AwsClients::from_env().await))
    }

    pub fn new(settings: &Settings, resources: AwsResources, clients: AwsClients) -> Self {
        let store = Arc::new(
            DynamoStore::new(
                clients.dynamodb.clone(),
                resources.table.clone(),
                StoreRetention {
                    callbacks: settings.retention,
                    idempotency_keys: settings.idempotency_retention,
                },
            )
            .with_sweep_grace(
                TimeDelta::from_std(settings.sweep_grace).unwrap_or(TimeDelta::minutes(2)),
            )
            .with_after_dead_letter(settings.ordering_after_dead_letter),
        );
        let queue = SqsQueue::new(
            clients.sqs.clone(),
            resources.queue_url.clone(),
            resources.dlq_url.clone(),
        );
        Self {
            resources,
            clients,
            store,
            queue,
            clock: Arc::new(SystemClock),
        }
    }

    /// Makes sure an admin key and a signing secret exist (as `serve` does locally). Returns a
    /// generated admin key, shown once.
    pub async fn prepare(&self, settings: &Settings) -> Result<Option<String>, StartError> {
        let generated = ensure_admin_key(self.store.as_ref(), settings.api_key.as_deref()).await?;
        ensure_signing_secret(self.store.as_ref(), settings).await?;
        Ok(generated)
    }

    /// The API's state. `engine`: this process's delivery engine, whose destinations' live
    /// state the API shows beside what every worker recorded in the table.
    pub fn api_state(
        &self,
        settings: &Settings,
        metrics: Option<fluxcb_http::MetricsRender>,
        legacy: LegacyParts,
        engine: Option<Arc<Destinations>>,
    ) -> AppState {
        let state = api_state(
            settings,
            self.store.clone(),
            self.store.clone(),
            self.store.clone(),
            Arc::new(fluxcb_core::directory::DestinationDirectory::new(
                self.store.clone(),
                fluxcb_core::directory::DEFAULT_TTL,
            )),
            Arc::new(self.queue.clone()),
            self.clock.clone(),
            metrics,
            legacy,
            // Sessions in the table: every API instance (each Lambda one) knows every session.
            fluxcb_http::console::ConsoleState::with_sessions(self.store.clone()),
        );
        let _ = state.console.destination_health.set(Arc::new(TableHealth {
            store: self.store.clone(),
            engine: engine.map(crate::app::EngineHealth),
        }));
        state
    }

    /// The legacy API's extras on AWS: the synchronous `send` over this store, and the legacy
    /// database and services when configured.
    pub async fn legacy_parts(&self, settings: &Settings) -> Result<LegacyParts, StartError> {
        let send_now = ImmediateDelivery {
            store: self.store.clone(),
            sender: Arc::new(http_sender(settings)?),
            secrets: Arc::new(SecretCache::new(self.store.clone(), Duration::from_secs(5))),
            legacy_secret: settings.legacy_signing_secret.clone(),
            policy: settings.retry.clone(),
            clock: self.clock.clone(),
            routes: Some(self.routes(
                settings,
                DestinationLimits {
                    max_in_flight: settings.destination_max_in_flight,
                    ..DestinationLimits::default()
                },
            )),
            follow_ups: settings.follow_ups(),
        };
        Ok(LegacyParts {
            table: legacy_table(settings).await?,
            send_now: Some(Arc::new(send_now)),
            upstream: legacy_upstream(settings)?,
        })
    }

    pub fn deliverer(&self, settings: &Settings) -> Result<Deliverer, StartError> {
        let limits = DestinationLimits {
            max_in_flight: settings.destination_max_in_flight,
            ..DestinationLimits::default()
        };
        Ok(Deliverer {
            store: self.store.clone(),
            queue: self.queue.clone(),
            sender: Arc::new(http_sender(settings)?),
            secrets: Arc::new(SecretCache::new(self.store.clone(), Duration::from_secs(5))),
            legacy_secret: settings.legacy_signing_secret.clone(),
            policy: settings.retry.clone(),
            clock: self.clock.clone(),
            destinations: Arc::new(Destinations::new(limits.clone())),
            routes: Some(self.routes(settings, limits)),
            lease: settings.aws_claim_lease,
            follow_ups: settings.follow_ups(),
            ops_events: settings.ops_events(),
        })
    }

    /// Registered destinations as this process's workers see them (refreshed every 5 s).
    pub fn routes(&self, settings: &Settings, limits: DestinationLimits) -> Arc<DestinationRoutes> {
        Arc::new(
            DestinationRoutes::new(
                Arc::new(fluxcb_core::directory::DestinationDirectory::new(
                    self.store.clone(),
                    fluxcb_core::directory::DEFAULT_TTL,
                )),
                limits,
                settings.max_attempts,
                settings.retry.clone(),
                crate::app::sender_config(settings),
            )
            .with_paused_recheck(settings.paused_recheck),
        )
    }

    pub fn sweeper(&self) -> Sweeper {
        Sweeper {
            store: self.store.clone(),
            queue: self.queue.clone(),
            limit: 10_000,
        }
    }

    /// Container mode's workers: the SQS poller and the sweeper timer.
    pub fn engine(&self, settings: &Settings) -> Result<AwsEngine, StartError> {
        Ok(AwsEngine {
            deliverer: Arc::new(self.deliverer(settings)?),
            sweeper: self.sweeper(),
            sweep_interval: settings.sweep_interval,
            poller: PollerConfig {
                workers: (settings.max_in_flight / 10).clamp(1, 32),
                wait: Duration::from_secs(10),
            },
        })
    }
}

pub struct AwsEngine {
    deliverer: Arc<Deliverer>,
    sweeper: Sweeper,
    sweep_interval: Duration,
    poller: PollerConfig,
}

impl AwsEngine {
    /// This process's per-destination limits and breakers (the deliverer's).
    pub fn destinations(&self) -> Arc<fluxcb_delivery::destinations::Destinations> {
        self.deliverer.destinations.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let polling = tokio::spawn(poller::run(self.deliverer, self.poller, shutdown.clone()));
        let sweeper = self.sweeper;
        let interval = self.sweep_interval;
        let sweeping = tokio::spawn(async move {
            loop {
                match sweeper.sweep_once(Utc::now()).await {
                    Ok(r) if r.enqueued > 0 || r.recovered > 0 => {
                        tracing::info!(enqueued = r.enqueued, recovered = r.recovered, "sweep")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        let _ = polling.await;
        let _ = sweeping.await;
    }
}

/// The destinations' circuit breakers as every AWS worker recorded them in the table, beside
/// this process's own engine where one runs (whose in-flight counts are its own only).
pub struct TableHealth {
    store: Arc<DynamoStore>,
    engine: Option<crate::app::EngineHealth>,
}

#[async_trait::async_trait]
impl fluxcb_http::console::DestinationHealthSource for TableHealth {
    async fn loads(&self) -> Result<Vec<fluxcb_http::console::DestinationLoad>, StoreError> {
        let mut out = match &self.engine {
            Some(engine) => engine.loads().await?,
            None => Vec::new(),
        };
        for r in self.store.breakers(Utc::now()).await? {
            match out.iter_mut().find(|l| l.destination == r.destination) {
                Some(local) => {
                    local.circuit_open |= r.circuit_open;
                    local.consecutive_failures =
                        local.consecutive_failures.max(r.consecutive_failures);
                }
                None => out.push(fluxcb_http::console::DestinationLoad {
                    destination: r.destination,
                    in_flight: 0,
                    consecutive_failures: r.consecutive_failures,
                    circuit_open: r.circuit_open,
                }),
            }
        }
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        Ok(out)
    }
}
