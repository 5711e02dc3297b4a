//! The two kinds of database handle. A write only compiles against `Primary`; `Replica`
//! offers nothing but the reads in `crate::replica`, so no code path can write to a
//! replica or read a stale answer where it needs the primary's.
//!
//! Each keeps the driver that serves it best: sqlx on the primary (migrations, typed
//! transactions, the `PgExecutor` functions the guarded path composes), deadpool-postgres
//! on the replicas (pipelined reads, row streaming for recovery, repeatable-read
//! read-only snapshots for analytics).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::DbError;

/// The primary: every write, and reads that must see the latest commit.
#[derive(Clone, Debug)]
pub struct Primary {
    pool: PgPool,
    /// Readiness's own connection. Readiness asks whether the primary answers, not
    /// whether the pool has a free connection: under load every connection can be busy
    /// for seconds, and a probe queued behind the requests would take a working (merely
    /// busy) instance out of rotation, or keep a restarted one from ever becoming ready.
    probe: PgPool,
}

impl Primary {
    /// Opens lazily: a service starts (and says it is unready) while the primary is down.
    /// `sslmode` and `sslrootcert` in `url` are read as libpq reads them (`crate::tls`).
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Primary, DbError> {
        let options = crate::tls::connect_options(url).map_err(primary_config)?;
        let pool = pool_options(max_connections, Duration::from_secs(5))
            .connect_lazy_with(options.clone());
        Ok(Primary::with_probe(pool, options))
    }

    /// Opens now, so that a wrong URL or a down primary fails here (tools, tests).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Primary, DbError> {
        let options = crate::tls::connect_options(url).map_err(primary_config)?;
        let pool = pool_options(max_connections, Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        Ok(Primary::with_probe(pool, options))
    }

    /// Wraps a pool a test harness already holds; readiness then uses that pool too.
    pub fn from_pool(pool: PgPool) -> Primary {
        Primary {
            probe: pool.clone(),
            pool,
        }
    }

    fn with_probe(pool: PgPool, options: sqlx::postgres::PgConnectOptions) -> Primary {
        // Opened on the first probe (usually kept open by the next ones).
        let probe = pool_options(1, Duration::from_secs(2)).connect_lazy_with(options);
        Primary { pool, probe }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Readiness: the primary answers, however busy the pool is.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.probe).await?;
        Ok(())
    }

    /// (open, idle) connections, for the metrics.
    pub fn connections(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// Applies the embedded migrations (the same ones `sqlx migrate run` would); returns
    /// how many the database now has.
    pub async fn migrate(&self) -> Result<usize, DbError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| DbError::Config(format!("migrations: {e}")))?;
        Ok(MIGRATOR.iter().count())
    }

    /// The primary's current WAL position: a replica that has replayed this far has seen
    /// every commit made before now.
    pub async fn wal_position(&self) -> Result<WalPosition, DbError> {
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.pool)
            .await?;
        Ok(WalPosition(lsn))
    }
}

/// The migrations, embedded at build time (`build.rs` rebuilds this crate when one is
/// added). Tools and tests that prepare a database of their own run these too.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// When a connection opened before this instant is next acquired, it is closed instead.
static RETIRED_BEFORE: Mutex<Option<Instant>> = Mutex::new(None);

/// A migration that changes a column's type (0017 made columns domains) while services run
/// makes PostgreSQL refuse every statement a connection prepared before it ("cached plan
/// must not change result type"), on every use, for as long as the connection lives (sqlx
/// keeps its prepared statements; a connection lives up to 30 minutes). The first refusal
/// retires every connection open now, so their replacements prepare afresh: the requests
/// already running on them can fail, later ones do not. PostgreSQL's message is matched in
/// English, the language of the servers this project configures; its SQLSTATE (0A000) is
/// shared with other refusals.
pub(crate) fn retire_if_stale(e: &sqlx::Error) {
    let stale = e.as_database_error().is_some_and(|d| {
        d.code().as_deref() == Some("0A000")
            && d.message()
                .contains("cached plan must not change result type")
    });
    if stale {
        tracing::warn!(
            error = %e,
            "a statement prepared before a schema change was refused; retiring the open connections"
        );
        *RETIRED_BEFORE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

fn retired(age: Duration) -> bool {
    let before = *RETIRED_BEFORE.lock().unwrap_or_else(|p| p.into_inner());
    before.is_some_and(|t| {
        Instant::now()
            .checked_sub(age)
            .is_some_and(|opened| opened < t)
    })
}

/// A connection idle longer than this is pinged before use.
const PING_IDLE_OVER: Duration = Duration::from_secs(1);

/// sqlx pings every connection on acquire by default: a round trip before each
/// statement of a busy service. Only a connection idle long enough to have been dropped
/// unnoticed (a primary restart) is checked here. A busy one that broke fails its
/// statement, and its release closes it: the release reads the answers the connection
/// still owes, and sqlx's ping there is patched out (third_party/sqlx-core).
fn pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if retired(meta.age) {
                    return Ok(false);
                }
                if meta.idle_for > PING_IDLE_OVER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

fn primary_config(e: DbError) -> DbError {
    match e {
        DbError::Config(m) => DbError::Config(format!("primary url: {m}")),
        other => other,
    }
}

impl From<PgPool> for Primary {
    fn from(pool: PgPool) -> Primary {
        Primary::from_pool(pool)
    }
}

/// A position in the primary's WAL (`pg_lsn` as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPosition(pub(crate) String);

impl std::fmt::Display for WalPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A read replica (or nginx in front of several): reads that may lag a little.
#[derive(Clone)]
pub struct Replica(deadpool_postgres::Pool);

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL holds a password: only the pool's shape is shown.
        f.debug_struct("Replica")
            .field("max_size", &self.0.status().max_size)
            .finish()
    }
}

impl Replica {
    /// Connections open on first use. A malformed URL is a configuration error here, not
    /// a failure of the first request that needs the replica.
    /// `sslmode` and `sslrootcert` in `url` are read as libpq reads them (`crate::tls`).
    pub fn new(url: &str, max_size: usize) -> Result<Replica, DbError> {
        let (pg, tls) = crate::tls::tokio_postgres_config(url).map_err(|e| match e {
            DbError::Config(m) => DbError::Config(format!("replica url: {m}")),
            other => other,
        })?;
        // Verified: a connection is checked before reuse, so that after a replica fails
        // over behind nginx no request gets the stale one.
        let manager = deadpool_postgres::Manager::from_config(
            pg,
            tls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Verified,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(max_size.max(1))
            .wait_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Config(format!("replica pool: {e}")))?;
        Ok(Replica(pool))
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.0.get().await?)
    }
}
