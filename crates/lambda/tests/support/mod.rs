//! What the Lambda entry-point tests share: the AWS emulator (moto) with the real AWS SDK, a
//! fresh table and queues per test, the functions' settings, the stored event fixtures, and a
//! receiver on loopback that records the callbacks it gets.
//!
//! The emulator logic is the CLI tests' (`crates/cli/tests/common/aws.rs`): `.ci/run` starts moto
//! and sets `FLUXCB_TEST_AWS_ENDPOINT`; without it the tests start `moto_server` themselves if
//! they find it (on PATH or in the CI's venv), and otherwise skip with a loud message, except
//! under `CI=true`, where a missing emulator is a failure.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use fluxcb::aws_backend::AwsParts;
use fluxcb::config::{Config, Settings};
use fluxcb_aws::{AwsClients, AwsResources};

/// The admin key in the API Gateway fixtures' `Authorization` header.
pub const FIXTURE_API_KEY: &str = "fxk_lambda_fixture_admin_key_4f0c2a9e";
/// The callback id the GET fixture names; tests put a real one in its place.
pub const FIXTURE_GET_ID: &str = "cb_00000000000000000000000000";

/// A stored event, as text (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

static ENDPOINT: OnceLock<Option<String>> = OnceLock::new();

fn find_moto_server() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(python) = std::env::var("FLUXCB_TEST_PYTHON") {
        if let Some(dir) = PathBuf::from(python).parent() {
            candidates.push(dir.join("moto_server"));
        }
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/fluxcb/venv/bin/moto_server"));
    }
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("moto_server")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn free_loopback_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

fn wait_until_listening(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Starts moto for this test process; a watchdog shell stops it when the process exits.
fn start_moto(binary: &Path) -> Option<String> {
    let port = free_loopback_port();
    let script = format!(
        "{} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {} 2>/dev/null; do sleep 1; done; kill $m",
        binary.display(),
        std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .spawn()
        .ok()?;
    wait_until_listening(port).then(|| format!("http://127.0.0.1:{port}"))
}

/// The emulator's URL, or `None` (after saying so) when the AWS tests cannot run here.
pub fn endpoint() -> Option<String> {
    ENDPOINT
        .get_or_init(|| {
            let found = std::env::var("FLUXCB_TEST_AWS_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .or_else(|| find_moto_server().and_then(|b| start_moto(&b)));
            match &found {
                Some(url) => {
                    // The SDK reads these; the same for every test in the process.
                    std::env::set_var("AWS_ENDPOINT_URL", url);
                    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
                    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
                    std::env::set_var("AWS_REGION", "us-east-1");
                    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
                    std::env::remove_var("AWS_PROFILE");
                }
                None if std::env::var("CI").as_deref() == Ok("true") => {
                    panic!("CI=true but no AWS emulator: set FLUXCB_TEST_AWS_ENDPOINT or install moto[server]")
                }
                // Straight to stderr: the test harness captures `eprintln!` of passing tests.
                None => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n*** SKIPPING Lambda entry-point tests against AWS: no moto_server found. \
                         `pip install \"moto[server]\"` or set FLUXCB_TEST_AWS_ENDPOINT (bash .ci/run \
                         does both). ***\n"
                    );
                }
            }
            found
        })
        .clone()
}

/// What a function has after its cold start, on a fresh table and queues.
pub struct Function {
    pub settings: Settings,
    pub parts: AwsParts,
}

/// A fresh table and queues (created as `fluxcb aws bootstrap` does) and the settings a
/// function would read from its environment, with `customize` applied; `None` when the
/// emulator is missing outside CI.
pub async fn function(customize: impl FnOnce(&mut Config)) -> Option<Function> {
    endpoint()?;
    let clients = AwsClients::from_env().await;
    let prefix = format!(
        "l{}",
        fluxcb_core::id::CallbackId::generate()
            .ulid()
            .to_string()
            .to_lowercase()
    );
    let resources: AwsResources = fluxcb_aws::bootstrap::bootstrap(&clients, &prefix)
        .await
        .expect("bootstrap against moto");
    let mut config = Config {
        backend: "aws".into(),
        api_key: Some(FIXTURE_API_KEY.into()),
        allow_private_targets: "127.0.0.0/8".into(),
        retry_schedule: "50ms,100ms,150ms".into(),
        timeout_ms: 2_000,
        log_format: "json".into(),
        sweep_interval: "1s".into(),
        sweep_grace: "1s".into(),
        dynamodb_table: resources.table.clone(),
        sqs_queue_url: resources.queue_url.clone(),
        sqs_dlq_url: resources.dlq_url.clone(),
        ..Config::default()
    };
    customize(&mut config);
    let settings = config.validate().expect("test settings are valid");
    let parts = AwsParts::new(&settings, resources, clients);
    Some(Function { settings, parts })
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A receiver on 127.0.0.1 that answers 200 to everything and records what it got.
pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(Received {
                        method,
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                    "ok"
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            received,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}
