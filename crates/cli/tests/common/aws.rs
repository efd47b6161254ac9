//! The AWS backend under test: the real AWS SDK against moto (a local AWS emulator from PyPI).
//! `.ci/run` starts moto and sets `FLUXCB_TEST_AWS_ENDPOINT`; without it the tests start
//! `moto_server` themselves if they find it (on PATH or in the CI's venv), and otherwise skip
//! with a loud message, except under `CI=true`, where a missing emulator is a failure.
//!
//! Self-contained (std only), so that the Lambda and AWS store crates' tests include this same
//! file (`#[path]`).
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
fn start_moto(binary: &std::path::Path) -> Option<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    // Through scripts/moto_server.py where moto's own Python is beside it, as scripts/moto.sh
    // does: plain moto_server handles DynamoDB requests concurrently and loses writes under
    // conditioned-write races (see there).
    let launcher =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/moto_server.py");
    let python = binary.with_file_name("python");
    let server = if launcher.is_file() && python.is_file() {
        format!("{} {}", python.display(), launcher.display())
    } else {
        binary.display().to_string()
    };
    let script = format!(
        "{server} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {} 2>/dev/null; do sleep 1; done; kill $m",
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
                None => {
                    // Not eprintln!: the test harness captures that for passing tests.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n*** SKIPPING the AWS tests: no moto_server found. `pip install \"moto[server]\"` \
                         or set FLUXCB_TEST_AWS_ENDPOINT (bash .ci/run does both). ***\n"
                    );
                }
            }
            found
        })
        .clone()
}
