//! Shared test scaffolding: the real server on port 0 with a temporary data directory, and a
//! real receiver on loopback that records what it gets and answers as each path asks.
#![allow(dead_code)]

pub mod aws;
#[allow(dead_code)]
pub mod legacy_table;
pub mod ordered;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use fluxcb::app::App;
use fluxcb::config::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    pub key: String,
    pub http: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// What the app was built with (its backend, table and queues on AWS).
    pub config: Config,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        allow_private_targets: "127.0.0.0/8".into(),
        retry_schedule: "50ms,100ms,150ms".into(),
        timeout_ms: 2_000,
        ..Config::default()
    }
}

/// Which backend a shared test suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Aws,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    spawn_on(Backend::Sqlite, customize)
        .await
        .expect("the embedded backend always runs")
}

/// The app on `backend`, or `None` when that backend cannot run here (the AWS emulator is
/// missing outside CI; [`aws::endpoint`] says so loudly).
pub async fn spawn_on(backend: Backend, customize: impl FnOnce(&mut Config)) -> Option<TestApp> {
    // `FLUXCB_TEST_LOG=<filter>`: the in-process apps' logs on stderr.
    if let Ok(filter) = std::env::var("FLUXCB_TEST_LOG") {
        let filter = tracing_subscriber::EnvFilter::new(filter);
        let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr);
        let _ = fmt.with_env_filter(filter).try_init();
    }
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(data_dir.path());
    if backend == Backend::Aws {
        aws::endpoint()?;
        fresh_aws_resources(&mut config).await;
    }
    customize(&mut config);
    let settings = config.validate().expect("test config is valid");
    let built_with = config.clone();
    let app = App::build(&settings).await.expect("app builds");
    let addr = app.local_addr();
    let key = app
        .generated_admin_key
        .clone()
        .or_else(|| settings.api_key.clone())
        .expect("a fresh store generates an admin key");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Some(TestApp {
        addr,
        key,
        http: reqwest::Client::new(),
        data_dir,
        shutdown,
        server,
        config: built_with,
    })
}

/// A fresh table and queues for one test app, created the way `fluxcb aws bootstrap` does.
pub async fn fresh_aws_resources(config: &mut Config) {
    let clients = fluxcb_aws::AwsClients::from_env().await;
    let prefix = format!(
        "t{}",
        fluxcb_core::id::CallbackId::generate()
            .ulid()
            .to_string()
            .to_lowercase()
    );
    let r = fluxcb_aws::bootstrap::bootstrap(&clients, &prefix)
        .await
        .expect("bootstrap against moto");
    config.backend = "aws".into();
    config.dynamodb_table = r.table;
    config.sqs_queue_url = r.queue_url;
    config.sqs_dlq_url = r.dlq_url;
    config.sweep_interval = "1s".into();
    config.sweep_grace = "3s".into();
}

impl TestApp {
    /// `fluxcb <args>` as a child process on this app's records, as an operator runs the
    /// commands that open the store directly (`migrate …`): `--data-dir` on the embedded
    /// store; on AWS `--backend aws` with the app's table and queues and the emulator's
    /// endpoint and credentials ([`fluxcb_command`] inherits no `FLUXCB_*` variable).
    pub fn store_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = fluxcb_command(self.data_dir.path());
        cmd.args(args);
        if self.config.backend == "aws" {
            cmd.args(["--backend", "aws"])
                .env("FLUXCB_DYNAMODB_TABLE", &self.config.dynamodb_table)
                .env("FLUXCB_SQS_QUEUE_URL", &self.config.sqs_queue_url)
                .env("FLUXCB_SQS_DLQ_URL", &self.config.sqs_dlq_url)
                // Every writer of the table must agree on it (it is part of the `due` keys).
                .env("FLUXCB_SWEEP_GRACE", &self.config.sweep_grace);
            for var in [
                "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_REGION",
                "AWS_EC2_METADATA_DISABLED",
            ] {
                if let Ok(value) = std::env::var(var) {
                    cmd.env(var, value);
                }
            }
        } else {
            cmd.arg("--data-dir").arg(self.data_dir.path());
        }
        cmd
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_as(&self.key, path, body).await
    }

    pub async fn post_as(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_as(&self.key, path).await
    }

    pub async fn get_as(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    /// Creates a callback and returns its id.
    pub async fn create(&self, body: Value) -> String {
        let r = self.post("/v1/callbacks", &body).await;
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert_eq!(status, 202, "create failed: {v}");
        v["id"].as_str().expect("id").to_owned()
    }

    /// Polls until the callback reaches `status` (or panics after `within`).
    pub async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get_json(&format!("/v1/callbacks/{id}")).await;
            if v["status"] == status {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "callback {id} did not become {status} within {within:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn signing_secret(&self) -> String {
        let v = self.get_json("/v1/signing-secrets").await;
        v["secrets"][0].as_str().expect("a secret").to_owned()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub method: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Default)]
struct Recorder {
    received: Arc<Mutex<Vec<Received>>>,
    /// Failures left per path for `/flaky/{n}` routes.
    flaky: Arc<Mutex<HashMap<String, u32>>>,
}

/// A receiver on 127.0.0.1 whose behaviour is chosen by the path:
/// `/ok`, `/status/{code}` (with `?retry_after=N`), `/hang/{ms}`, `/flaky/{n}/{name}` (fails n
/// times with 500, then 200).
pub struct TestReceiver {
    pub addr: SocketAddr,
    recorder: Recorder,
    _task: tokio::task::JoinHandle<()>,
}

impl TestReceiver {
    pub async fn start() -> Self {
        let recorder = Recorder::default();
        let app = Router::new()
            .route("/ok", any(ok))
            .route("/ok/{name}", any(ok))
            .route("/status/{code}", any(status))
            .route("/hang/{ms}", any(hang))
            .route("/flaky/{n}/{name}", any(flaky))
            .with_state(recorder.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            recorder,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.recorder.received.lock().unwrap().clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub async fn wait_for(&self, path: &str, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received_on(path);
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path} got {} requests, expected {count}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn record(
    rec: &Recorder,
    path: String,
    method: &axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) {
    rec.received.lock().unwrap().push(Received {
        path,
        method: method.to_string(),
        headers,
        body,
        at: Instant::now(),
    });
}

async fn ok(
    State(rec): State<Recorder>,
    uri: axum::http::Uri,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    record(&rec, uri.path().to_owned(), &method, headers, body);
    StatusCode::OK
}

async fn status(
    State(rec): State<Recorder>,
    Path(code): Path<u16>,
    Query(q): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&rec, uri.path().to_owned(), &method, headers, body);
    let mut r = (StatusCode::from_u16(code).unwrap(), "receiver says no").into_response();
    if let Some(s) = q.get("retry_after") {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_str(s).unwrap());
    }
    r
}

async fn hang(
    State(rec): State<Recorder>,
    Path(ms): Path<u64>,
    uri: axum::http::Uri,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    record(&rec, uri.path().to_owned(), &method, headers, body);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    StatusCode::OK
}

async fn flaky(
    State(rec): State<Recorder>,
    Path((n, _name)): Path<(u32, String)>,
    uri: axum::http::Uri,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    record(&rec, path.clone(), &method, headers, body);
    let mut flaky = rec.flaky.lock().unwrap();
    let seen = flaky.entry(path).or_insert(0);
    *seen += 1;
    if *seen <= n {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// A listener that accepts connections, reads a little, then resets them (RST), counting
/// how many it saw.
pub struct ResettingListener {
    pub addr: SocketAddr,
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl ResettingListener {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
                        .await;
                    let std = stream.into_std().unwrap();
                    let sock = socket2_linger_zero(std);
                    drop(sock);
                });
            }
        });
        Self { addr, accepted }
    }
}

fn socket2_linger_zero(stream: std::net::TcpStream) -> std::net::TcpStream {
    // SO_LINGER 0 makes close() send RST instead of FIN.
    let tokio_stream = tokio::net::TcpStream::from_std(stream).unwrap();
    // Deprecated because a non-zero linger blocks on drop; a zero linger resets at once.
    #[allow(deprecated)]
    tokio_stream.set_linger(Some(Duration::ZERO)).unwrap();
    tokio_stream.into_std().unwrap()
}

/// The admin key every [`ServeProcess`] is configured with (`FLUXCB_API_KEY`).
pub const PROCESS_API_KEY: &str = "fcb_process-test-key-0123456789abcd";

/// `fluxcb serve` as a child process, for what only a real process shows: `kill -9`, SIGTERM,
/// exit codes. Killed on drop so that a failing test leaves no server behind.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

/// The binary with no `FLUXCB_*` or `OTEL_*` variable inherited and the working directory set,
/// so neither the developer's environment nor a stray `./fluxcb.toml` changes what a test sees.
pub fn fluxcb_command(cwd: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fluxcb"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FLUXCB_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd);
    cmd
}

pub fn free_loopback_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr")
}

impl ServeProcess {
    /// Starts a server on `data_dir`, logging to `log` (appended, so restarts add to it), and
    /// waits until it answers. Prefers `addr` so clients keep their address across restarts,
    /// and moves to a fresh port if that one is taken.
    pub async fn start(
        data_dir: &std::path::Path,
        log: &std::path::Path,
        addr: Option<SocketAddr>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let mut candidate = addr.unwrap_or_else(free_loopback_addr);
        for _ in 0..5 {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("open server log");
            let err = out.try_clone().expect("clone log handle");
            let cwd = data_dir.parent().expect("data dir has a parent");
            let mut cmd = fluxcb_command(cwd);
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--listen")
                .arg(candidate.to_string())
                .env("FLUXCB_API_KEY", PROCESS_API_KEY)
                .env("FLUXCB_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8")
                .env("FLUXCB_RETRY_SCHEDULE", "50ms,100ms")
                .env("FLUXCB_LOG_FORMAT", "json")
                .envs(extra_env.iter().copied())
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut server = ServeProcess {
                child: cmd.spawn().expect("spawning fluxcb serve"),
                addr: candidate,
            };
            if server.wait_ready(Duration::from_secs(30)).await {
                return server;
            }
            candidate = free_loopback_addr();
        }
        panic!(
            "fluxcb serve did not start; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// True once `/healthz` answers; false if the process exited first (e.g. port taken).
    async fn wait_ready(&mut self, within: Duration) -> bool {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if let Ok(r) = http.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// `kill -9`: no handler runs; only what was committed survives.
    pub fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the killed server");
    }

    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
    }

    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every callback id in one status, following the list's cursors.
pub async fn ids_with_status(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    status: &str,
) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/callbacks?status={status}&limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = http.get(&url).bearer_auth(key).send().await.expect("list");
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        let page: Value = r.json().await.expect("json");
        for item in page["data"].as_array().expect("data array") {
            assert_eq!(item["status"], status);
            ids.insert(item["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
}
