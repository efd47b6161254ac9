//! The sweeper function, on an EventBridge schedule: enqueue what came within the queue's
//! reach or lost its message, recover expired leases, publish queue depths.
use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), fluxcb_lambda::Error> {
    let started = Instant::now();
    let (_settings, parts) = fluxcb_lambda::init("sweeper").await?;
    let sweeper = Arc::new(parts.sweeper());
    fluxcb_lambda::ready("sweeper", started);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let sweeper = sweeper.clone();
        async move {
            let result = fluxcb_lambda::handle_schedule(&sweeper, event.payload).await;
            fluxcb_lambda::end_invocation().await;
            result
        }
    }))
    .await
}
