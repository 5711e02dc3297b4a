//! Rebuilding the pending state of newly assigned partitions from a read replica.
//!
//! Why this and not a checkpoint of the state: the database already is a durable, exact
//! copy of the pending set, kept by the very writes the state mirrors; a checkpoint
//! would be a second copy to write, version and keep consistent with its offsets. The
//! one care needed is freshness: the replica must have replayed every commit that the
//! committed offsets cover, or a payment resolved before the offset could come back as
//! pending with no change left to remove it. So the primary's current WAL position is
//! read first and the replica is waited for until it has replayed that far; then the
//! snapshot is at least as new as anything before the committed offsets, and replaying
//! from them only repeats changes the version check recognises.

use std::collections::HashMap;
use std::time::Duration;

use paystream_db::{DbError, Primary, Replica, replica};

use crate::partition::partition_for;
use crate::schedule::Schedule;
use crate::state::PendingState;

pub type RecoveryError = DbError;

/// How long to wait for the replica to catch up before giving up (and retrying later).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// The pending state of each of `partitions` (out of `total`), as of now.
pub async fn load(
    primary: &Primary,
    replica: &Replica,
    partitions: &[i32],
    total: i32,
    schedule: &Schedule,
) -> Result<HashMap<i32, PendingState>, RecoveryError> {
    let mut states: HashMap<i32, PendingState> = partitions
        .iter()
        .map(|p| (*p, PendingState::default()))
        .collect();
    if partitions.is_empty() {
        return Ok(states);
    }
    let position = primary.wal_position().await?;
    replica::pending_payments(replica, &position, CATCH_UP_LIMIT, |r| {
        let Some(state) = states.get_mut(&partition_for(r.id.as_uuid(), total)) else {
            return;
        };
        // Fresh states, and one row per payment: nothing to order, so no version check.
        state.hold(
            r.id.as_uuid(),
            r.intent.as_deref(),
            r.created_at,
            r.version,
            schedule,
        );
    })
    .await?;
    Ok(states)
}
