//! Storage faults, injected for real: the server runs in a mount namespace of its own
//! (`unshare -rm`) on a small tmpfs that a supervisor shell fills up and frees on a signal, and
//! another process holds the database's write lock. Ingest must answer 503 with `Retry-After`
//! while the fault lasts, nothing acknowledged may be lost, and the service must recover by
//! itself when the fault clears.
//!
//! A mount cannot be remounted read-only while a process holds files on it open for writing
//! (EBUSY), and SQLite always does; so a read-only data directory is checked at start-up (a
//! clear refusal), and running out of space stands for the writes that fail mid-run.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_loopback_addr, TestReceiver, PROCESS_API_KEY};
use serde_json::{json, Value};

/// Runs `fluxcb serve` on a tmpfs in a private mount namespace. Signals to the supervisor
/// shell: USR2 fills the disk, USR1 frees it.
struct Confined {
    shell: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

const SUPERVISOR: &str = r#"
set -u
mount -t tmpfs -o size=24m tmpfs "$MNT" || exit 97
trap 'dd if=/dev/zero of="$MNT/filler" bs=64k 2>/dev/null; sync' USR2
trap 'rm -f "$MNT/filler"' USR1
trap 'kill -TERM $child 2>/dev/null; wait $child; exit 0' TERM
"$FLUXCB" serve --data-dir "$MNT/data" --listen "$ADDR" &
child=$!
while kill -0 $child 2>/dev/null; do wait $child; done
"#;

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

fn skip(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {why}");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPING storage faults: {why} ***\n"
    );
    false
}

impl Confined {
    async fn start() -> Option<Self> {
        if !unshare_works() && !skip("`unshare -rm` is not permitted here") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let log = dir.path().join("server.log");
        let addr = free_loopback_addr();
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["-rm", "sh", "-c", SUPERVISOR])
            .env("MNT", &mnt)
            .env("ADDR", addr.to_string())
            .env("FLUXCB", env!("CARGO_BIN_EXE_fluxcb"))
            .env("FLUXCB_API_KEY", PROCESS_API_KEY)
            .env("FLUXCB_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8")
            .env("FLUXCB_RETRY_SCHEDULE", "50ms,100ms")
            .env("FLUXCB_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLUXCB_")) {
            if !["FLUXCB_API_KEY"].contains(&k.as_str()) {
                cmd.env_remove(k);
            }
        }
        let shell = cmd.spawn().expect("unshare");
        let confined = Self {
            shell,
            addr,
            _dir: dir,
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(confined.url("/healthz")).send().await {
                if r.status().is_success() {
                    return Some(confined);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the confined server did not start:\n{}", confined.logs());
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.shell.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig}");
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.shell.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.shell.kill();
    }
}

/// One batch of 20; the ids when acknowledged (202), else the status and `Retry-After`.
async fn ingest(
    http: &reqwest::Client,
    url: &str,
    target: &str,
    n: usize,
) -> Result<Vec<String>, (u16, Option<String>)> {
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"url": target, "payload": {"batch": n, "i": i, "pad": "x".repeat(200)}}))
        .collect();
    let r = http
        .post(url)
        .bearer_auth(PROCESS_API_KEY)
        .json(&json!({ "callbacks": items }))
        .send()
        .await
        .expect("the server answers even when its disk is full");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != 202 {
        return Err((status, retry_after));
    }
    let body: Value = r.json().await.unwrap();
    Ok(body["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect())
}

async fn delivered_ids(receiver: &TestReceiver, path: &str) -> BTreeSet<String> {
    receiver
        .received_on(path)
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

async fn wait_delivered(receiver: &TestReceiver, path: &str, acked: &BTreeSet<String>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = delivered_ids(receiver, path).await;
        let lost = acked.difference(&seen).count();
        if lost == 0 || Instant::now() > deadline {
            return lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_loses_nothing_and_recovers_by_itself() {
    let Some(server) = Confined::start().await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    let target = receiver.url("/ok/disk");
    let http = reqwest::Client::new();
    let batch_url = server.url("/v1/callbacks/batch");
    let mut acked = BTreeSet::new();
    for n in 0..10 {
        acked.extend(
            ingest(&http, &batch_url, &target, n)
                .await
                .expect("room on the disk"),
        );
    }

    server.signal("USR2");
    let mut refusals = Vec::new();
    for n in 10..400 {
        match ingest(&http, &batch_url, &target, n).await {
            Ok(ids) => acked.extend(ids),
            Err(refused) => {
                refusals.push(refused);
                if refusals.len() >= 5 {
                    break;
                }
            }
        }
    }
    assert!(
        !refusals.is_empty(),
        "a full disk must refuse ingest\n{}",
        server.logs()
    );
    for (status, retry_after) in &refusals {
        assert_eq!(*status, 503, "refused with 503: {refusals:?}");
        assert!(retry_after.is_some(), "with Retry-After: {refusals:?}");
    }
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the disk is full");

    server.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut recovered = false;
    let mut n = 1_000;
    while Instant::now() < deadline {
        n += 1;
        if let Ok(ids) = ingest(&http, &batch_url, &target, n).await {
            acked.extend(ids);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "ingest works again once space is free\n{}",
        server.logs()
    );
    let lost = wait_delivered(&receiver, "/ok/disk", &acked).await;
    let deliveries = receiver.received_on("/ok/disk").len();
    eprintln!(
        "full disk: {} acknowledged, {} refusals, lost {lost}, duplicates {}",
        acked.len(),
        refusals.len(),
        deliveries.saturating_sub(acked.len())
    );
    assert_eq!(lost, 0, "nothing acknowledged is lost\n{}", server.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_answers_503_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let receiver = TestReceiver::start().await;
    let target = receiver.url("/ok/locked");
    let server = common::ServeProcess::start(&data, &log, None, &[]).await;
    let http = reqwest::Client::new();
    let batch_url = server.url("/v1/callbacks/batch");
    let mut acked = BTreeSet::new();
    acked.extend(ingest(&http, &batch_url, &target, 0).await.unwrap());

    // Another process takes the write lock and keeps it longer than the store waits for a
    // lock (5 s), so writes give up rather than wait it out. Long enough for two waits: a
    // delivery's write that began just after the lock was taken gives up at 5 s, and an ingest
    // queued behind it then waits its own 5 s.
    let db = data.join("fluxcb.db");
    let mut holder = hold_write_lock(&db, Duration::from_secs(14));
    // Only once the other process says it holds the lock (its start can be slow on a busy
    // machine) does the clock start.
    let stdout = holder.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let mut refusals = Vec::new();
    let started = Instant::now();
    let mut n = 1;
    while started.elapsed() < Duration::from_secs(6)
        || (refusals.is_empty() && started.elapsed() < Duration::from_secs(12))
    {
        n += 1;
        match ingest(&http, &batch_url, &target, n).await {
            Ok(ids) => acked.extend(ids),
            Err(refused) => refusals.push(refused),
        }
    }
    assert!(!refusals.is_empty(), "a locked database must refuse ingest");
    assert!(
        refusals.iter().all(|(s, ra)| *s == 503 && ra.is_some()),
        "503 with Retry-After: {refusals:?}"
    );
    let status = tokio::task::spawn_blocking(move || holder.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut recovered = false;
    while Instant::now() < deadline && !recovered {
        n += 1;
        if let Ok(ids) = ingest(&http, &batch_url, &target, n).await {
            acked.extend(ids);
            recovered = true;
        }
    }
    assert!(recovered, "ingest works again once the lock is released");
    let lost = wait_delivered(&receiver, "/ok/locked", &acked).await;
    eprintln!(
        "locked database: {} acknowledged, {} refusals, lost {lost}",
        acked.len(),
        refusals.len()
    );
    assert_eq!(lost, 0);
}

/// A Python process (the CI venv's, or the system one) that takes SQLite's write lock with
/// `BEGIN IMMEDIATE` and holds it.
fn hold_write_lock(db: &Path, for_how_long: Duration) -> Child {
    let python = std::env::var("FLUXCB_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "import sqlite3, time\n\
         c = sqlite3.connect({db:?}, timeout=10, isolation_level=None)\n\
         c.execute('BEGIN IMMEDIATE')\n\
         print('locked', flush=True)\n\
         time.sleep({secs})\n\
         c.execute('ROLLBACK')\n",
        db = db.display().to_string(),
        secs = for_how_long.as_secs_f64()
    );
    Command::new(python)
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

#[test]
fn a_read_only_data_directory_is_refused_clearly_at_start() {
    if !unshare_works() && !skip("`unshare -rm` is not permitted here") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = r#"
mount -t tmpfs -o size=8m tmpfs "$MNT" && mkdir "$MNT/data" && mount -o remount,ro "$MNT" || exit 97
exec "$FLUXCB" serve --data-dir "$MNT/data" --listen 127.0.0.1:0
"#;
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", script])
        .env("MNT", &mnt)
        .env("FLUXCB", env!("CARGO_BIN_EXE_fluxcb"))
        .env_remove("FLUXCB_API_KEY")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(97), "the namespace setup failed");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("data") && stderr.to_lowercase().contains("read-only"),
        "names the directory and the cause: {stderr}"
    );
}
