//! What the primary knows about its own replication, for `paystream exporter`: the
//! slots that hold WAL back and the walsenders that stream to replicas. The catalog views
//! read here need `pg_read_all_stats` (which the `paystream` role has) for
//! `pg_stat_replication`'s lag columns; `pg_replication_slots` is readable by any role.

use std::time::Duration;

use crate::{DbError, Primary};

/// A replication slot (physical, for a replica; logical, for Debezium).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationSlot {
    pub name: String,
    pub active: bool,
    /// WAL the slot keeps from being recycled; `None` for a slot that has never been used
    /// (no `restart_lsn` yet), which retains nothing.
    pub retained_wal_bytes: Option<i64>,
}

/// Every replication slot on the primary, by name.
pub async fn replication_slots(db: &Primary) -> Result<Vec<ReplicationSlot>, DbError> {
    let rows: Vec<(String, bool, Option<i64>)> = sqlx::query_as(
        "SELECT slot_name::text, active,
                pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
         FROM pg_replication_slots ORDER BY slot_name",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, active, retained_wal_bytes)| ReplicationSlot {
            name,
            active,
            retained_wal_bytes,
        })
        .collect())
}

/// A replica streaming from the primary.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamingReplica {
    /// Its `application_name` (the replicas set it in `primary_conninfo`).
    pub name: String,
    /// How far its replay is behind; zero once it has caught up and the primary is idle
    /// (Postgres then reports no lag at all).
    pub replay_lag: Duration,
}

/// The physical replicas in `streaming` state. Logical walsenders (Debezium's) show in
/// `pg_stat_replication` too; they are told apart by the slot they hold, so a replica
/// without a slot still counts.
pub async fn streaming_replicas(db: &Primary) -> Result<Vec<StreamingReplica>, DbError> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT r.application_name::text,
                coalesce(extract(epoch FROM r.replay_lag), 0)::float8
         FROM pg_stat_replication r
         LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
         WHERE r.state = 'streaming' AND s.slot_type IS DISTINCT FROM 'logical'
         ORDER BY r.application_name",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, secs)| StreamingReplica {
            name,
            // A clock step can make Postgres report a negative lag.
            replay_lag: Duration::try_from_secs_f64(secs).unwrap_or_default(),
        })
        .collect())
}
