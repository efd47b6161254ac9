//! The data directory on disk: its single-server lock, private file modes, backups and
//! restores.
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::error::OpenError;
use crate::schema::SCHEMA_VERSION;
use crate::{BUSY_TIMEOUT, DB_FILE};

pub const LOCK_FILE: &str = "fluxcb.lock";

/// Held by the one server using a data directory. Two servers on one store would each return
/// the other's in-flight callbacks to pending at start, and deliver them twice; a restore under
/// a running server would be overwritten by its WAL. The OS releases the lock when the
/// process dies, however it dies.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    dir: PathBuf,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<Self, OpenError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| OpenError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                _file: file,
                dir: data_dir.to_path_buf(),
            }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(OpenError::InUse(data_dir.display().to_string()))
            }
            Err(fs::TryLockError::Error(source)) => Err(OpenError::DataDir {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

pub fn create_private_dir(dir: &Path) -> Result<(), OpenError> {
    let made = {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)
    };
    made.map_err(|source| OpenError::DataDir {
        path: dir.display().to_string(),
        source,
    })
}

/// The store holds signing secrets: only its owner may read it (SQLite gives the WAL and
/// shared-memory files the database file's mode).
pub fn make_private(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Writes a consistent copy of the store at `data_dir` to `dest` (a new file, mode 0600),
/// while the store may be in use.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<(), OpenError> {
    let source = data_dir.join(DB_FILE);
    if !source.exists() {
        return Err(OpenError::NoStore(data_dir.display().to_string()));
    }
    // Creating the file first makes "never overwrite" atomic and sets the mode before any
    // secret is written; VACUUM INTO accepts an empty existing file.
    create_private_file(dest).map_err(|source| OpenError::DataDir {
        path: dest.display().to_string(),
        source,
    })?;
    let result = (|| {
        let conn = Connection::open_with_flags(
            &source,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // VACUUM INTO reads one snapshot of the database and writes a compact copy of it.
        conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()])?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

#[derive(Debug)]
pub struct Restored {
    /// Where the store that was replaced went, if there was one.
    pub previous: Option<PathBuf>,
}

/// Replaces the store in the locked data directory with the backup `from`. The replaced store
/// is kept beside it, renamed, and its WAL is set aside with it so it cannot be replayed over
/// the restored copy.
pub fn restore(lock: &DataDirLock, from: &Path) -> Result<Restored, OpenError> {
    check_backup(from)?;
    let dir = lock.dir();
    let target = dir.join(DB_FILE);
    let staging = dir.join(format!("{DB_FILE}.restoring"));
    let _ = fs::remove_file(&staging);
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| OpenError::DataDir { path, source }
    };
    fs::copy(from, &staging).map_err(io_err(&staging))?;
    make_private(&staging).map_err(io_err(&staging))?;
    File::open(&staging)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&staging))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let previous = if target.exists() {
        let kept = dir.join(format!("{DB_FILE}.before-restore-{stamp}"));
        fs::rename(&target, &kept).map_err(io_err(&target))?;
        for suffix in ["-wal", "-shm"] {
            let side = dir.join(format!("{DB_FILE}{suffix}"));
            if side.exists() {
                let kept_side = dir.join(format!("{DB_FILE}.before-restore-{stamp}{suffix}"));
                fs::rename(&side, &kept_side).map_err(io_err(&side))?;
            }
        }
        Some(kept)
    } else {
        None
    };
    fs::rename(&staging, &target).map_err(io_err(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(Restored { previous })
}

fn check_backup(from: &Path) -> Result<(), OpenError> {
    if !from.is_file() {
        return Err(OpenError::NoStore(from.display().to_string()));
    }
    let conn = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let has_callbacks: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'callbacks')",
        [],
        |r| r.get(0),
    )?;
    let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if !has_callbacks || ok != "ok" {
        return Err(OpenError::NotABackup(from.display().to_string()));
    }
    Ok(())
}
