//! Opening the SQL database a service owns.
//!
//! The same code runs on SQLite (embedded default), MySQL 8 / MariaDB and
//! PostgreSQL; only the URL differs.

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use std::time::Duration;

/// Connects to `url`. For SQLite the file (and its folder) is created when
/// missing and the journal is switched to WAL so readers do not block the
/// writer; `synchronous` stays at FULL, so an acknowledged write survives a
/// crash of the process or of the machine.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut url = url.to_string();
    let sqlite = url.starts_with("sqlite:");
    if let Some(path) = sqlite_path(&url) {
        if let Some(dir) =
            std::path::Path::new(&path).parent().filter(|d| !d.as_os_str().is_empty())
        {
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
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    Ok(db)
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
