//! What the benchmark binaries share. `paystream-bench` (src/main.rs) measures the running
//! stack; `recovery-bench`, `throughput-bench` and `analytics-bench` (src/bin) each measure
//! one component in isolation.

pub mod db {
    //! Bulk benchmarks fill a database of their own (`make bench` puts it on a cluster of
    //! its own), so Debezium, which captures only `paystream`, never sees their rows.

    use anyhow::Context;
    use paystream_db::tls::connect_options;
    use sqlx::postgres::PgPoolOptions;
    use sqlx::{Connection, PgConnection, PgPool};

    /// The replica's port: `REPLICA_PORT`, or nginx's replica port of the local stack.
    pub fn replica_port() -> anyhow::Result<u16> {
        std::env::var("REPLICA_PORT").map_or(Ok(6432), |p| p.parse().context("REPLICA_PORT"))
    }

    /// `admin` pointed at database `db`, on `port` when given (same credentials).
    pub fn url(admin: &str, db: &str, port: Option<u16>) -> anyhow::Result<String> {
        let mut u = url::Url::parse(admin).context("admin url")?;
        u.set_path(db);
        if let Some(p) = port {
            u.set_port(Some(p)).ok().context("port")?;
        }
        Ok(u.to_string())
    }

    /// Creates `db` if it is missing and connects a small pool to it on the primary.
    pub async fn primary(admin: &str, db: &str) -> anyhow::Result<PgPool> {
        let mut conn = PgConnection::connect_with(&connect_options(admin)?).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
                .bind(db)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut conn)
                .await?;
        }
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .connect_with(connect_options(&url(admin, db, None)?)?)
            .await?)
    }
}
