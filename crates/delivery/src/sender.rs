//! The HTTP [`Sender`]: one attempt on the wire, turned into a [`SendOutcome`].
//!
//! - Every connection goes through [`GuardedConnector`], so the SSRF policy applies to
//!   the address dialled, for `http` and `https` alike.
//! - Redirects are not followed (hyper never does): a 3xx is the receiver's answer and
//!   is reported as a non-2xx status, with its `Location` kept for the audit trail.
//! - No proxy is ever used, whatever the environment says.
//! - `https` offers HTTP/2 and HTTP/1.1 by ALPN; plain `http` speaks HTTP/1.1.
//!   Connections are pooled per host and reused.
//! - The callback's timeout bounds the whole attempt: resolving, connecting, the TLS
//!   handshake, sending, and reading the answer.
//! - At most [`BODY_READ_LIMIT`] bytes of an answer are read and only the first
//!   [`BODY_EXCERPT_LIMIT`] are kept; the rest is never buffered.
//!
//! Once a status line has arrived the receiver has answered, so the status is reported
//! even if the body then breaks or stalls past the timeout. A 2xx whose body was cut
//! short still counts as delivered: the receiver accepted the callback, and sending it
//! again would duplicate it. For a non-2xx the detail mentions the cut.
//!
//! Neither payloads nor header values of requests are logged: they may carry secrets.
//! Error details name the host (never the path or query, which may carry tokens).

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fluxcb_core::attempt::{
    ErrorCode, SendOutcome, BODY_EXCERPT_LIMIT, BODY_READ_LIMIT, KEPT_RESPONSE_HEADERS,
};
use fluxcb_core::callback::Method;
use fluxcb_core::ports::{OutboundRequest, Sender};
use fluxcb_core::target::TargetPolicy;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use tokio::time::timeout_at;

use crate::connector::{ConnectError, GuardedConnector, Resolve, DEFAULT_CONNECT_TIMEOUT};

/// Idle pooled connections are closed after this long. Shorter than the keep-alive
/// timeouts of common servers (nginx 75 s, most load balancers 60 s) so that we, not
/// they, usually close first and few requests race a closing connection.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Each kept response header value is cut to this many bytes: the audit trail wants
/// to know what the receiver said, not to store whatever it sent.
const HEADER_VALUE_LIMIT: usize = 1024;

#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Which addresses may be dialled.
    pub policy: TargetPolicy,
    /// Bounds each TCP connect and each DNS lookup (the callback's own timeout still
    /// bounds the whole attempt).
    pub connect_timeout: Duration,
    /// A PEM file of CA certificates trusted in addition to the system roots, for
    /// receivers behind a private CA.
    pub ca_bundle: Option<PathBuf>,
    /// Idle connections kept per host for reuse.
    pub pool_idle_per_host: usize,
    /// PEM CA certificates trusted in addition (a registered destination's own bundle).
    pub extra_roots_pem: Option<String>,
    /// A client certificate presented to receivers that ask for one (mTLS).
    pub client_identity: Option<ClientIdentity>,
}

/// A PEM certificate chain and its private key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub certificate_chain_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

impl SenderConfig {
    pub const DEFAULT_POOL_IDLE_PER_HOST: usize = 64;

    /// Defaults around `policy`: 5 s connect timeout, system roots only, 64 idle
    /// connections per host.
    pub fn new(policy: TargetPolicy) -> Self {
        Self {
            policy,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ca_bundle: None,
            pool_idle_per_host: Self::DEFAULT_POOL_IDLE_PER_HOST,
            extra_roots_pem: None,
            client_identity: None,
        }
    }
}

impl Default for SenderConfig {
    /// Public addresses only.
    fn default() -> Self {
        Self::new(TargetPolicy::public_only())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SenderBuildError {
    #[error("cannot read the CA bundle {}: {source}", path.display())]
    CaBundleUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the CA bundle {} holds no PEM certificates", path.display())]
    CaBundleEmpty { path: PathBuf },
    #[error("the CA bundle {} has a certificate that cannot be a trust anchor: {source}", path.display())]
    CaBundleRejected {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// A destination's own CA bundle or client certificate (text given through the API).
    #[error("{0}")]
    DestinationTls(String),
}

type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// Sends callbacks over HTTP(S). Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct HttpSender {
    client: HttpClient,
}

impl fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSender").finish_non_exhaustive()
    }
}

impl HttpSender {
    pub fn new(config: SenderConfig) -> Result<Self, SenderBuildError> {
        let connector = GuardedConnector::new(config.policy.clone());
        Self::build(config, connector)
    }

    /// As [`HttpSender::new`], resolving host names with `resolver` instead of the
    /// system's: for tests that need names without a DNS server.
    pub fn with_resolver(
        config: SenderConfig,
        resolver: impl Resolve,
    ) -> Result<Self, SenderBuildError> {
        let connector = GuardedConnector::new(config.policy.clone()).with_resolver(resolver);
        Self::build(config, connector)
    }

    fn build(config: SenderConfig, connector: GuardedConnector) -> Result<Self, SenderBuildError> {
        let mut roots = root_store(config.ca_bundle.as_deref())?;
        if let Some(pem) = &config.extra_roots_pem {
            for cert in pem_certificates(pem, "the CA bundle")? {
                roots.add(cert).map_err(|e| {
                    SenderBuildError::DestinationTls(format!(
                        "the CA bundle has a certificate that cannot be a trust anchor: {e}"
                    ))
                })?;
            }
        }
        // Explicit, so the choice does not depend on which crypto features other crates
        // in the build happen to enable.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let tls = match &config.client_identity {
            None => tls.with_no_client_auth(),
            Some(identity) => {
                let chain =
                    pem_certificates(&identity.certificate_chain_pem, "the client certificate")?;
                let key = rustls_pemfile::private_key(&mut identity.key_pem.as_bytes())
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        SenderBuildError::DestinationTls(
                            "the client key holds no PEM private key".into(),
                        )
                    })?;
                tls.with_client_auth_cert(chain, key).map_err(|e| {
                    SenderBuildError::DestinationTls(format!(
                        "the client certificate and key do not go together: {e}"
                    ))
                })?
            }
        };
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector.with_connect_timeout(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(config.pool_idle_per_host)
            .timer(TokioTimer::new())
            .build(https);
        Ok(Self { client })
    }

    async fn attempt(&self, request: OutboundRequest) -> SendOutcome {
        let start = tokio::time::Instant::now();
        // Far-future stand-in only matters for absurd timeouts that would overflow.
        let deadline = start
            .checked_add(request.timeout)
            .unwrap_or_else(|| start + Duration::from_secs(86_400));
        let host = request.url.host_str().unwrap_or_default().to_owned();
        let https = request.url.scheme() == "https";
        let failure = |code, detail: String| SendOutcome::failure(code, detail, Duration::ZERO);

        let mut url = request.url;
        url.set_fragment(None);
        let uri: http::Uri = match url.as_str().parse() {
            Ok(uri) => uri,
            Err(e) => return failure(ErrorCode::Protocol, format!("the URL cannot be sent: {e}")),
        };
        let method = match request.method {
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Patch => http::Method::PATCH,
        };
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        // The http crate's messages name what was wrong, never the offending value.
        let req = match builder.body(Full::new(Bytes::from(request.body))) {
            Ok(req) => req,
            Err(e) => {
                return failure(
                    ErrorCode::Protocol,
                    format!("the request cannot be built: {e}"),
                )
            }
        };

        let response = match timeout_at(deadline, self.client.request(req)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let (code, detail) = classify(&e, &host, https);
                return failure(code, detail);
            }
            Err(_) => {
                return failure(
                    ErrorCode::Timeout,
                    format!("no response from {host} within {:?}", request.timeout),
                )
            }
        };

        let status = response.status();
        let headers = kept_headers(response.headers());
        let mut body_excerpt = Vec::new();
        let cut_short = match timeout_at(
            deadline,
            read_excerpt(response.into_body(), &mut body_excerpt),
        )
        .await
        {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the body broke off: {}", describe(&e))),
            Err(_) => Some(format!(
                "the body did not finish within {:?}",
                request.timeout
            )),
        };
        let error = if status.is_success() {
            if let Some(cut) = &cut_short {
                tracing::debug!(%host, status = status.as_u16(), %cut, "2xx answer with an incomplete body");
            }
            None
        } else {
            let mut detail = status_detail(status);
            if let Some(cut) = cut_short {
                detail = format!("{detail} ({cut})");
            }
            Some((ErrorCode::HttpStatus, detail))
        };
        SendOutcome {
            status_code: Some(status.as_u16()),
            error,
            headers,
            body_excerpt,
            duration: Duration::ZERO,
        }
    }
}

#[async_trait]
impl Sender for HttpSender {
    async fn send(&self, request: OutboundRequest) -> SendOutcome {
        let started = Instant::now();
        let host = request.url.host_str().unwrap_or_default().to_owned();
        let mut outcome = self.attempt(request).await;
        outcome.duration = started.elapsed();
        if let Some((code, _)) = &outcome.error {
            tracing::debug!(
                %host,
                code = code.as_str(),
                status = outcome.status_code,
                duration_ms = outcome.duration.as_millis() as u64,
                "delivery attempt did not succeed"
            );
        }
        outcome
    }
}

/// System roots plus the operator's bundle.
fn root_store(ca_bundle: Option<&Path>) -> Result<RootCertStore, SenderBuildError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "some system CA certificates could not be loaded");
    }
    // Individual unparsable system certificates are skipped rather than fatal: one odd
    // file in /etc/ssl/certs should not stop deliveries.
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "system CA certificates rustls cannot use were skipped"
        );
    }

    if let Some(path) = ca_bundle {
        let unreadable = |source| SenderBuildError::CaBundleUnreadable {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(unreadable)?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut BufReader::new(file))
            .collect::<Result<_, _>>()
            .map_err(unreadable)?;
        if certs.is_empty() {
            return Err(SenderBuildError::CaBundleEmpty {
                path: path.to_owned(),
            });
        }
        // Unlike system roots, every certificate here was put there on purpose, so a bad
        // one is a configuration mistake worth stopping for.
        for cert in certs {
            roots
                .add(cert)
                .map_err(|source| SenderBuildError::CaBundleRejected {
                    path: path.to_owned(),
                    source,
                })?;
        }
    }

    if roots.is_empty() {
        // Not fatal: plain-http deployments and tests work without roots, and every
        // https attempt will say `tls` with an unknown-issuer detail.
        tracing::warn!("no trusted CA certificates: every https delivery will fail");
    }
    Ok(roots)
}

/// The certificates of PEM text given through the API (at least one).
pub fn pem_certificates(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, SenderBuildError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| SenderBuildError::DestinationTls(format!("{what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(SenderBuildError::DestinationTls(format!(
            "{what} holds no PEM certificates"
        )));
    }
    Ok(certs)
}

/// Reads until the end of the body or [`BODY_READ_LIMIT`], keeping the first
/// [`BODY_EXCERPT_LIMIT`] bytes. Dropping the rest unread makes hyper close (HTTP/1) or
/// reset (HTTP/2) rather than drain it.
async fn read_excerpt(mut body: Incoming, excerpt: &mut Vec<u8>) -> Result<(), hyper::Error> {
    let mut read = 0usize;
    while read < BODY_READ_LIMIT {
        let Some(frame) = body.frame().await else {
            return Ok(());
        };
        if let Ok(data) = frame?.into_data() {
            read += data.len();
            let room = BODY_EXCERPT_LIMIT.saturating_sub(excerpt.len());
            excerpt.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    Ok(())
}

fn kept_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut kept = BTreeMap::new();
    for &name in KEPT_RESPONSE_HEADERS {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if values.is_empty() {
            continue;
        }
        let mut joined = values.join(", ");
        if joined.len() > HEADER_VALUE_LIMIT {
            let mut end = HEADER_VALUE_LIMIT;
            while !joined.is_char_boundary(end) {
                end -= 1;
            }
            joined.truncate(end);
        }
        kept.insert(name.to_owned(), joined);
    }
    kept
}

fn status_detail(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Every error in the chain, payloads of `io::Error` included: `io::Error::source`
/// skips straight past its own payload, and that payload is exactly where the TLS
/// layer puts its `rustls::Error` (and hyper-rustls wraps that io::Error in another).
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |&e: &&'a (dyn StdError + 'static)| match e
        .downcast_ref::<io::Error>()
    {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => e.source(),
    })
}

fn find<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    chain(err).find_map(|e| e.downcast_ref::<T>())
}

/// The chain's messages joined, without the repeats that wrapping io::Errors produce.
fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in chain(err) {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn classify(
    err: &hyper_util::client::legacy::Error,
    host: &str,
    https: bool,
) -> (ErrorCode, String) {
    let root: &(dyn StdError + 'static) = err;
    // hyper-util's own message ("client error (Connect)") says nothing to a reader.
    let cause = err.source().unwrap_or(root);

    if let Some(connect) = find::<ConnectError>(root) {
        return match connect {
            ConnectError::Blocked(blocked) => (
                ErrorCode::BlockedTarget,
                format!("refused to connect to {host}: {blocked}"),
            ),
            ConnectError::Dns(msg) => (ErrorCode::Dns, format!("DNS lookup failed: {msg}")),
            ConnectError::Connect(e) => (
                ErrorCode::Connect,
                format!("could not connect to {host}: {e}"),
            ),
            // The host is unreachable rather than slow to answer: the callback's own
            // timeout had not run out, only the per-connect one.
            ConnectError::Timeout => (
                ErrorCode::Connect,
                format!("TCP connect to {host} timed out"),
            ),
            ConnectError::InvalidUri => (
                ErrorCode::Protocol,
                format!("the URL has no usable host and port ({host})"),
            ),
        };
    }
    if let Some(tls) = find::<rustls::Error>(root) {
        return (
            ErrorCode::Tls,
            format!("TLS handshake with {host} failed: {tls}"),
        );
    }
    if err.is_connect() {
        // Our connector's failures were handled above, so TCP connected and what
        // failed is the layer on top: the handshake, cut off without a TLS alert.
        let code = if https {
            ErrorCode::Tls
        } else {
            ErrorCode::Connect
        };
        let what = if https {
            "TLS handshake with"
        } else {
            "could not connect to"
        };
        return (code, format!("{what} {host} failed: {}", describe(cause)));
    }
    if let Some(io) = find::<io::Error>(root) {
        if matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::NotConnected
        ) {
            return (
                ErrorCode::Connect,
                format!("connection to {host} was reset before an answer: {io}"),
            );
        }
    }
    (
        ErrorCode::Protocol,
        format!("exchange with {host} failed: {}", describe(cause)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_sees_through_nested_io_errors() {
        let inner = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let outer = io::Error::other(inner);
        let root: &(dyn StdError + 'static) = &outer;
        assert!(
            root.source()
                .is_none_or(|s| s.downcast_ref::<rustls::Error>().is_none()),
            "std changed: io::Error::source now yields its payload"
        );
        assert!(find::<rustls::Error>(root).is_some());
        assert_eq!(
            describe(root),
            "invalid peer certificate: UnknownIssuer",
            "repeats are dropped"
        );
    }

    #[test]
    fn kept_headers_are_filtered_joined_and_capped() {
        let mut h = HeaderMap::new();
        h.insert("Retry-After", "120".parse().unwrap());
        h.insert("set-cookie", "session=secret".parse().unwrap());
        h.append("x-request-id", "a".parse().unwrap());
        h.append("x-request-id", "b".parse().unwrap());
        h.insert("server", "x".repeat(5000).parse().unwrap());
        h.insert(
            "location",
            http::HeaderValue::from_bytes(b"/caf\xe9").unwrap(),
        );
        let kept = kept_headers(&h);
        assert_eq!(
            kept.keys().collect::<Vec<_>>(),
            ["location", "retry-after", "server", "x-request-id"]
        );
        assert_eq!(kept["retry-after"], "120");
        assert_eq!(kept["x-request-id"], "a, b");
        assert_eq!(kept["server"].len(), HEADER_VALUE_LIMIT);
        assert_eq!(kept["location"], "/caf\u{fffd}");
    }

    #[test]
    fn status_detail_names_code_and_reason() {
        assert_eq!(
            status_detail(StatusCode::SERVICE_UNAVAILABLE),
            "HTTP 503 Service Unavailable"
        );
        assert_eq!(
            status_detail(StatusCode::from_u16(599).unwrap()),
            "HTTP 599"
        );
    }

    #[test]
    fn config_defaults() {
        let c = SenderConfig::default();
        assert_eq!(c.policy, TargetPolicy::public_only());
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.pool_idle_per_host, 64);
        assert!(c.ca_bundle.is_none());
    }
}
