//! The OTLP exporter's HTTP client: hyper with rustls (ring) and the system roots, the stack the
//! sender already builds, instead of a second HTTP client library.
use std::time::Duration;

use async_trait::async_trait;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

use super::TelemetryError;

/// Runs each export on the runtime the client was made on. The batch exporter calls it from
/// its own thread, which has no Tokio runtime, and hyper needs one.
#[derive(Clone, Debug)]
pub(super) struct RuntimeHyperClient {
    inner: HyperClient<HttpsConnector<HttpConnector>>,
    runtime: tokio::runtime::Handle,
}

impl RuntimeHyperClient {
    /// Must be called inside the runtime.
    pub(super) fn new(timeout: Duration) -> Result<Self, TelemetryError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .map_err(TelemetryError::Roots)?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            inner: HyperClient::new(https, timeout, None),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

#[async_trait]
impl HttpClient for RuntimeHyperClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}
