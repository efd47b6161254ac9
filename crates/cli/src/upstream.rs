//! The legacy services as an HTTP upstream (shadow and split mode), with reqwest.
use std::time::Duration;

use async_trait::async_trait;
use fluxcb_http::legacy_api::{Forward, Forwarded, LegacyUpstream, Service, UpstreamError};
use url::Url;

/// The legacy send-now answers after its own attempt (`LEGACY_SEND_TIMEOUT`, 10 s by default);
/// this leaves room for that under API Gateway's 30 seconds.
const TIMEOUT: Duration = Duration::from_secs(25);

pub struct HttpUpstream {
    client: reqwest::Client,
    insert: Url,
    send: Url,
}

impl HttpUpstream {
    pub fn new(insert: Url, send: Url) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // Legacy's own redirects (APPEND_SLASH) go back to the caller as they are.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the legacy upstream client: {e}"))?;
        Ok(Self {
            client,
            insert,
            send,
        })
    }
}

#[async_trait]
impl LegacyUpstream for HttpUpstream {
    async fn forward(&self, request: Forward) -> Result<Forwarded, UpstreamError> {
        let base = match request.service {
            Service::Insert => &self.insert,
            Service::Send => &self.send,
        };
        let url = base
            .join(&request.path_and_query)
            .map_err(|e| UpstreamError::BadAnswer(format!("cannot build the URL: {e}")))?;
        let response = self
            .client
            .request(request.method, url)
            .headers(request.headers)
            .body(request.body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    UpstreamError::Unreachable(e.to_string())
                } else {
                    UpstreamError::BadAnswer(e.to_string())
                }
            })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::BadAnswer(e.to_string()))?;
        Ok(Forwarded {
            status,
            headers,
            body,
        })
    }
}
