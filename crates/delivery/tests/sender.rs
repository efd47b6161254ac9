//! The HTTP sender against real servers on loopback. Nothing here dials beyond
//! 127.0.0.0/8 and ::1; every wait is bounded.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fluxcb_core::attempt::{ErrorCode, SendOutcome, BODY_EXCERPT_LIMIT};
use fluxcb_core::callback::{validate_url, Method};
use fluxcb_core::ports::{OutboundRequest, Sender};
use fluxcb_core::target::{parse_allow_list, TargetPolicy};
use fluxcb_delivery::sender::{ClientIdentity, HttpSender, SenderBuildError, SenderConfig};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(5);

fn loopback_policy() -> TargetPolicy {
    TargetPolicy::with_allowed(parse_allow_list("127.0.0.0/8").unwrap())
}

fn sender(policy: TargetPolicy) -> HttpSender {
    HttpSender::new(SenderConfig::new(policy)).unwrap()
}

fn request(url: &str, timeout: Duration) -> OutboundRequest {
    OutboundRequest {
        url: validate_url(url).unwrap(),
        method: Method::Post,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("X-Custom".into(), "yes".into()),
        ],
        body: br#"{"hello":"world"}"#.to_vec(),
        timeout,
    }
}

/// Sends with an outer bound, so a sender bug fails the test instead of hanging it.
async fn send(sender: &HttpSender, req: OutboundRequest) -> SendOutcome {
    let bound = req.timeout + PATIENCE;
    tokio::time::timeout(bound, sender.send(req))
        .await
        .expect("the sender overran the request's timeout")
}

fn code(outcome: &SendOutcome) -> Option<ErrorCode> {
    outcome.error_code()
}

fn detail(outcome: &SendOutcome) -> &str {
    outcome
        .error
        .as_ref()
        .map(|(_, d)| d.as_str())
        .unwrap_or("")
}

/// A listener on 127.0.0.1 that counts connections and hands each to `handler`.
struct Server {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handler(stream));
            }
        });
        Self {
            addr,
            accepts,
            task,
        }
    }

    /// Accepts and counts, nothing more: proves nobody came.
    async fn canary() -> Self {
        Self::start(|stream| async move { drop(stream) }).await
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Handling = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One request (head and Content-Length body), or None at end of stream.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf);
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Answers every request on the connection with `response` (keep-alive).
fn answering(response: &'static [u8]) -> impl Fn(TcpStream) -> Handling {
    move |mut stream| {
        Box::pin(async move {
            while read_request(&mut stream).await.is_some() {
                if stream.write_all(response).await.is_err() {
                    return;
                }
            }
        })
    }
}

#[tokio::test]
async fn a_2xx_is_delivered_with_excerpt_and_kept_headers() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let server = Server::start(move |mut stream| {
        let seen_tx = seen_tx.clone();
        async move {
            let req = read_request(&mut stream).await.unwrap();
            seen_tx.send(req).unwrap();
            let body = "thanks";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-request-id: r-1\r\n\
                 set-cookie: session=abc\r\nserver: test\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
        }
    })
    .await;

    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/hook?x=1#frag"), PATIENCE),
    )
    .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.status_code, Some(200));
    assert_eq!(outcome.body_excerpt, b"thanks");
    assert_eq!(
        outcome.headers.keys().collect::<Vec<_>>(),
        ["content-type", "server", "x-request-id"]
    );
    assert_eq!(outcome.headers["x-request-id"], "r-1");
    assert!(outcome.duration > Duration::ZERO);

    let raw = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(raw.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{raw}");
    let lower = raw.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-custom: yes\r\n"), "{raw}");
    assert!(
        lower.contains("\r\ncontent-type: application/json\r\n"),
        "{raw}"
    );
    assert!(
        lower.contains(&format!("\r\nhost: {}\r\n", server.addr)),
        "{raw}"
    );
    assert!(raw.ends_with("\r\n\r\n{\"hello\":\"world\"}"), "{raw}");
}

#[tokio::test]
async fn a_500_is_an_http_status_failure_with_its_code() {
    let server = Server::start(answering(
        b"HTTP/1.1 500 Internal Server Error\r\nretry-after: 30\r\ncontent-length: 4\r\n\r\noops",
    ))
    .await;
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), PATIENCE),
    )
    .await;
    assert!(!outcome.is_success());
    assert_eq!(outcome.status_code, Some(500));
    assert_eq!(code(&outcome), Some(ErrorCode::HttpStatus));
    assert_eq!(detail(&outcome), "HTTP 500 Internal Server Error");
    assert_eq!(outcome.headers["retry-after"], "30");
    assert_eq!(outcome.body_excerpt, b"oops");
}

#[tokio::test]
async fn redirects_are_reported_not_followed() {
    let elsewhere = Server::canary().await;
    let response: &'static [u8] = format!(
        "HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\n\r\n",
        elsewhere.url("/stolen")
    )
    .into_bytes()
    .leak();
    let server = Server::start(answering(response)).await;
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), PATIENCE),
    )
    .await;
    assert_eq!(outcome.status_code, Some(302));
    assert_eq!(code(&outcome), Some(ErrorCode::HttpStatus));
    assert_eq!(detail(&outcome), "HTTP 302 Found");
    assert_eq!(outcome.headers["location"], elsewhere.url("/stolen"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(elsewhere.accepts(), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_silent_server_times_out_on_time() {
    let server = Server::start(|mut stream| async move {
        read_request(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), timeout),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(code(&outcome), Some(ErrorCode::Timeout), "{outcome:?}");
    assert_eq!(outcome.status_code, None);
    assert!(took >= timeout && took < timeout * 5, "{took:?}");
    assert!(outcome.duration >= timeout, "{:?}", outcome.duration);
}

/// Writes a status line and a little body, then stalls.
fn stalling(head: &'static str) -> impl Fn(TcpStream) -> Handling {
    move |mut stream| {
        Box::pin(async move {
            read_request(&mut stream).await;
            let response = format!("{head}\r\ncontent-length: 1000\r\n\r\nhello");
            stream.write_all(response.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
    }
}

#[tokio::test]
async fn a_2xx_whose_body_stalls_still_counts_as_delivered() {
    let server = Server::start(stalling("HTTP/1.1 200 OK")).await;
    let timeout = Duration::from_millis(400);
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), timeout),
    )
    .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.status_code, Some(200));
    assert_eq!(outcome.body_excerpt, b"hello");
    assert!(outcome.duration >= timeout);
}

#[tokio::test]
async fn a_non_2xx_whose_body_stalls_keeps_its_status() {
    let server = Server::start(stalling("HTTP/1.1 503 Service Unavailable")).await;
    let timeout = Duration::from_millis(400);
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), timeout),
    )
    .await;
    assert_eq!(outcome.status_code, Some(503));
    assert_eq!(code(&outcome), Some(ErrorCode::HttpStatus));
    assert!(
        detail(&outcome).starts_with("HTTP 503 Service Unavailable (the body did not finish"),
        "{outcome:?}"
    );
    assert_eq!(outcome.body_excerpt, b"hello");
}

#[tokio::test]
async fn a_10_mb_body_is_cut_to_the_excerpt() {
    const SIZE: usize = 10 * 1024 * 1024;
    let server = Server::start(|mut stream| async move {
        read_request(&mut stream).await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let started = Instant::now();
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), Duration::from_secs(30)),
    )
    .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.body_excerpt, vec![b'x'; BODY_EXCERPT_LIMIT]);
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
}

/// An endless body: only a reader that stops by itself returns before the timeout.
#[tokio::test]
async fn an_endless_body_is_abandoned_after_the_read_limit() {
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let server = Server::start(move |mut stream| {
        let counter = counter.clone();
        async move {
            read_request(&mut stream).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut chunk = format!("{:x}\r\n", 16 * 1024).into_bytes();
            chunk.extend(std::iter::repeat_n(b'y', 16 * 1024));
            chunk.extend_from_slice(b"\r\n");
            while stream.write_all(&chunk).await.is_ok() {
                counter.fetch_add(16 * 1024, Ordering::SeqCst);
            }
        }
    })
    .await;
    let timeout = Duration::from_secs(20);
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), timeout),
    )
    .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.body_excerpt.len(), BODY_EXCERPT_LIMIT);
    assert!(outcome.duration < timeout / 4, "{:?}", outcome.duration);
}

#[tokio::test]
async fn a_reset_before_the_answer_is_connect_or_protocol() {
    let server = Server::start(|mut stream| async move {
        read_request(&mut stream).await;
        stream.set_zero_linger().unwrap();
        drop(stream);
    })
    .await;
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), PATIENCE),
    )
    .await;
    assert!(
        matches!(
            code(&outcome),
            Some(ErrorCode::Connect | ErrorCode::Protocol)
        ),
        "{outcome:?}"
    );
    assert_eq!(outcome.status_code, None);
}

#[tokio::test]
async fn a_close_without_an_answer_is_a_protocol_error() {
    let server = Server::start(|mut stream| async move {
        read_request(&mut stream).await;
        stream.shutdown().await.ok();
    })
    .await;
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), PATIENCE),
    )
    .await;
    assert_eq!(code(&outcome), Some(ErrorCode::Protocol), "{outcome:?}");
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_protocol_error() {
    let server = Server::start(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")).await;
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), PATIENCE),
    )
    .await;
    assert_eq!(code(&outcome), Some(ErrorCode::Protocol), "{outcome:?}");
    assert_eq!(outcome.status_code, None);
}

#[tokio::test]
async fn a_refused_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let outcome = send(
        &sender(loopback_policy()),
        request(&format!("http://{addr}/"), PATIENCE),
    )
    .await;
    assert_eq!(code(&outcome), Some(ErrorCode::Connect), "{outcome:?}");
    assert!(detail(&outcome).contains(&addr.to_string()), "{outcome:?}");
}

#[tokio::test]
async fn loopback_targets_are_blocked_before_any_connection() {
    let canary = Server::canary().await;
    let port = canary.port();
    let public = sender(TargetPolicy::public_only());
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://[::1]:{port}/"),
    ] {
        let outcome = send(&public, request(&url, PATIENCE)).await;
        assert_eq!(
            code(&outcome),
            Some(ErrorCode::BlockedTarget),
            "{url}: {outcome:?}"
        );
        assert!(
            detail(&outcome).contains("loopback") || detail(&outcome).contains("unspecified"),
            "{url}: {outcome:?}"
        );
        assert_eq!(outcome.status_code, None);
    }
    let outcome = send(
        &public,
        request(&format!("http://127.0.0.1:{port}/"), PATIENCE),
    )
    .await;
    assert_eq!(
        detail(&outcome),
        "refused to connect to 127.0.0.1: 127.0.0.1 is not a public address (loopback)"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary.accepts(), 0, "a blocked target was dialled");
}

#[tokio::test]
async fn an_allow_listed_range_goes_through() {
    let server = Server::start(answering(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
    let outcome = send(
        &sender(loopback_policy()),
        request(&server.url("/"), PATIENCE),
    )
    .await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.status_code, Some(204));
    assert_eq!(server.accepts(), 1);
}

/// A name whose answer mixes an allowed address with a refused one is refused whole,
/// even when the allowed one comes first and would have answered.
#[tokio::test]
async fn a_mixed_dns_answer_is_refused_whole() {
    let canary = Server::canary().await;
    let port = canary.port();
    let only_one = TargetPolicy::with_allowed(parse_allow_list("127.0.0.1").unwrap());
    let mixed = HttpSender::with_resolver(
        SenderConfig::new(only_one.clone()),
        move |host: &str, port: u16| {
            assert_eq!(host, "hooks.test");
            Ok(vec![
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from(([127, 0, 0, 2], port)),
            ])
        },
    )
    .unwrap();
    let outcome = send(
        &mixed,
        request(&format!("http://hooks.test:{port}/"), PATIENCE),
    )
    .await;
    assert_eq!(
        code(&outcome),
        Some(ErrorCode::BlockedTarget),
        "{outcome:?}"
    );
    assert_eq!(
        detail(&outcome),
        "refused to connect to hooks.test: 127.0.0.2 is not a public address (loopback)"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(canary.accepts(), 0);

    // Control: the same name answering only the allowed address is delivered to.
    let server = Server::start(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
    let clean = HttpSender::with_resolver(SenderConfig::new(only_one), |_: &str, port: u16| {
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    })
    .unwrap();
    let outcome = send(
        &clean,
        request(&format!("http://hooks.test:{}/", server.port()), PATIENCE),
    )
    .await;
    assert!(outcome.is_success(), "{outcome:?}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_dns_error() {
    let failing = HttpSender::with_resolver(
        SenderConfig::new(loopback_policy()),
        |_: &str, _: u16| -> std::io::Result<Vec<SocketAddr>> {
            Err(std::io::Error::other("no such host"))
        },
    )
    .unwrap();
    let outcome = send(&failing, request("http://nx.test/", PATIENCE)).await;
    assert_eq!(code(&outcome), Some(ErrorCode::Dns), "{outcome:?}");
    assert!(detail(&outcome).contains("nx.test"), "{outcome:?}");
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let server = Server::start(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let sender = sender(loopback_policy());
    for _ in 0..3 {
        let outcome = send(&sender, request(&server.url("/"), PATIENCE)).await;
        assert!(outcome.is_success(), "{outcome:?}");
        // The pool takes the connection back on a background task once the body is
        // read; without a pause the next request could race it and dial afresh.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn the_timeout_bounds_a_request_that_cannot_connect_in_time() {
    // A full accept backlog makes later SYNs wait; zero backlog is clamped by the
    // kernel, so fill it instead: connect until a connect stalls.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
        assert!(held.len() < 64, "the backlog never filled");
    }
    let timeout = Duration::from_millis(300);
    let outcome = send(
        &sender(loopback_policy()),
        request(&format!("http://{addr}/"), timeout),
    )
    .await;
    assert!(
        matches!(code(&outcome), Some(ErrorCode::Timeout)),
        "{outcome:?}"
    );
    assert!(outcome.duration < timeout * 5, "{:?}", outcome.duration);
    drop(listener);
}

// TLS (tests/fixtures, also used by the fluxcb crate's tests): a private CA and a certificate
// for localhost, 127.0.0.1 and ::1, valid until 2126, made with openssl for these tests only.

const TEST_CA_PEM: &str = include_str!("fixtures/server-ca.pem");

const TEST_LEAF_PEM: &str = include_str!("fixtures/server.pem");

const TEST_LEAF_KEY: &str = include_str!("fixtures/server.key");

struct TempFile(PathBuf);

impl TempFile {
    fn with(name: &str, contents: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("fluxcb-sender-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An HTTPS server offering h2 and http/1.1 that answers with the HTTP version used.
async fn tls_server() -> Server {
    let certs = rustls_pemfile::certs(&mut TEST_LEAF_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut TEST_LEAF_KEY.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Server::start(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                let version = format!("{:?}", req.version());
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(version))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    })
    .await
}

fn https_url(server: &Server) -> String {
    format!("https://127.0.0.1:{}/hook", server.port())
}

#[tokio::test]
async fn https_with_the_ca_bundle_speaks_http2_over_one_connection() {
    let server = tls_server().await;
    let bundle = TempFile::with("ca.pem", TEST_CA_PEM);
    let sender = HttpSender::new(SenderConfig {
        ca_bundle: Some(bundle.0.clone()),
        ..SenderConfig::new(loopback_policy())
    })
    .unwrap();
    for _ in 0..2 {
        let outcome = send(&sender, request(&https_url(&server), PATIENCE)).await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(outcome.body_excerpt, b"HTTP/2.0");
    }
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn https_to_an_unknown_ca_is_a_tls_error() {
    let server = tls_server().await;
    let outcome = send(
        &sender(loopback_policy()),
        request(&https_url(&server), PATIENCE),
    )
    .await;
    assert_eq!(code(&outcome), Some(ErrorCode::Tls), "{outcome:?}");
    assert!(detail(&outcome).contains("UnknownIssuer"), "{outcome:?}");
}

#[tokio::test]
async fn https_to_a_plain_http_port_is_a_tls_error() {
    // What a plain HTTP server does with a ClientHello: call it a bad request.
    let server = Server::start(|mut stream| async move {
        let mut hello = [0u8; 512];
        let _ = stream.read(&mut hello).await;
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
        let _ = stream.shutdown().await;
    })
    .await;
    let url = format!("https://127.0.0.1:{}/", server.port());
    let outcome = send(&sender(loopback_policy()), request(&url, PATIENCE)).await;
    assert_eq!(code(&outcome), Some(ErrorCode::Tls), "{outcome:?}");
}

#[tokio::test]
async fn https_to_a_server_that_hangs_up_mid_handshake_is_a_tls_error() {
    let server = Server::start(|mut stream| async move {
        let mut hello = [0u8; 16];
        let _ = stream.read(&mut hello).await;
    })
    .await;
    let url = format!("https://127.0.0.1:{}/", server.port());
    let outcome = send(&sender(loopback_policy()), request(&url, PATIENCE)).await;
    assert_eq!(code(&outcome), Some(ErrorCode::Tls), "{outcome:?}");
}

#[test]
fn ca_bundle_problems_stop_the_build() {
    let with = |path: PathBuf| {
        HttpSender::new(SenderConfig {
            ca_bundle: Some(path),
            ..SenderConfig::default()
        })
    };
    let missing = std::env::temp_dir().join("fluxcb-sender-test-no-such-bundle.pem");
    assert!(matches!(
        with(missing),
        Err(SenderBuildError::CaBundleUnreadable { .. })
    ));
    let empty = TempFile::with("empty.pem", "");
    assert!(matches!(
        with(empty.0.clone()),
        Err(SenderBuildError::CaBundleEmpty { .. })
    ));
    let key_only = TempFile::with("key-only.pem", TEST_LEAF_KEY);
    let err = with(key_only.0.clone()).unwrap_err();
    assert!(
        matches!(err, SenderBuildError::CaBundleEmpty { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("key-only.pem"), "{err}");
    let garbled = TempFile::with(
        "garbled.pem",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    );
    assert!(with(garbled.0.clone()).is_err());
    let good = TempFile::with("good.pem", TEST_CA_PEM);
    assert!(with(good.0.clone()).is_ok());
}

// mTLS: a second private CA that signs client certificates, and one client certificate with its
// key, valid until 2126, made with openssl for these tests only.

const TEST_CLIENT_CA_PEM: &str = include_str!("fixtures/client-ca.pem");

const TEST_CLIENT_PEM: &str = include_str!("fixtures/client.pem");

const TEST_CLIENT_KEY: &str = include_str!("fixtures/client.key");

/// An HTTPS server that insists on a client certificate from the client CA, and answers with
/// how many certificates the client presented.
async fn mtls_server() -> Server {
    let certs = rustls_pemfile::certs(&mut TEST_LEAF_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut TEST_LEAF_KEY.as_bytes())
        .unwrap()
        .unwrap();
    let mut client_roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut TEST_CLIENT_CA_PEM.as_bytes()) {
        client_roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Server::start(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let presented = tls.get_ref().1.peer_certificates().map_or(0, |c| c.len());
            let service =
                hyper::service::service_fn(move |_req: hyper::Request<Incoming>| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                        "client certificates: {presented}"
                    )))))
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    })
    .await
}

fn identity() -> ClientIdentity {
    ClientIdentity {
        certificate_chain_pem: TEST_CLIENT_PEM.to_owned(),
        key_pem: TEST_CLIENT_KEY.to_owned(),
    }
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_a_receiver_that_asks() {
    let server = mtls_server().await;
    let sender = HttpSender::new(SenderConfig {
        extra_roots_pem: Some(TEST_CA_PEM.to_owned()),
        client_identity: Some(identity()),
        ..SenderConfig::new(loopback_policy())
    })
    .unwrap();
    let outcome = send(&sender, request(&https_url(&server), PATIENCE)).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(outcome.body_excerpt, b"client certificates: 1");

    // The same receiver refuses a client without one; trusting its CA is not enough.
    let anonymous = HttpSender::new(SenderConfig {
        extra_roots_pem: Some(TEST_CA_PEM.to_owned()),
        ..SenderConfig::new(loopback_policy())
    })
    .unwrap();
    let outcome = send(&anonymous, request(&https_url(&server), PATIENCE)).await;
    assert!(!outcome.is_success(), "{outcome:?}");
}

#[test]
fn a_destination_tls_setting_that_cannot_be_used_stops_the_build() {
    let with = |config: SenderConfig| HttpSender::new(config).unwrap_err();
    let base = || SenderConfig::new(loopback_policy());
    let no_cert = with(SenderConfig {
        extra_roots_pem: Some("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into()),
        ..base()
    });
    assert!(
        matches!(no_cert, SenderBuildError::DestinationTls(_)),
        "{no_cert}"
    );
    let keyless = with(SenderConfig {
        client_identity: Some(ClientIdentity {
            certificate_chain_pem: TEST_CLIENT_PEM.to_owned(),
            key_pem: TEST_CLIENT_PEM.to_owned(),
        }),
        ..base()
    });
    assert!(
        keyless.to_string().contains("no PEM private key"),
        "{keyless}"
    );
}
