//! What the bench reads from a service's Prometheus exposition (`/metrics`).

use std::future::Future;
use std::time::{Duration, Instant};

/// A service's Prometheus exposition.
async fn metrics(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The sum of every series whose line starts with `prefix` (a metric over its labels).
fn sum_series(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The sum of every series of a service whose line starts with `prefix`.
pub async fn sum(http: &reqwest::Client, base: &str, prefix: &str) -> anyhow::Result<f64> {
    Ok(sum_series(&metrics(http, base).await?, prefix))
}

/// Seconds and count of each histogram of `series` (its name and label set, empty for
/// none), summed over the services at `bases`: what they have spent so far, by part.
pub async fn time_spent<const N: usize>(
    http: &reqwest::Client,
    bases: &[&str],
    series: [(&str, &str); N],
) -> anyhow::Result<[(f64, f64); N]> {
    let mut spent = [(0.0, 0.0); N];
    for base in bases {
        let text = metrics(http, base).await?;
        for ((seconds, count), (name, labels)) in spent.iter_mut().zip(series) {
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            *seconds += sum_series(&text, &format!("{name}_sum{labels} "));
            *count += sum_series(&text, &format!("{name}_count{labels} "));
        }
    }
    Ok(spent)
}

/// What was spent between two readings of [`time_spent`].
pub fn spent_since<const N: usize>(
    now: [(f64, f64); N],
    before: [(f64, f64); N],
) -> [(f64, f64); N] {
    std::array::from_fn(|i| (now[i].0 - before[i].0, now[i].1 - before[i].1))
}

/// The API's time on creates so far, summed over its instances: seconds and count of
/// the whole request (`http_request_duration_seconds`) and of each phase
/// (`payment_create_phase_seconds`).
#[derive(Debug, Default, Clone, Copy)]
pub struct CreateTime {
    pub request: (f64, f64),
    pub record: (f64, f64),
    pub stripe: (f64, f64),
    pub store: (f64, f64),
}

impl CreateTime {
    const SERIES: [(&str, &str); 4] = [
        (
            "http_request_duration_seconds",
            r#"route="/v1/payments",method="POST""#,
        ),
        ("payment_create_phase_seconds", r#"phase="record""#),
        ("payment_create_phase_seconds", r#"phase="stripe""#),
        ("payment_create_phase_seconds", r#"phase="store""#),
    ];

    pub async fn read(http: &reqwest::Client, instances: &[&str]) -> anyhow::Result<CreateTime> {
        Ok(Self::from(time_spent(http, instances, Self::SERIES).await?))
    }

    /// What the API spent between `before` and `self`.
    pub fn since(&self, before: &CreateTime) -> CreateTime {
        Self::from(spent_since(self.parts(), before.parts()))
    }

    fn parts(&self) -> [(f64, f64); 4] {
        [self.request, self.record, self.stripe, self.store]
    }

    fn from([request, record, stripe, store]: [(f64, f64); 4]) -> CreateTime {
        CreateTime {
            request,
            record,
            stripe,
            store,
        }
    }
}

/// The mean of a [`time_spent`] part, in milliseconds.
pub fn mean_ms((seconds, count): (f64, f64)) -> f64 {
    1000.0 * seconds / count.max(1.0)
}

/// Stripe polls the reconciler has made, all outcomes.
pub async fn polls_total(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = metrics(http, base).await?;
    Ok(sum_series(&text, "reconciler_polls_total{") as u64)
}

/// Cumulative buckets `(le, count)` of the reconciler's CDC latency histogram.
pub async fn cdc_histogram(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<(f64, u64)>> {
    let buckets = cdc_buckets(&metrics(http, base).await?);
    anyhow::ensure!(
        !buckets.is_empty(),
        "no CDC latency histogram at {base}/metrics"
    );
    Ok(buckets)
}

fn cdc_buckets(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("reconciler_cdc_latency_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The reconciler's consumer lag on the CDC topic (messages, summed over partitions) and
/// its CDC latency histogram, from one reading.
pub async fn reconciler_lag(
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<(f64, Vec<(f64, u64)>)> {
    let text = metrics(http, base).await?;
    Ok((
        sum_series(&text, "reconciler_consumer_lag{"),
        cdc_buckets(&text),
    ))
}

/// Polls `missing` every 200 ms until it answers `None`, and returns how long that took;
/// fails after 300 s with its last answer (what never happened).
async fn until<F, Fut>(mut missing: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let started = Instant::now();
    loop {
        match missing().await? {
            None => return Ok(started.elapsed()),
            Some(what) if started.elapsed() >= Duration::from_secs(300) => {
                anyhow::bail!("{what} in 300 s")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the reconciler has consumed everything on the CDC topic (its lag metric,
/// summed over partitions, reads 0); returns how long that took.
pub async fn drained(http: &reqwest::Client, base: &str) -> anyhow::Result<Duration> {
    until(|| async move {
        let lag = sum(http, base, "reconciler_consumer_lag{").await?;
        Ok((lag != 0.0).then(|| "the reconciler did not catch up with the CDC topic".to_owned()))
    })
    .await
}

/// How many CDC changes the reconciler has applied to its state so far.
pub async fn changes_applied(http: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
    sum(http, base, "reconciler_changes_total{").await
}

/// Waits until the reconciler has applied `n` changes more than it had at `mark` (a
/// reading of [`changes_applied`]): for a write Debezium may not have published yet,
/// which the lag alone would not show.
pub async fn applied_since(
    http: &reqwest::Client,
    base: &str,
    mark: f64,
    n: u64,
) -> anyhow::Result<Duration> {
    until(|| async move {
        let applied = changes_applied(http, base).await? - mark;
        Ok(
            (applied < n as f64)
                .then(|| format!("the reconciler applied {applied} of {n} changes")),
        )
    })
    .await
}

/// A change stream applying fewer changes a second than this is at rest: a poller's
/// trickle, not a backlog being drained.
const AT_REST_PER_SEC: f64 = 20.0;

/// Waits until the reconciler has consumed everything on the topic and applies fewer
/// than [`AT_REST_PER_SEC`]: the change stream is at rest, so the next run does not pay
/// for an earlier one's changes. A stream that never rests is waited for at most 30 s,
/// and said so.
pub async fn at_rest(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    drained(http, base).await?;
    let resting = Instant::now();
    let mut last = changes_applied(http, base).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = changes_applied(http, base).await?;
        if now - last < AT_REST_PER_SEC {
            return Ok(());
        }
        if resting.elapsed() > Duration::from_secs(30) {
            println!(
                "  (the change stream did not rest in 30 s: {:.0} changes in the last second)",
                now - last
            );
            return Ok(());
        }
        last = now;
    }
}

/// A histogram's counts between two cumulative readings.
pub fn histogram_since(now: &[(f64, u64)], before: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a.saturating_sub(*b)))
        .collect()
}

/// Prometheus' histogram_quantile: linear within the bucket holding the rank.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = (rank - prev.1 as f64) / (count - prev.1).max(1) as f64;
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# TYPE reconciler_cdc_latency_seconds histogram
reconciler_cdc_latency_seconds_bucket{le=\"0.1\"} 10
reconciler_cdc_latency_seconds_bucket{le=\"0.5\"} 90
reconciler_cdc_latency_seconds_bucket{le=\"+Inf\"} 100
reconciler_cdc_latency_seconds_sum 20.5
reconciler_consumer_lag{partition=\"0\"} 3
reconciler_consumer_lag{partition=\"1\"} 4
reconciler_polls_total{outcome=\"ok\"} 7
";

    #[test]
    fn buckets_parse_with_inf_last() {
        assert_eq!(
            cdc_buckets(EXPOSITION),
            vec![(0.1, 10), (0.5, 90), (f64::INFINITY, 100)]
        );
    }

    #[test]
    fn series_sum_over_labels() {
        assert_eq!(sum_series(EXPOSITION, "reconciler_consumer_lag{"), 7.0);
        assert_eq!(sum_series(EXPOSITION, "reconciler_missing{"), 0.0);
    }

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        let b = cdc_buckets(EXPOSITION);
        let p50 = quantile(&b, 0.5).unwrap_or_default();
        assert!((p50 - 0.3).abs() < 1e-9, "{p50}");
        // Beyond the last finite bucket Prometheus answers that bucket's bound.
        assert_eq!(quantile(&b, 0.99), Some(0.5));
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn histogram_counts_between_readings_never_go_negative() {
        let before = [(0.01, 5), (0.1, 8), (f64::INFINITY, 9)];
        let now = [(0.01, 7), (0.1, 12), (f64::INFINITY, 13)];
        assert_eq!(
            histogram_since(&now, &before),
            vec![(0.01, 2), (0.1, 4), (f64::INFINITY, 4)]
        );
        // A restarted reconciler starts its histogram again.
        assert_eq!(histogram_since(&before, &now)[0], (0.01, 0));
    }
}
