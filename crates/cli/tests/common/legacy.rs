//! The legacy pair (`../shared/legacy`) running for real: both Django services under gunicorn
//! and the sender worker, on a fresh PostgreSQL database and two free loopback ports, started
//! by the legacy project's own `run.sh`, as the migration runbook starts it.
//!
//! Needs what `crates/migrate/tests/support` needs (PostgreSQL on 127.0.0.1:5432, the CI venv
//! with Django, DRF, psycopg and requests, the legacy folder) plus gunicorn in that venv
//! (`.ci/requirements.txt`). [`LegacyPair::start`] returns `None` with a loud message on stderr
//! when one is missing, and panics under `CI=true`.
//!
//! `run.sh` installs a venv under `$LEGACY_HOME` unless `$LEGACY_HOME/venv/bin/gunicorn`
//! exists; each pair's `LEGACY_HOME` is a fresh temporary folder whose `venv` is a symlink to the
//! CI venv, so starting takes about as long as Django's migrations and two gunicorn boots (a few
//! seconds), with no pip install. Starting and stopping block the calling thread.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../migrate/tests/support/mod.rs"]
mod support;

pub use support::LegacyDatabase;

/// How the pair is configured; `Default` suits tests (fast retries, one insert worker).
#[derive(Clone, Debug)]
pub struct LegacyOptions {
    /// `LEGACY_RETRY_STEP_SECONDS`: a retry waits this times the attempt number (production:
    /// 60).
    pub retry_step_seconds: u32,
    /// `LEGACY_SEND_TIMEOUT`, seconds per send.
    pub send_timeout_seconds: u32,
    /// `LEGACY_TOKEN`, the API token of user `ops`; `None` picks a fresh one.
    pub token: Option<String>,
    /// `LEGACY_SIGNING_SECRET`, used as its UTF-8 bytes.
    pub signing_secret: String,
    /// `LEGACY_WORKERS`, gunicorn workers of the insert service.
    pub workers: u32,
}

impl Default for LegacyOptions {
    fn default() -> Self {
        Self {
            retry_step_seconds: 1,
            send_timeout_seconds: 5,
            token: None,
            signing_secret: "legacy-test-secret-ü".into(),
            workers: 1,
        }
    }
}

impl LegacyOptions {
    pub fn retry_step_seconds(mut self, seconds: u32) -> Self {
        self.retry_step_seconds = seconds;
        self
    }

    pub fn send_timeout_seconds(mut self, seconds: u32) -> Self {
        self.send_timeout_seconds = seconds;
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn signing_secret(mut self, secret: impl Into<String>) -> Self {
        self.signing_secret = secret.into();
        self
    }

    pub fn workers(mut self, workers: u32) -> Self {
        self.workers = workers;
        self
    }

    pub fn start(self) -> Option<LegacyPair> {
        LegacyPair::start_with(self)
    }
}

/// A running legacy pair. Dropping it stops the services (`run.sh stop`, then waits for them to
/// exit) and drops its database.
pub struct LegacyPair {
    script: PathBuf,
    callme_port: u16,
    callback_port: u16,
    token: String,
    options: LegacyOptions,
    // Dropped in this order after `Drop::drop` has stopped the processes: the database, then
    // the folder with the logs and pid files.
    db: LegacyDatabase,
    home: tempfile::TempDir,
}

impl LegacyPair {
    /// The pair with [`LegacyOptions::default`].
    pub fn start() -> Option<Self> {
        Self::start_with(LegacyOptions::default())
    }

    pub fn options() -> LegacyOptions {
        LegacyOptions::default()
    }

    pub fn start_with(options: LegacyOptions) -> Option<Self> {
        const TEST: &str = "tests needing the legacy pair";
        let (dir, python) = support::prerequisites(TEST)?;
        // The venv the python belongs to: `<venv>/bin/python` (not canonicalised: that would be
        // the interpreter the venv links to).
        let venv = Path::new(&python)
            .parent()
            .and_then(Path::parent)
            .expect("python lives in <venv>/bin")
            .to_path_buf();
        if !venv.join("bin/gunicorn").is_file() {
            support::skip(
                TEST,
                &format!(
                    "gunicorn is not installed in {} (.ci/requirements.txt)",
                    venv.display()
                ),
            );
            return None;
        }
        let db = LegacyDatabase::create(TEST)?;
        let home = tempfile::Builder::new()
            .prefix("flux-legacy-")
            .tempdir()
            .expect("temp dir");
        std::os::unix::fs::symlink(&venv, home.path().join("venv")).expect("link the venv");
        let (callme_port, callback_port) = two_free_ports();
        let token = options.token.clone().unwrap_or_else(fresh_token);
        let pair = Self {
            script: dir.join("run.sh"),
            callme_port,
            callback_port,
            token,
            options,
            db,
            home,
        };
        // From here on, a failure stops whatever did start, by dropping `pair`.
        let started = Instant::now();
        let log = std::fs::File::create(pair.home.path().join("run.log")).expect("run.log");
        let status = pair
            .run_sh("start")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("run bash");
        assert!(
            status.success(),
            "run.sh start failed ({status}):\n{}",
            pair.logs()
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "legacy pair up in {:.1} s (callme :{}, callback :{}, db {})",
            started.elapsed().as_secs_f64(),
            pair.callme_port,
            pair.callback_port,
            pair.db.name()
        );
        Some(pair)
    }

    /// `http://127.0.0.1:<port>`, the insert API (`/api/callbacks/`).
    pub fn callme_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.callme_port)
    }

    /// `http://127.0.0.1:<port>`, the callback service (`/api/callbacks/<id>/send/`).
    pub fn callback_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.callback_port)
    }

    /// The API token (`Authorization: Token <token>`).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn database_url(&self) -> &str {
        self.db.url()
    }

    pub fn database(&self) -> &LegacyDatabase {
        &self.db
    }

    pub fn signing_secret(&self) -> &str {
        &self.options.signing_secret
    }

    /// `$LEGACY_HOME`: logs (`callme.log`, `callback.log`, `sender.log`, `run.log`) and pids.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Every log, for a failing assertion's message.
    pub fn logs(&self) -> String {
        ["run", "callme", "callback", "sender"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.home().join(format!("{name}.log")))
                    .unwrap_or_else(|e| format!("({e})"));
                format!("--- {name}.log\n{text}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the sender worker only, as the runbook's fence does: both APIs keep answering, and
    /// nothing is sent any more. Returns once the worker has exited, so no send is in flight.
    pub fn stop_worker(&self) {
        let file = self.home().join("sender.pid");
        let Some(pid) = read_pid(&file) else {
            return;
        };
        // The worker finishes its current send and exits at its next poll on SIGTERM.
        signal(pid, "TERM");
        let grace = Duration::from_secs(u64::from(self.options.send_timeout_seconds) + 5);
        if !wait_exit(&[pid], grace) {
            signal(pid, "KILL");
            wait_exit(&[pid], Duration::from_secs(5));
        }
        // So that `run.sh stop` cannot signal a process that reuses the pid.
        let _ = std::fs::remove_file(file);
    }

    /// Whether the sender worker is running.
    pub fn worker_running(&self) -> bool {
        read_pid(&self.home().join("sender.pid")).is_some_and(alive)
    }

    fn run_sh(&self, command: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.script)
            .arg(command)
            .env("LEGACY_HOME", self.home.path())
            .env("LEGACY_DATABASE_URL", self.db.url())
            .env("LEGACY_CALLME_PORT", self.callme_port.to_string())
            .env("LEGACY_CALLBACK_PORT", self.callback_port.to_string())
            .env("LEGACY_TOKEN", &self.token)
            .env("LEGACY_SIGNING_SECRET", &self.options.signing_secret)
            .env(
                "LEGACY_RETRY_STEP_SECONDS",
                self.options.retry_step_seconds.to_string(),
            )
            .env(
                "LEGACY_SEND_TIMEOUT",
                self.options.send_timeout_seconds.to_string(),
            )
            .env("LEGACY_WORKERS", self.options.workers.to_string())
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for LegacyPair {
    fn drop(&mut self) {
        let pids: Vec<u32> = ["sender", "callme", "callback"]
            .iter()
            .filter_map(|name| read_pid(&self.home().join(format!("{name}.pid"))))
            .collect();
        // No panics here: this may run while a failed test unwinds.
        let stopped = self
            .run_sh("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            pids.iter().for_each(|&pid| signal(pid, "TERM"));
        }
        // gunicorn masters stop their workers first; idle ones go at once.
        if !wait_exit(&pids, Duration::from_secs(10)) {
            pids.iter().for_each(|&pid| signal(pid, "KILL"));
            wait_exit(&pids, Duration::from_secs(5));
        }
    }
}

fn two_free_ports() -> (u16, u16) {
    // Both held at once so they differ; another process could still take one before gunicorn
    // binds it, which run.sh then reports as a port that did not open.
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// DRF keys are at most 40 characters.
fn fresh_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("legacy-{}-{nanos:x}", std::process::id())
}

fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Running, and not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) state ...": comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
    })
}

fn wait_exit(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pids.iter().any(|&pid| alive(pid)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
