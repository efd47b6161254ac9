//! The API function: API Gateway HTTP API (payload v2) → the same axum router as `fluxcb serve`.
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), fluxcb_lambda::Error> {
    let started = Instant::now();
    let (settings, parts) = fluxcb_lambda::init("api").await?;
    // A generated admin key would only be shown in the function's logs: require one.
    if settings.api_key.is_none() {
        return Err("FLUXCB_API_KEY must be set for the API function (the template reads it from Secrets Manager)".into());
    }
    parts.prepare(&settings).await?;
    // The legacy API's send-now, legacy database and services (migration runbook).
    let legacy = parts.legacy_parts(&settings).await?;
    let router = fluxcb_lambda::api_router(&settings, &parts, legacy);
    fluxcb_lambda::ready("api", started);
    lambda_http::run(router).await
}
