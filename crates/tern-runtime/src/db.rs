//! Opening the SQL database a service owns.
//!
//! The same code runs on SQLite (embedded default), MySQL 8 / MariaDB and
//! PostgreSQL; only the URL differs.

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, LazyLock, Weak,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

/// Connects to `url`. For SQLite the file (and its folder) is created when
/// missing and the journal is switched to WAL so readers do not block the
/// writer; `synchronous` stays at FULL, so an acknowledged write survives a
/// crash of the process or of the machine. SQLite's automatic checkpoint
/// (which runs inside whichever commit crosses 1,000 WAL pages) is off: a
/// background task checkpoints instead, so commits never wait for it.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    open(url, max_connections, true).await
}

/// One connection to a SQLite `url`, for a task that is the only writer of its
/// tables (a service's storage writer): every write goes through the same
/// connection, whose page cache stays warm because no other connection of
/// the process writes between its transactions. The service's [`connect`]
/// pool checkpoints in the background; a writer may also checkpoint between
/// its own transactions, as the message store's does (a checkpoint no
/// commit runs beside copies every frame, so the WAL starts over).
/// On SQLite it keeps up to [`WRITER_STATEMENTS`] compiled statements and
/// hands back up to [`WRITER_ROWS`] result rows without waiting for the
/// task to take them.
///
/// On a database server it is [`SERVER_WRITER_CONNECTIONS`] connections:
/// a writer may run one transaction's statements while the one before it
/// commits, and sqlx pings each connection as it is handed back.
pub async fn connect_writer(url: &str) -> Result<DatabaseConnection, DbErr> {
    let connections = if url.starts_with("sqlite:") { 1 } else { SERVER_WRITER_CONNECTIONS };
    open(url, connections, false).await
}

/// Connections of a storage writer on a database server.
pub const SERVER_WRITER_CONNECTIONS: u32 = 3;

/// How long a database server's pooled connection may sit idle before it
/// is pinged on its way out of the pool.
const SERVER_PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Compiled statements a SQLite writer connection keeps (sqlx: 100).
pub const WRITER_STATEMENTS: usize = 256;
/// Result rows a SQLite writer connection buffers (sqlx: 50).
pub const WRITER_ROWS: usize = 2048;

async fn open(
    url: &str,
    max_connections: u32,
    checkpoints: bool,
) -> Result<DatabaseConnection, DbErr> {
    let writer = !checkpoints;
    let mut url = url.to_string();
    let sqlite = url.starts_with("sqlite:");
    let file = sqlite_path(&url);
    if let Some(path) = &file {
        if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", dir.display())))?;
        }
        if !url.contains('?') {
            url.push_str("?mode=rwc");
        }
    }
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(3))
        // On a database server, a request that cannot get a connection
        // within 2 s fails with a retryable error: a saturated or
        // restarting server pushes back on clients instead of queueing
        // them. A SQLite file cannot be down, so waiting there only means
        // local contention, and failing early would only cause retries.
        .acquire_timeout(Duration::from_secs(if sqlite { 10 } else { 2 }))
        .sqlx_logging(false)
        // sqlx pings a connection every time it leaves the pool: a round
        // trip to the server, or on SQLite a hop to the connection's
        // thread, before every statement or transaction. A SQLite file
        // cannot hang up, so there it is off. A server's connection is
        // checked only when it has sat idle for a second: a restarted
        // server leaves dead ones behind, but one in use a moment ago is
        // almost always alive, and if not its statement fails with a
        // retryable error and sqlx's check when it is handed back (which
        // it always makes) closes it.
        .test_before_acquire(false);
    if !sqlite {
        options.test_before_acquire_if_idle_for(SERVER_PING_AFTER_IDLE);
    }
    options.map_sqlx_sqlite_opts(move |o| {
        // Statement journals (a multi-row INSERT inside a transaction
        // saves each page it changes first) stay in memory instead of
        // a temporary file. Page caches stay at SQLite's 2 MiB per
        // connection: a memory map or bigger caches showed up in the
        // process's memory (the backpressure test) for no throughput.
        let o = o.pragma("wal_autocheckpoint", "0").pragma("temp_store", "memory");
        if writer {
            o.statement_cache_capacity(WRITER_STATEMENTS).row_buffer_size(WRITER_ROWS)
        } else {
            o
        }
    });
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        if checkpoints {
            let turn = file.map(|path| checkpoint_turn(Path::new(&path)));
            tokio::spawn(checkpoint(db.clone(), turn));
        }
    }
    Ok(db)
}

/// How often the WAL is copied back into a SQLite database file. Often,
/// so that a writer's own checkpoint (see [`checkpoint_turn`]) finds
/// little left to copy.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL length (frames, about 4 KiB each) past which a checkpoint makes the
/// next commit start the WAL over from its beginning.
const RESTART_FRAMES: i64 = 4096;

/// Checkpoints a SQLite database in the background. PASSIVE never blocks
/// writers or readers and copies what it can. Under a steady stream of
/// commits it never catches up with the last one, and SQLite only starts
/// the WAL over once a checkpoint has copied every frame: the file would
/// grow for as long as the load lasts, every commit appending to it. So
/// once the WAL is longer than [`RESTART_FRAMES`], a RESTART checkpoint
/// holds writers back for the few frames PASSIVE left (milliseconds) and
/// the next commit writes from the start of the file again. Where a writer
/// checkpoints between its own transactions the WAL never gets that long,
/// and this is only a safety net, left out where such a writer says so
/// ([`CheckpointTurn::writer_restarts`]): a RESTART takes the write lock
/// from outside, and a commit waiting for it sleeps in SQLite's busy
/// handler.
async fn checkpoint(db: DatabaseConnection, turn: Option<Arc<CheckpointTurn>>) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _turn = match &turn {
            Some(turn) => Some(turn.lock.lock().await),
            None => None,
        };
        let restart = !turn.as_ref().is_some_and(|t| t.writer_restarts.load(Relaxed));
        let result = match wal_checkpoint(&db, "PASSIVE").await {
            Ok(log) if restart && log > RESTART_FRAMES => wal_checkpoint(&db, "RESTART").await,
            other => other,
        };
        if let Err(error) = result {
            tracing::debug!(%error, "WAL checkpoint failed; retrying");
            if matches!(error, DbErr::ConnectionAcquire(_)) && db.ping().await.is_err() {
                // The pool was closed: the service is shutting down.
                return;
            }
        }
    }
}

/// Runs one checkpoint in `mode`; returns the WAL's length in frames.
async fn wal_checkpoint(db: &DatabaseConnection, mode: &str) -> Result<i64, DbErr> {
    let pragma = format!("PRAGMA wal_checkpoint({mode})");
    let row = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, pragma)).await?;
    Ok(row.and_then(|r| r.try_get_by_index::<i64>(1).ok()).unwrap_or_default())
}

/// Who checkpoints a SQLite file. The pool's background checkpoint and a
/// writer that checkpoints between its own transactions (the message
/// store's) take turns through [`CheckpointTurn::lock`], so that the two
/// never run beside each other: a checkpoint beside another one copies
/// nothing and only reports "busy", and the writer's, which exists to copy
/// the last frames so that the WAL can start over, would have held up
/// commits for nothing.
#[derive(Default)]
pub struct CheckpointTurn {
    pub lock: tokio::sync::Mutex<()>,
    /// Set by a writer that starts the WAL over itself: the background
    /// checkpoint then never forces a RESTART, whose waits on the write
    /// lock would sleep that writer's commits in SQLite's busy handler.
    writer_restarts: AtomicBool,
}

impl CheckpointTurn {
    /// Tells the background checkpoint that a writer starts the WAL over.
    pub fn writer_restarts(&self) {
        self.writer_restarts.store(true, Relaxed);
    }
}

/// The [`CheckpointTurn`] of the SQLite database `file`, shared by every
/// pool and writer of the process that opens it.
pub fn checkpoint_turn(file: &Path) -> Arc<CheckpointTurn> {
    type Turns = std::sync::Mutex<HashMap<PathBuf, Weak<CheckpointTurn>>>;
    static TURNS: LazyLock<Turns> = LazyLock::new(Turns::default);
    let key = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut turns = TURNS.lock().expect("checkpoint turns poisoned");
    turns.retain(|_, turn| turn.strong_count() > 0);
    if let Some(turn) = turns.get(&key).and_then(Weak::upgrade) {
        return turn;
    }
    let turn = Arc::new(CheckpointTurn::default());
    turns.insert(key, Arc::downgrade(&turn));
    turn
}

/// The file path of a `sqlite://` URL, or `None` for other databases and
/// in-memory SQLite.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn finds_sqlite_files_only() {
        assert_eq!(sqlite_path("sqlite://data/auth.db?mode=rwc").as_deref(), Some("data/auth.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("mysql://root@localhost/test"), None);
    }
}
