//! Breaking the stack on schedule: processes killed or restarted through the project's
//! scripts, the Debezium slot dropped, Stripe made to fail. Each process fault is timed
//! from injection to recovery, so that the checks can tell an expected 502 from a bug.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::plan::{FaultKind, ScheduledFault};
use crate::stack::{ChaosStack, StackError};

/// The webhook faults that hold for a whole run: Stripe drops, duplicates, reorders and
/// (rarely) mis-signs deliveries.
pub fn webhook_faults() -> Value {
    json!({
        "webhook_drop_rate": 0.2,
        "webhook_duplicate_rate": 0.2,
        "webhook_reorder_window_ms": 400,
        "webhook_stale_rate": 0.03,
        "webhook_bad_signature_rate": 0.03,
    })
}

fn stripe_faults(kind: Option<FaultKind>) -> Value {
    let mut f = webhook_faults();
    match kind {
        Some(FaultKind::StripeErrors) => f["api_error_rate"] = json!(0.3),
        Some(FaultKind::StripeRateLimits) => f["api_rate_limit_rate"] = json!(0.3),
        Some(FaultKind::StripeLatency) => f["api_latency_ms"] = json!(1_200),
        _ => {}
    }
    f
}

pub async fn set_stripe_faults(
    http: &reqwest::Client,
    sim: &str,
    kind: Option<FaultKind>,
) -> Result<(), reqwest::Error> {
    http.put(format!("{sim}/_sim/faults"))
        .json(&stripe_faults(kind))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// What the fault tasks did: how many of each kind, and the windows of process faults.
#[derive(Debug, Default, Clone)]
pub struct Injected {
    pub counts: BTreeMap<FaultKind, usize>,
    pub windows: Vec<(u64, u64)>,
}

fn ms_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn blocking<F>(f: F) -> Result<(), StackError>
where
    F: FnOnce() -> Result<(), StackError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StackError::Spawn("fault".into(), std::io::Error::other(e))))
}

/// Runs the process faults one after another, each at its time (or as soon as the
/// previous one has recovered).
pub async fn run_process_faults(
    stack: std::sync::Arc<ChaosStack>,
    admin_url: String,
    faults: Vec<ScheduledFault>,
    t0: Instant,
) -> Result<Injected, StackError> {
    let mut done = Injected::default();
    for f in faults {
        let wait = f.at_ms.saturating_sub(ms_since(t0));
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let start = ms_since(t0);
        tracing::info!(fault = f.kind.as_str(), at_ms = start, "injecting");
        inject(&stack, &admin_url, f).await?;
        let end = ms_since(t0);
        tracing::info!(fault = f.kind.as_str(), took_ms = end - start, "recovered");
        *done.counts.entry(f.kind).or_default() += 1;
        done.windows.push((start, end));
    }
    Ok(done)
}

async fn inject(
    stack: &std::sync::Arc<ChaosStack>,
    admin_url: &str,
    f: ScheduledFault,
) -> Result<(), StackError> {
    // Every process fault is a stop, a hold and a start through the project's scripts;
    // losing the slot also drops it while Connect is down (connect.sh then sees a slot
    // gone under its offsets and takes a new snapshot).
    let (script, stop, start): (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    ) = match f.kind {
        FaultKind::KillReconciler => (
            "scripts/stack.sh",
            &["kill", "reconciler"],
            &["start", "reconciler"],
        ),
        FaultKind::KillWebhook => (
            "scripts/stack.sh",
            &["kill", "webhook"],
            &["start", "webhook"],
        ),
        FaultKind::KillApi => ("scripts/stack.sh", &["kill", "api-1"], &["start", "api-1"]),
        FaultKind::RestartConnect | FaultKind::LoseSlot => {
            ("debezium/connect.sh", &["down"], &["up"])
        }
        FaultKind::RestartBroker => ("kafka/broker.sh", &["down"], &["up"]),
        FaultKind::RestartPrimary => (
            "postgres-replication/cluster.sh",
            &["stop-primary"],
            &["start-primary"],
        ),
        FaultKind::StripeErrors | FaultKind::StripeRateLimits | FaultKind::StripeLatency => {
            return Ok(());
        }
    };
    let run = |args: &'static [&'static str]| {
        let stack = stack.clone();
        blocking(move || stack.script(script, args))
    };
    run(stop).await?;
    if f.kind == FaultKind::LoseSlot {
        drop_slot(admin_url).await?;
    }
    tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
    run(start).await
}

async fn drop_slot(admin_url: &str) -> Result<(), StackError> {
    let err = |e: sqlx::Error| {
        StackError::Spawn("pg_drop_replication_slot".into(), std::io::Error::other(e))
    };
    let options = paystream_db::tls::connect_options(admin_url).map_err(|e| {
        StackError::Spawn("pg_drop_replication_slot".into(), std::io::Error::other(e))
    })?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(err)?;
    // The walsender may take a moment to let go of the slot after Connect stopped.
    for _ in 0..50 {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = 'paystream_debezium' AND NOT active",
        )
        .execute(&db)
        .await
        .map_err(err)?
        .rows_affected();
        if dropped == 1 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(StackError::Spawn(
        "pg_drop_replication_slot".into(),
        std::io::Error::other("the Debezium slot stayed active after Connect stopped"),
    ))
}

/// Runs the Stripe faults: each holds for its time, then Stripe behaves again.
pub async fn run_stripe_faults(
    http: reqwest::Client,
    sim: String,
    faults: Vec<ScheduledFault>,
    t0: Instant,
) -> Result<BTreeMap<FaultKind, usize>, reqwest::Error> {
    let mut counts = BTreeMap::new();
    for f in faults {
        let wait = f.at_ms.saturating_sub(ms_since(t0));
        tokio::time::sleep(Duration::from_millis(wait)).await;
        tracing::info!(fault = f.kind.as_str(), hold_ms = f.hold_ms, "injecting");
        set_stripe_faults(&http, &sim, Some(f.kind)).await?;
        tokio::time::sleep(Duration::from_millis(f.hold_ms)).await;
        set_stripe_faults(&http, &sim, None).await?;
        *counts.entry(f.kind).or_default() += 1;
    }
    Ok(counts)
}
