//! The legacy API's synchronous `send`: one attempt of a callback the API has just claimed,
//! made in the request and recorded like any other. It bypasses the dispatcher's queue and
//! per-destination limits (and a pause) on purpose: an operator asked for this one attempt,
//! now. A registered destination's secrets, TLS client, timeout and schedule still apply.
use std::sync::Arc;

use async_trait::async_trait;
use fluxcb_core::callback::Callback;
use fluxcb_core::engine::{deliver_and_record, Aftermath, SigningKeys};
use fluxcb_core::notify::FollowUpSettings;
use fluxcb_core::ports::{CallbackStore, Clock, SendNow, Sender, StoreError};
use fluxcb_core::retry::RetryPolicy;

use crate::dispatcher::record_metrics;
use crate::routes::{notify_target, DestinationRoutes};
use crate::secrets::SecretCache;

pub struct ImmediateDelivery {
    pub store: Arc<dyn CallbackStore>,
    pub sender: Arc<dyn Sender>,
    pub secrets: Arc<SecretCache>,
    pub legacy_secret: Option<Arc<[u8]>>,
    pub policy: RetryPolicy,
    pub clock: Arc<dyn Clock>,
    /// Registered destinations (`None`: every callback as unregistered).
    pub routes: Option<Arc<DestinationRoutes>>,
    pub follow_ups: Arc<FollowUpSettings>,
}

#[async_trait]
impl SendNow for ImmediateDelivery {
    async fn send_claimed(&self, callback: &Callback) -> Result<(), StoreError> {
        let route = match &self.routes {
            Some(routes) => Some(routes.route(callback).await?),
            None => None,
        };
        let secrets = match &route {
            Some(r) => r.signing_secrets(&self.secrets, &callback.tenant).await?,
            None => self.secrets.get(&callback.tenant).await?,
        };
        let applied = match &route {
            Some(r) => r.applied_to(callback),
            None => std::borrow::Cow::Borrowed(callback),
        };
        let notify = notify_target(route.as_ref(), callback);
        let step = deliver_and_record(
            &applied,
            self.store.as_ref(),
            route
                .as_ref()
                .map_or(self.sender.as_ref(), |r| r.sender(self.sender.as_ref())),
            SigningKeys {
                standard: &secrets,
                legacy: self.legacy_secret.as_deref(),
            },
            route
                .as_ref()
                .map_or(&self.policy, |r| r.policy(&self.policy)),
            Aftermath {
                notify: notify.as_ref(),
                settings: &self.follow_ups,
            },
            self.clock.as_ref(),
        )
        .await?;
        record_metrics(callback, &step, self.clock.now());
        tracing::info!(
            callback_id = %callback.id,
            tenant = %callback.tenant,
            attempt = step.attempt.number,
            status_code = step.attempt.status_code,
            decision = ?step.decision,
            "send-now attempt finished"
        );
        Ok(())
    }
}
