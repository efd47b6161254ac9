//! The TCP connector every delivery dials through, enforcing the SSRF policy on the
//! addresses actually dialled.
//!
//! Checking a URL's host name at ingest proves nothing: DNS can answer differently at
//! send time (rebinding), and numeric spellings of loopback reach the network as IP
//! literals that skip DNS entirely. So the check sits here, between resolution and
//! `connect(2)`, where no later step can change the address.
//!
//! Proxies are deliberately absent: this connector never reads `HTTP_PROXY` and friends
//! and never tells hyper the connection is proxied, so a proxy variable in the
//! environment cannot route deliveries around the policy.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fluxcb_core::target::{BlockedAddress, TargetPolicy};
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one TCP connect (and the DNS lookup before it) may take unless configured.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An address the target resolved to (or the literal it named) is refused by the
    /// policy. Nothing was dialled.
    #[error("refusing to connect: {0}")]
    Blocked(BlockedAddress),
    /// The name did not resolve, resolved to nothing, or the lookup timed out.
    #[error("DNS lookup failed: {0}")]
    Dns(String),
    /// Every checked address refused, reset or was unreachable; this is the last error.
    #[error("TCP connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The last address tried did not accept within the connect timeout.
    #[error("TCP connect timed out")]
    Timeout,
    /// The URI has no host, or no port and a scheme without a default one.
    #[error("the URI has no usable host and port")]
    InvalidUri,
}

/// A resolution in progress.
pub type Resolving = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name into addresses. Exists so tests can answer with chosen addresses
/// (a rebinding attacker's mixed answer, say) without a DNS server.
///
/// Any `Fn(&str, u16) -> io::Result<Vec<SocketAddr>>` is a resolver.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

impl<F> Resolve for F
where
    F: Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
{
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        Box::pin(std::future::ready(self(host, port)))
    }
}

type Dialing = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

fn tcp_dial(addr: SocketAddr) -> Dialing {
    Box::pin(TcpStream::connect(addr))
}

/// A `tower::Service<Uri>` for `hyper_util`'s legacy client (directly for `http`, or
/// inside `hyper_rustls::HttpsConnector` for `https`) that only dials addresses the
/// [`TargetPolicy`] allows.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<TargetPolicy>,
    resolver: Arc<dyn Resolve>,
    connect_timeout: Duration,
    // A seam so unit tests can prove that nothing is dialled, without risking a real
    // packet to a public address if the code under test were wrong.
    dial: fn(SocketAddr) -> Dialing,
}

impl fmt::Debug for GuardedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedConnector")
            .field("policy", &self.policy)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl GuardedConnector {
    /// The system resolver and [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(policy: TargetPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
            resolver: Arc::new(SystemResolver),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            dial: tcp_dial,
        }
    }

    /// Bounds each TCP connect, and the DNS lookup, separately.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn with_resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The addresses `uri` would be dialled at, in order, once every one of them passed
    /// the policy.
    pub async fn checked_addresses(&self, uri: &Uri) -> Result<Vec<SocketAddr>, ConnectError> {
        let host = uri.host().ok_or(ConnectError::InvalidUri)?;
        let port = match uri.port_u16() {
            Some(port) => port,
            None if uri.scheme() == Some(&http::uri::Scheme::HTTP) => 80,
            None if uri.scheme() == Some(&http::uri::Scheme::HTTPS) => 443,
            None => return Err(ConnectError::InvalidUri),
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if bare.is_empty() {
            return Err(ConnectError::InvalidUri);
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.policy.check(ip).map_err(ConnectError::Blocked)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }

        let resolved =
            tokio::time::timeout(self.connect_timeout, self.resolver.resolve(bare, port))
                .await
                .map_err(|_| {
                    ConnectError::Dns(format!(
                        "looking up {bare} took longer than {:?}",
                        self.connect_timeout
                    ))
                })?
                .map_err(|e| ConnectError::Dns(format!("{bare}: {e}")))?;

        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(resolved.len());
        for addr in resolved {
            // One refused address condemns the whole answer: a rebinding attacker
            // mixes a public address with a private one and hopes the private one
            // gets tried (first, or after the public one fails).
            self.policy
                .check(addr.ip())
                .map_err(ConnectError::Blocked)?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(ConnectError::Dns(format!("{bare}: no addresses")));
        }
        Ok(addrs)
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let addrs = self.checked_addresses(&uri).await?;
        let mut last = ConnectError::Timeout;
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, (self.dial)(addr)).await {
                Ok(Ok(stream)) => {
                    // Requests are written in one go and answers are awaited, so Nagle
                    // would only add latency.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => {
                    // Same kind, so callers can still tell refused from reset; the
                    // address makes the detail useful when several were tried.
                    last = ConnectError::Connect(io::Error::new(e.kind(), format!("{addr}: {e}")));
                }
                Err(_) => last = ConnectError::Timeout,
            }
        }
        Err(last)
    }
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use fluxcb_core::target::{parse_allow_list, BlockReason};
    use tower::ServiceExt;

    use super::*;

    static DIALS: AtomicUsize = AtomicUsize::new(0);

    fn counting_dial(_: SocketAddr) -> Dialing {
        DIALS.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(io::Error::other("dialling is disabled in this test")) })
    }

    fn never_dials(connector: GuardedConnector) -> GuardedConnector {
        GuardedConnector {
            dial: counting_dial,
            ..connector
        }
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_name_with_one_blocked_answer_is_refused_before_dialling() {
        let before = DIALS.load(Ordering::SeqCst);
        let connector = never_dials(
            GuardedConnector::new(TargetPolicy::public_only()).with_resolver(
                |host: &str, port: u16| {
                    assert_eq!((host, port), ("rebind.example", 8080));
                    Ok(vec![
                        SocketAddr::from(([8, 8, 8, 8], port)),
                        SocketAddr::from(([127, 0, 0, 1], port)),
                    ])
                },
            ),
        );
        let err = connector
            .oneshot(uri("http://rebind.example:8080/hook"))
            .await
            .unwrap_err();
        match err {
            ConnectError::Blocked(b) => {
                assert_eq!(b.ip, IpAddr::from([127, 0, 0, 1]));
                assert_eq!(b.reason, BlockReason::Loopback);
            }
            other => panic!("expected Blocked, got {other:?}"),
        }
        assert_eq!(
            DIALS.load(Ordering::SeqCst),
            before,
            "something was dialled"
        );
    }

    #[tokio::test]
    async fn ip_literals_skip_the_resolver_and_are_checked() {
        let connector = GuardedConnector::new(TargetPolicy::public_only()).with_resolver(
            |_: &str, _: u16| -> io::Result<Vec<SocketAddr>> {
                panic!("IP literals must not be resolved")
            },
        );
        for (raw, reason) in [
            ("http://127.0.0.1/", BlockReason::Loopback),
            ("http://[::1]:8080/", BlockReason::Loopback),
            ("https://[::ffff:169.254.169.254]/", BlockReason::LinkLocal),
            ("http://0.0.0.0:9/", BlockReason::Unspecified),
        ] {
            match connector.checked_addresses(&uri(raw)).await {
                Err(ConnectError::Blocked(b)) => assert_eq!(b.reason, reason, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
        let ok = connector
            .checked_addresses(&uri("https://[2606:4700:4700::1111]/x"))
            .await
            .unwrap();
        assert_eq!(ok, vec!["[2606:4700:4700::1111]:443".parse().unwrap()]);
        let ok = connector
            .checked_addresses(&uri("http://8.8.8.8/x"))
            .await
            .unwrap();
        assert_eq!(ok, vec!["8.8.8.8:80".parse().unwrap()]);
    }

    #[tokio::test]
    async fn allowed_answers_keep_their_order_without_duplicates() {
        let policy = TargetPolicy::with_allowed(parse_allow_list("127.0.0.0/8").unwrap());
        let connector = GuardedConnector::new(policy).with_resolver(|_: &str, port: u16| {
            Ok(vec![
                SocketAddr::from(([127, 0, 0, 2], port)),
                SocketAddr::from(([8, 8, 4, 4], port)),
                SocketAddr::from(([127, 0, 0, 2], port)),
            ])
        });
        let addrs = connector
            .checked_addresses(&uri("https://svc.internal/"))
            .await
            .unwrap();
        assert_eq!(
            addrs,
            vec![
                "127.0.0.2:443".parse().unwrap(),
                "8.8.4.4:443".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn resolver_failures_and_empty_answers_are_dns_errors() {
        let failing = GuardedConnector::new(TargetPolicy::public_only()).with_resolver(
            |_: &str, _: u16| -> io::Result<Vec<SocketAddr>> {
                Err(io::Error::other("no such host"))
            },
        );
        match failing.checked_addresses(&uri("http://nx.example/")).await {
            Err(ConnectError::Dns(msg)) => assert!(msg.contains("nx.example"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let empty = GuardedConnector::new(TargetPolicy::public_only())
            .with_resolver(|_: &str, _: u16| Ok(Vec::new()));
        assert!(matches!(
            empty.checked_addresses(&uri("http://void.example/")).await,
            Err(ConnectError::Dns(_))
        ));
    }

    #[tokio::test]
    async fn a_uri_without_host_or_port_is_invalid() {
        let connector = GuardedConnector::new(TargetPolicy::public_only());
        for raw in ["/relative", "ftp://8.8.8.8/file"] {
            assert!(
                matches!(
                    connector.checked_addresses(&uri(raw)).await,
                    Err(ConnectError::InvalidUri)
                ),
                "{raw}"
            );
        }
    }

    #[tokio::test]
    async fn connects_to_an_allowed_loopback_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = TargetPolicy::with_allowed(parse_allow_list("127.0.0.0/8").unwrap());
        let io = GuardedConnector::new(policy)
            .oneshot(uri(&format!("http://127.0.0.1:{port}/")))
            .await
            .unwrap();
        assert!(io.inner().nodelay().unwrap());
        listener.accept().await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_port_is_a_connect_error_with_its_kind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let policy = TargetPolicy::with_allowed(parse_allow_list("127.0.0.1").unwrap());
        match GuardedConnector::new(policy)
            .oneshot(uri(&format!("http://127.0.0.1:{port}/")))
            .await
        {
            Err(ConnectError::Connect(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
