//! Child processes (the fluxcb server, the trivial 202 server) and what `/proc` says about them.
//!
//! Every child is killed when its guard is dropped, so an error, a panic or Ctrl-C in the
//! bench leaves nothing running; on Linux the kernel also kills it if the bench itself dies
//! without unwinding (SIGKILL), through `PR_SET_PDEATHSIG`.
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::load;

/// The admin key handed to every fluxcb the bench starts.
pub const API_KEY: &str = "fcb_bench_admin_key";

pub struct Proc {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Declared last so it is removed after the child has been told to die.
    dir: tempfile::TempDir,
}

impl Proc {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGTERM, then SIGKILL if it has not exited in time. fluxcb's graceful stop lets
    /// in-flight deliveries finish, which takes moments here since the receiver is local.
    pub async fn stop(mut self) {
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Stops the server and hands back its directory (the data directory inside it).
    pub async fn stop_keeping(mut self) -> tempfile::TempDir {
        // SAFETY: as in `stop`.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.dir
    }

    /// Warnings and errors the server logged, and the last of them: a run that looks fine
    /// from outside may still have logged a store error or a full write queue.
    pub fn log_problems(&self) -> (usize, Option<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .collect();
        (bad.len(), bad.last().map(|l| l.chars().take(300).collect()))
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn free_port() -> Result<u16, String> {
    // The port is released before the child binds it; on an otherwise idle loopback the
    // window for someone else to take it is negligible.
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe, which is all that pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn prepared(bin: &Path, dir: &Path) -> Result<(Command, PathBuf), String> {
    let log = dir.join("server.log");
    let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    // The bench's own environment must not leak settings into the measured server.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("FLUXCB_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
    }
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    Ok((cmd, log))
}

/// `fluxcb serve` on a fresh temporary data directory, ready to take requests.
pub async fn start_fluxcb(bin: &Path, extra_env: &[(String, String)]) -> Result<Proc, String> {
    if !bin.is_file() {
        return Err(format!(
            "no fluxcb binary at {}; build it with `cargo build --release -p fluxcb` or pass --fluxcb-bin",
            bin.display()
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("fluxcb-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    start_fluxcb_in(bin, extra_env, dir).await
}

/// `fluxcb serve` on the data directory in `dir` (kept from an earlier [`Proc::stop_keeping`]).
pub async fn start_fluxcb_in(
    bin: &Path,
    extra_env: &[(String, String)],
    dir: tempfile::TempDir,
) -> Result<Proc, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let (mut cmd, log) = prepared(bin, dir.path())?;
    cmd.arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("FLUXCB_API_KEY", API_KEY)
        .env("FLUXCB_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8")
        .env("FLUXCB_LOG_FORMAT", "json");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    ready(child, addr, log, dir, "/readyz").await
}

/// This same executable in its `--serve-202` role, as a separate process so that its CPU is
/// accounted for exactly like fluxcb's.
pub async fn start_trivial() -> Result<Proc, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("fluxcb-bench-202-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let (mut cmd, log) = prepared(&exe, dir.path())?;
    cmd.arg("--serve-202").arg(addr.to_string());
    let child = cmd.spawn().map_err(|e| format!("starting {e}"))?;
    ready(child, addr, log, dir, "/").await
}

async fn ready(
    mut child: Child,
    addr: SocketAddr,
    log: PathBuf,
    dir: tempfile::TempDir,
    path: &str,
) -> Result<Proc, String> {
    let pid = child.id().ok_or("the child exited at once")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the server exited during start-up ({status}):\n{}",
                log_tail(&log)
            ));
        }
        if let Ok(mut conn) = load::connect(addr).await {
            let req = load::request(http::Method::GET, addr, path, None, bytes::Bytes::new());
            if let Ok((status, _)) = load::exchange(&mut conn, req).await {
                if status.is_success() {
                    break;
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server did not become ready within 30 s:\n{}",
                log_tail(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Proc {
        child,
        pid,
        addr,
        log,
        dir,
    })
}

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub rss_anon_kb: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime from `/proc/<pid>/stat`, in seconds, all threads included.
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name may hold spaces and parentheses; fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, the state is field 3 of the full line; utime is 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn status_kb(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn sample(pid: u32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    ProcSample {
        cpu_s: cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0),
        rss_kb: status_kb(&status, "VmRSS:"),
        hwm_kb: status_kb(&status, "VmHWM:"),
        rss_anon_kb: status_kb(&status, "RssAnon:"),
    }
}

pub fn self_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat").unwrap_or(0.0)
}

/// Busy CPU seconds of the whole machine (all cores), from `/proc/stat`.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    busy / clock_ticks()
}

/// Bytes of all files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What the machine looked like, for the record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mb: u64,
    pub loadavg_at_start: String,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        mem_total_mb: status_kb(&meminfo, "MemTotal:") / 1024,
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}
