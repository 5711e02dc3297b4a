//! The worker's metrics: what the engine counted, and the gauges of its state.

use std::time::Duration;

use chrono::Utc;
use paystream_service::Metrics;

use super::engine::{Count, Engine};
use crate::output::StatusUpdate;
use crate::state::Effect;

const UNDECODABLE: (&str, &str) = (
    "reconciler_undecodable_total",
    "CDC records that could not be decoded (sent to the dead-letter topic)",
);

const NUDGES: (&str, &str) = (
    "reconciler_sweep_nudges_total",
    "pending payments the sweep found moved at Stripe and polled first (or applied, when final)",
);

const CDC_LATENCY: (&str, &str) = (
    "reconciler_cdc_latency_seconds",
    "from the commit on the primary (source.ts_ms) to the change in the state",
);

/// Counters that may stay at zero for a process's whole life exist from its start, so a
/// dashboard or an alert reads 0 rather than no data, and `rate()` sees the first one.
pub fn zero(metrics: &Metrics) {
    metrics.add(UNDECODABLE.0, UNDECODABLE.1, &[], 0);
    metrics.declare_histogram(CDC_LATENCY.0, CDC_LATENCY.1, &[]);
}

pub fn count(metrics: &Metrics, c: Count) {
    match c {
        Count::Undecodable => metrics.inc(UNDECODABLE.0, UNDECODABLE.1, &[]),
        Count::Applied {
            effect,
            commit_ts_ms,
        } => {
            if let Some(ts) = commit_ts_ms {
                let lag_ms = Utc::now().timestamp_millis().saturating_sub(ts).max(0);
                metrics.observe(
                    CDC_LATENCY.0,
                    CDC_LATENCY.1,
                    &[],
                    Duration::from_millis(lag_ms.unsigned_abs()),
                );
            }
            metrics.inc(
                "reconciler_changes_total",
                "CDC changes applied to the state, by effect",
                &[("effect", effect_label(effect))],
            );
        }
        Count::Confirmed(n) => metrics.add(
            "reconciler_published_total",
            "messages confirmed by the broker (updates and the offsets behind them)",
            &[],
            n,
        ),
        Count::RateLimitWait => metrics.inc(
            "reconciler_rate_limit_waits_total",
            "dispatch rounds that had a due poll but no token",
            &[],
        ),
        Count::Swept {
            calls,
            events,
            nudged,
            truncated,
        } => {
            let outcome = if truncated { "truncated" } else { "ok" };
            metrics.inc(
                "reconciler_sweeps_total",
                "sweeps of Stripe's events, by outcome",
                &[("outcome", outcome)],
            );
            for (name, help, n) in [
                (
                    "reconciler_sweep_calls_total",
                    "event list pages the sweeps read (one Stripe call each)",
                    u64::from(calls),
                ),
                (
                    "reconciler_sweep_events_total",
                    "events new to the sweep",
                    events as u64,
                ),
                (NUDGES.0, NUDGES.1, nudged as u64),
            ] {
                metrics.add(name, help, &[], n);
            }
        }
        Count::NudgedLate => metrics.inc(NUDGES.0, NUDGES.1, &[]),
        Count::SweepFailed => metrics.inc(
            "reconciler_sweeps_total",
            "sweeps of Stripe's events, by outcome",
            &[("outcome", "failed")],
        ),
    }
}

pub fn published(metrics: &Metrics, u: &StatusUpdate) {
    metrics.inc(
        "reconciler_resolutions_total",
        "final transitions seen in the CDC stream and published, by resolution source",
        &[(
            "source",
            u.resolution_source.as_deref().unwrap_or("unknown"),
        )],
    );
}

pub fn gauges(metrics: &Metrics, engine: &Engine, polls_in_flight: usize) {
    let mut bytes = 0;
    for (p, s) in engine.states() {
        bytes += s.approx_bytes();
        metrics.set_gauge(
            "reconciler_pending",
            "pending payments held in the state, per partition",
            &[("partition", &p.to_string())],
            i64::try_from(s.len()).unwrap_or(i64::MAX),
        );
    }
    metrics.set_gauge(
        "reconciler_state_bytes",
        "approximate heap bytes of the pending state",
        &[],
        i64::try_from(bytes).unwrap_or(i64::MAX),
    );
    metrics.set_gauge(
        "reconciler_partitions",
        "CDC partitions this instance holds state for (0 for long: the group gave it none)",
        &[],
        i64::try_from(engine.partitions()).unwrap_or(i64::MAX),
    );
    metrics.set_gauge(
        "reconciler_polls_in_flight",
        "Stripe polls running now",
        &[],
        i64::try_from(polls_in_flight).unwrap_or(i64::MAX),
    );
}

fn effect_label(e: Effect) -> &'static str {
    match e {
        Effect::Added => "added",
        Effect::Updated => "updated",
        Effect::Resolved { .. } => "resolved",
        Effect::Parked => "parked",
        Effect::Stale => "stale",
        Effect::Ignored => "ignored",
    }
}
