//! Keeps the hourly rollups in step with `payments` (`paystream_db::analytics::refresh`);
//! the API runs `refresh_once` on a timer, supervised.

use std::time::Instant;

use paystream_db::Primary;
pub use paystream_db::analytics::{Refreshed, refresh};

/// One incremental refresh; a failure (the primary down) is logged and left for the next
/// turn. Readers keep the rollups they have.
pub async fn refresh_once(primary: &Primary) {
    let started = Instant::now();
    match refresh(primary, false).await {
        Ok(Some(r)) => tracing::debug!(
            hours = r.hours,
            minutes = r.minutes,
            full = r.full,
            took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "analytics rollups refreshed"
        ),
        Ok(None) => tracing::debug!("analytics rollups: another instance is refreshing"),
        Err(e) => tracing::warn!(error = %e, "analytics rollups refresh failed"),
    }
}
