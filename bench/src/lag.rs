//! Whether the change stream and the replicas keep up with a sustained load: their lag,
//! read every half second through it. A stage that keeps up holds its lag at some level;
//! one that falls behind shows it growing from the first third of the load to the last.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::{self, histogram_since, quantile};

const EVERY: Duration = Duration::from_millis(500);

/// Readings this early are not of the load's steady state: the consumer's figure
/// refreshes every 2 s, so the first may be from before the load, and each load starts
/// from a stream at rest (`Ctx::quiet`), whose climb to its level would read as growth.
const WARM_UP: Duration = Duration::from_secs(2);

/// Each replica's replay lag, in bytes of WAL the primary has written and it has not yet
/// replayed. Only the stack's two replicas: Debezium's walsender reports its position when
/// Connect commits offsets, a sawtooth that says nothing about keeping up.
const REPLICAS: &str = "SELECT application_name, \
     pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 \
     FROM pg_stat_replication WHERE application_name IN ('replica1', 'replica2') \
     ORDER BY application_name";

/// One reading of every lag.
struct Reading {
    /// Since the sampler started.
    at: Duration,
    /// Messages of the CDC topic past the reconciler's committed offsets: librdkafka's
    /// figure, refreshed every 2 s. Offsets are stored once a change is applied and
    /// committed every second, so a reconciler that keeps up reads about a second of
    /// changes here, and what a restart would read again.
    consumer: f64,
    /// The reconciler's CDC latency histogram so far: commit to state, cumulative.
    cdc: Vec<(f64, u64)>,
    replicas: Vec<(String, f64)>,
}

/// Reads the lags in the background until [`Sampler::finish`].
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<Vec<Reading>>>,
}

impl Sampler {
    pub fn start(primary: PgPool, http: reqwest::Client, reconciler: String) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut readings = Vec::new();
            let started = Instant::now();
            loop {
                let at = started.elapsed();
                let (consumer, cdc) = metrics::reconciler_lag(&http, &reconciler).await?;
                let replicas = sqlx::query_as(REPLICAS).fetch_all(&primary).await?;
                readings.push(Reading {
                    at,
                    consumer,
                    cdc,
                    replicas,
                });
                tokio::select! {
                    _ = &mut stopped => return Ok(readings),
                    () = tokio::time::sleep(EVERY) => {}
                }
            }
        });
        Sampler { stop, task }
    }

    /// The lags over the load, one line for the report.
    pub async fn finish(self) -> anyhow::Result<String> {
        let _ = self.stop.send(());
        let mut readings = self.task.await??;
        readings.retain(|r| r.at >= WARM_UP);
        if readings.len() < 3 {
            // `--quick`'s runs: a smoke test, too short for a trend.
            return Ok(format!(
                "{} lag readings after the load's first {} s: too few to tell a trend",
                readings.len(),
                WARM_UP.as_secs()
            ));
        }
        let mut parts = vec![trend(
            "reconciler's lag to its committed offsets",
            "messages",
            &readings.iter().map(|r| r.consumer).collect::<Vec<_>>(),
            // A tenth of that second of changes at this stage's rates.
            200.0,
        )];
        let (first, mid, last) = (
            &readings[0].cdc,
            &readings[readings.len() / 2].cdc,
            &readings[readings.len() - 1].cdc,
        );
        let p99 = |from: &[(f64, u64)], to: &[(f64, u64)]| {
            quantile(&histogram_since(to, from), 0.99)
                .map_or("-".to_owned(), |v| format!("{:.0} ms", v * 1000.0))
        };
        parts.push(format!(
            "CDC commit -> state p99 {} in the first half, {} in the second",
            p99(first, mid),
            p99(mid, last)
        ));
        for (i, (name, _)) in readings[0].replicas.iter().enumerate() {
            let bytes: Vec<f64> = readings
                .iter()
                .filter_map(|r| r.replicas.get(i).map(|(_, b)| b / 1024.0))
                .collect();
            // A replica that keeps up is a few WAL records behind; 1 MB is seconds of it.
            parts.push(trend(&format!("{name} replay lag"), "kB", &bytes, 1024.0));
        }
        Ok(parts.join("; "))
    }
}

/// Whether a lag grew over the load: the mean of its last third of readings against the
/// mean of its first third, allowing twice the start plus `slack` of the lag's unit
/// before calling it growing.
fn grows(values: &[f64], slack: f64) -> (f64, f64, bool) {
    let third = (values.len() / 3).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (start, end) = (
        mean(&values[..third]),
        mean(&values[values.len() - third..]),
    );
    (start, end, end > 2.0 * start + slack)
}

fn trend(name: &str, unit: &str, values: &[f64], slack: f64) -> String {
    let (start, end, growing) = grows(values, slack);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!(
        "{name} {start:.0} -> {end:.0} {unit} (first third -> last third, max {max:.0}): {}",
        if growing { "GROWING" } else { "flat" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_that_holds_its_level_is_flat_at_any_level() {
        assert!(!grows(&[0.0; 9], 200.0).2);
        assert!(
            !grows(
                &[5_000.0, 4_000.0, 6_000.0, 5_500.0, 4_500.0, 5_000.0],
                200.0
            )
            .2
        );
        // Noise around zero within the slack.
        assert!(!grows(&[0.0, 0.0, 0.0, 150.0, 0.0, 180.0], 200.0).2);
    }

    #[test]
    fn a_lag_rising_through_the_load_is_growing() {
        let rising: Vec<f64> = (0..12).map(|i| f64::from(i) * 300.0).collect();
        let (start, end, growing) = grows(&rising, 200.0);
        assert_eq!((start, end), (450.0, 2_850.0));
        assert!(growing);
        // From nothing, past the slack.
        assert!(grows(&[0.0, 0.0, 0.0, 500.0, 900.0, 1_200.0], 200.0).2);
    }

    #[test]
    fn few_readings_compare_the_first_with_the_last() {
        assert_eq!(grows(&[10.0, 20.0], 0.0), (10.0, 20.0, false));
        assert_eq!(grows(&[10.0, 99.0, 30.0], 5.0), (10.0, 30.0, true));
    }
}
