//! Throwaway PostgreSQL databases with the legacy schema, made by the legacy project's own
//! Django migrations, so that tests see exactly the tables production has.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust auth), a Python with Django, DRF,
//! psycopg and requests (`FLUXCB_TEST_PYTHON`, else the CI venv `~/.cache/fluxcb/venv`, as
//! `.ci/requirements.txt` installs it) and the legacy folder (`FLUXCB_LEGACY_DIR`, else
//! `../shared/legacy` beside the repository). When one is missing, [`LegacyDatabase::create`]
//! says so loudly on stderr and returns `None`; under `CI=true` it panics instead.
//!
//! Only std and the venv's Python (psycopg) are used, so that other crates' tests can include
//! this file with `#[path]` without new dependencies. Everything here blocks: creating a
//! database and migrating it takes a second or two, before the test's own work starts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn legacy_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var("FLUXCB_LEGACY_DIR").ok().map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/legacy")),
        Some(PathBuf::from("/work/shared/legacy")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("callback/sender.py").is_file())
}

pub fn python() -> Option<String> {
    let python = std::env::var("FLUXCB_TEST_PYTHON").ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        let p = format!("{home}/.cache/fluxcb/venv/bin/python");
        Path::new(&p).is_file().then_some(p)
    })?;
    let ok = Command::new(&python)
        .args(["-c", "import django, rest_framework, psycopg, requests"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

pub fn postgres_listening() -> bool {
    std::net::TcpStream::connect((PG_HOST, PG_PORT)).is_ok()
}

/// Reports a missing prerequisite: a loud line on stderr, or a panic under `CI=true`, where
/// every prerequisite must be there.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {why} ({test})");
    }
    // Not eprintln!: the test harness captures that for passing tests.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPING {test}: {why} ***\n");
}

/// The prerequisites, or `None` after [`skip`] has said which one is missing. Checked once per
/// test binary: the Python check imports Django, which takes a noticeable fraction of a second.
pub fn prerequisites(test: &str) -> Option<(PathBuf, String)> {
    static FOUND: OnceLock<Result<(PathBuf, String), &'static str>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let dir = legacy_dir().ok_or("the legacy project (../shared/legacy) is not here")?;
        let python = python()
            .ok_or("no Python with Django, DRF, psycopg and requests (.ci/requirements.txt)")?;
        if !postgres_listening() {
            return Err("PostgreSQL is not listening on 127.0.0.1:5432");
        }
        Ok((dir, python))
    });
    match found {
        Ok(found) => Some(found.clone()),
        Err(why) => {
            skip(test, why);
            None
        }
    }
}

/// A fresh database, dropped (with any sessions still on it) when this is dropped.
pub struct LegacyDatabase {
    name: String,
    url: String,
    python: String,
    dir: PathBuf,
    /// Django's settings create `LEGACY_HOME`; each database gets its own, removed on drop.
    home: PathBuf,
}

impl LegacyDatabase {
    /// An empty database (for `run.sh start`, which migrates by itself).
    pub fn create(test: &str) -> Option<Self> {
        let (dir, python) = prerequisites(test)?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "fluxcb_test_{}_{nanos:09}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let home = std::env::temp_dir().join(&name);
        let db = Self {
            url: format!("postgres://postgres@{PG_HOST}:{PG_PORT}/{name}"),
            name,
            python,
            dir,
            home,
        };
        if let Err(e) = db.admin(&format!("CREATE DATABASE \"{}\"", db.name)) {
            panic!("cannot create the test database: {e}");
        }
        Some(db)
    }

    /// A database with the legacy schema, by the legacy project's `manage.py migrate`.
    pub fn create_migrated(test: &str) -> Option<Self> {
        let db = Self::create(test)?;
        db.manage(&["migrate", "-v0"]);
        Some(db)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `postgres://postgres@127.0.0.1:5432/<name>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn python(&self) -> &str {
        &self.python
    }

    pub fn legacy_dir(&self) -> &Path {
        &self.dir
    }

    /// Runs the legacy project's `manage.py` on this database; panics with its output when it
    /// fails.
    pub fn manage(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.python)
            .arg(self.dir.join("manage.py"))
            .args(args)
            .current_dir(&self.dir)
            .env("PYTHONPATH", &self.dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("DJANGO_SETTINGS_MODULE", "flux_legacy.settings")
            .env("LEGACY_DATABASE_URL", &self.url)
            .env("LEGACY_HOME", &self.home)
            .stdin(Stdio::null())
            .output()
            .expect("start manage.py");
        assert!(
            out.status.success(),
            "manage.py {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// One statement on the maintenance database, through psycopg (autocommit: CREATE and DROP
    /// DATABASE cannot run in a transaction).
    fn admin(&self, sql: &str) -> Result<(), String> {
        let out = Command::new(&self.python)
            .args([
                "-c",
                "import sys, psycopg\n\
                 with psycopg.connect(sys.argv[1], autocommit=True) as c: c.execute(sys.argv[2])",
                ADMIN_URL,
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{sql}: cannot start python: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{sql}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

impl Drop for LegacyDatabase {
    fn drop(&mut self) {
        // FORCE ends the sessions still open on it (the test's own client, a legacy service).
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // No panic here: this may run while a failed test unwinds.
        if let Err(e) = self.admin(&sql) {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "could not drop the test database: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
