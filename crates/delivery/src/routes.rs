//! What one claimed callback is delivered with: the registration that covers its URL (if any),
//! its effective settings (callback over registration over tenant over installation), the key
//! its limits and breaker are kept under, the secrets that sign it, and the client that sends
//! it (a registration with its own CA bundle or client certificate gets a client of its own).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use fluxcb_core::attempt::{ErrorCode, SendOutcome};
use fluxcb_core::callback::Callback;
use fluxcb_core::destination::{
    DestinationId, EffectiveSettings, InstallationDefaults, Matched, RegisteredDestination,
};
use fluxcb_core::directory::DestinationDirectory;
use fluxcb_core::notify::NotifyTarget;
use fluxcb_core::ports::{OutboundRequest, Sender, StoreError};
use fluxcb_core::retry::RetryPolicy;
use fluxcb_core::signing::SigningSecret;

use crate::destinations::{DestinationLimits, EntryLimits};
use crate::secrets::SecretCache;
use crate::sender::{ClientIdentity, HttpSender, SenderConfig};

/// How one callback is delivered right now.
#[derive(Clone)]
pub struct Route {
    /// What its limits and breaker are kept under: the registration, or the origin.
    pub key: String,
    pub limits: EntryLimits,
    pub paused: bool,
    pub effective: EffectiveSettings,
    /// The registration's own schedule over the installation's policy.
    pub policy: Option<Arc<RetryPolicy>>,
    /// The registration's secrets; `None`: the tenant's.
    pub secrets: Option<Arc<Vec<SigningSecret>>>,
    /// A client of the registration's own; `None`: the shared one.
    pub sender: Option<Arc<dyn Sender>>,
    pub registration: Option<DestinationId>,
    /// The limits the registrations set themselves (not the installation's defaults): what a
    /// backend with many workers keeps shared, so that they hold for the receiver as a whole.
    pub registered_limits: RegisteredLimits,
}

/// A registration's own rate and concurrency limits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RegisteredLimits {
    pub rate_per_second: Option<f64>,
    pub max_in_flight: Option<u32>,
}

impl RegisteredLimits {
    pub fn is_set(&self) -> bool {
        self.rate_per_second.is_some() || self.max_in_flight.is_some()
    }
}

/// A registration's own client, with the revision it was built for.
type BuiltSender = (u64, Arc<dyn Sender>);

pub struct DestinationRoutes {
    directory: Arc<DestinationDirectory>,
    installation: InstallationDefaults,
    limits: DestinationLimits,
    base_policy: RetryPolicy,
    /// What a registration's own client is built from (its TLS added).
    sender_config: SenderConfig,
    /// Per registration, at the revision it was built for.
    tls_senders: Mutex<HashMap<DestinationId, BuiltSender>>,
    paused_recheck: std::time::Duration,
}

impl DestinationRoutes {
    pub fn new(
        directory: Arc<DestinationDirectory>,
        limits: DestinationLimits,
        max_attempts: u32,
        base_policy: RetryPolicy,
        sender_config: SenderConfig,
    ) -> Self {
        Self {
            installation: InstallationDefaults {
                max_attempts,
                max_in_flight: limits.max_in_flight,
                circuit_failure_threshold: limits.failure_threshold,
                circuit_open: limits.open_for,
            },
            directory,
            limits,
            base_policy,
            sender_config,
            tls_senders: Mutex::new(HashMap::new()),
            paused_recheck: std::time::Duration::from_secs(15),
        }
    }

    /// How long a callback to a paused destination waits before a worker looks at it again
    /// (a resume applies within it). Each look is a claim and a deferral (and on AWS a queue
    /// message), so shorter costs more while a destination with a backlog stays paused.
    pub fn with_paused_recheck(mut self, wait: std::time::Duration) -> Self {
        self.paused_recheck = wait;
        self
    }

    pub fn paused_recheck(&self) -> std::time::Duration {
        self.paused_recheck
    }

    pub fn directory(&self) -> &Arc<DestinationDirectory> {
        &self.directory
    }

    /// The route of `callback`. Fails only when the tenant's registrations cannot be read and
    /// none were read before: the callback is then held back, never sent unsigned or with
    /// another receiver's secret.
    pub async fn route(&self, callback: &Callback) -> Result<Route, StoreError> {
        let regs = self.directory.registrations(&callback.tenant).await?;
        let matched = Matched::find(&regs, &callback.spec.url);
        let settings = matched.settings();
        let effective = EffectiveSettings::resolve(callback, &settings, &self.installation);
        let owner = matched.owner();
        let origin = callback.destination();
        let key = match owner {
            Some(r) => r
                .limits_key()
                .unwrap_or_else(|| format!("{} {origin}", r.tenant)),
            None => origin.to_string(),
        };
        let now = Utc::now();
        Ok(Route {
            key,
            limits: EntryLimits {
                max_in_flight: effective.max_in_flight,
                rate_per_second: effective.rate_limit_per_second,
                failure_threshold: effective.circuit_failure_threshold,
                open_for: effective.circuit_open,
            },
            paused: matched.paused(),
            policy: effective.retry_policy(&self.base_policy).map(Arc::new),
            secrets: owner
                .map(|r| Arc::new(r.active_secrets(now)))
                .filter(|s| !s.is_empty()),
            sender: owner
                .filter(|r| !r.tls.is_empty())
                .map(|r| self.tls_sender(r)),
            registration: owner.map(|r| r.id),
            registered_limits: RegisteredLimits {
                rate_per_second: settings.rate_limit_per_second,
                max_in_flight: settings.max_in_flight,
            },
            effective,
        })
    }

    /// The limits a destination without settings gets.
    pub fn default_limits(&self) -> EntryLimits {
        self.limits.entry()
    }

    fn tls_sender(&self, r: &RegisteredDestination) -> Arc<dyn Sender> {
        let mut senders = self.tls_senders.lock().expect("poisoned");
        if let Some((revision, sender)) = senders.get(&r.id) {
            if *revision == r.revision {
                return sender.clone();
            }
        }
        let config = SenderConfig {
            extra_roots_pem: r.tls.ca_bundle_pem.clone(),
            client_identity: match (&r.tls.client_certificate_pem, &r.tls.client_key_pem) {
                (Some(cert), Some(key)) => Some(ClientIdentity {
                    certificate_chain_pem: cert.clone(),
                    key_pem: key.clone(),
                }),
                _ => None,
            },
            ..self.sender_config.clone()
        };
        let sender: Arc<dyn Sender> = match HttpSender::new(config) {
            Ok(s) => Arc::new(s),
            // The API checks the PEM before storing it; should a stored one still not build,
            // every attempt says why instead of going out without the TLS it asked for.
            Err(e) => Arc::new(Misconfigured(format!(
                "destination {}'s TLS settings cannot be used: {e}",
                r.id
            ))),
        };
        senders.insert(r.id, (r.revision, sender.clone()));
        sender
    }
}

impl Route {
    /// The client to send with: the registration's own, or `shared`.
    pub fn sender<'a>(&'a self, shared: &'a dyn Sender) -> &'a dyn Sender {
        self.sender.as_deref().unwrap_or(shared)
    }

    /// The retry policy: the registration's schedule, or `base`.
    pub fn policy<'a>(&'a self, base: &'a RetryPolicy) -> &'a RetryPolicy {
        self.policy.as_deref().unwrap_or(base)
    }

    /// The secrets that sign: the registration's own, or the tenant's from `tenant_secrets`.
    pub async fn signing_secrets(
        &self,
        tenant_secrets: &SecretCache,
        tenant: &fluxcb_core::tenant::TenantId,
    ) -> Result<Arc<Vec<SigningSecret>>, StoreError> {
        match &self.secrets {
            Some(own) => Ok(own.clone()),
            None => tenant_secrets.get(tenant).await,
        }
    }

    /// The callback with its effective timeout and attempt budget, which is what the engine
    /// reads (a copy only where they differ from what is stored).
    pub fn applied_to<'a>(&self, callback: &'a Callback) -> std::borrow::Cow<'a, Callback> {
        let timeout_ms = u32::try_from(self.effective.timeout.as_millis()).unwrap_or(u32::MAX);
        if callback.timeout_ms == timeout_ms && callback.max_attempts == self.effective.max_attempts
        {
            return std::borrow::Cow::Borrowed(callback);
        }
        let mut own = callback.clone();
        own.timeout_ms = timeout_ms;
        own.max_attempts = self.effective.max_attempts;
        std::borrow::Cow::Owned(own)
    }
}

/// Who hears about `callback`'s end: as its route resolved it, or (no registrations consulted)
/// the callback's own fields.
pub fn notify_target(route: Option<&Route>, callback: &Callback) -> Option<NotifyTarget> {
    match route {
        Some(r) => r.effective.notify.clone(),
        None => NotifyTarget::resolve(&callback.spec, None, None),
    }
}

/// Fails every attempt with the reason its client could not be built.
struct Misconfigured(String);

#[async_trait]
impl Sender for Misconfigured {
    async fn send(&self, _request: OutboundRequest) -> SendOutcome {
        SendOutcome::failure(ErrorCode::Tls, self.0.clone(), std::time::Duration::ZERO)
    }
}
