//! The deliverer function: an SQS batch → one attempt per due callback, partial batch failures.
use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), fluxcb_lambda::Error> {
    let started = Instant::now();
    let (settings, parts) = fluxcb_lambda::init("deliverer").await?;
    let deliverer = Arc::new(parts.deliverer(&settings)?);
    fluxcb_lambda::ready("deliverer", started);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let deliverer = deliverer.clone();
        async move {
            let response: SqsBatchResponse =
                fluxcb_lambda::handle_sqs(&deliverer, event.payload).await;
            fluxcb_lambda::end_invocation().await;
            Ok::<_, fluxcb_lambda::Error>(response)
        }
    }))
    .await
}
