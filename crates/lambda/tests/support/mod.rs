//! What the Lambda entry-point tests share: the AWS emulator (moto) with the real AWS SDK, a
//! fresh table and queues per test, the functions' settings, the stored event fixtures, and a
//! receiver on loopback that records the callbacks it gets.
//!
//! The emulator logic is the CLI tests' (`crates/cli/tests/common/aws.rs`, included): `.ci/run` starts moto
//! and sets `FLUXCB_TEST_AWS_ENDPOINT`; without it the tests start `moto_server` themselves if
//! they find it (on PATH or in the CI's venv), and otherwise skip with a loud message, except
//! under `CI=true`, where a missing emulator is a failure.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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

/// The emulator: the CLI tests' own helper, included as is.
#[path = "../../../cli/tests/common/aws.rs"]
mod moto;

pub use moto::endpoint;

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
