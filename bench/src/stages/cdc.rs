//! Stage 3, CDC latency: commit on the primary (source.ts_ms) to the change in the
//! reconciler's state, from its histogram, at fixed write rates and flat out.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use rdkafka::Message;

use super::Ctx;
use crate::metrics::{cdc_histogram, drained, histogram_since, quantile};

pub async fn measure(ctx: &mut Ctx<'_>, client: Uuid) -> anyhow::Result<()> {
    // 0: as fast as one connection goes.
    for rate in [100u32, 1000, 0] {
        at_rate(ctx, client, rate).await?;
    }
    Ok(())
}

async fn at_rate(ctx: &mut Ctx<'_>, client: Uuid, rate: u32) -> anyhow::Result<()> {
    let label = if rate == 0 {
        "max".to_owned()
    } else {
        format!("{rate}/s")
    };
    println!("CDC latency at {label} ...");
    let (http, reconciler) = (&ctx.http, ctx.reconciler.as_str());
    // Only this phase's changes may be in the histogram's difference.
    drained(http, reconciler).await?;
    let before = cdc_histogram(http, reconciler).await?;
    let probe = Probe::start(ctx.stack, client);
    let (written, took) = write_at(&ctx.primary, client, rate, ctx.s.length * 2).await?;
    let behind = drained(http, reconciler).await?;
    let after = cdc_histogram(http, reconciler).await?;
    let hops = probe.finish(written).await;
    let mut probed: Vec<i64> = hops.iter().map(|h| h.total).collect();
    probed.sort_unstable();
    let delta = histogram_since(&after, &before);
    let q =
        |p: f64| quantile(&delta, p).map_or("-".to_owned(), |v| format!("{:.0} ms", v * 1000.0));
    let exact = |p: f64| exact_quantile(&probed, p).map_or("-".to_owned(), |v| format!("{v} ms"));
    let measured = format!(
        "{:.0} writes/s; p50 {}, p95 {}, p99 {} (probe consumer: p50 {}, p95 {}, p99 {} of {} rows; medians: Debezium {}, Connect {}, broker and fetch {}); drained {:.1} s after the last write",
        written as f64 / took.as_secs_f64(),
        q(0.5),
        q(0.95),
        q(0.99),
        exact(0.5),
        exact(0.95),
        exact(0.99),
        probed.len(),
        median_of(&hops, |h| h.debezium),
        median_of(&hops, |h| h.connect),
        median_of(&hops, |h| h.broker),
        behind.as_secs_f64()
    );
    ctx.report.record(
        format!("3. CDC commit -> reconciler state, {label}"),
        measured,
        "",
        "",
    );
    Ok(())
}

/// Inserts final (already resolved) payments at `rate` a second (0: as fast as one
/// connection goes) for `length`: changes for the CDC pipeline that leave nothing to poll.
async fn write_at(
    primary: &PgPool,
    client: Uuid,
    rate: u32,
    length: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut written = 0u64;
    // Batches of 10 per statement keep 1,000/s within one connection's reach.
    let batch = 10u32;
    let mut tick = (rate > 0).then(|| tokio::time::interval(Duration::from_secs(1) * batch / rate));
    while started.elapsed() < length {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        sqlx::query(
            "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, status,
                                   resolution_source, resolved_at)
             SELECT gen_random_uuid(), $1, 'cdc-' || gen_random_uuid(), 1250, 'usd', 'succeeded', 'api', now()
             FROM generate_series(1, $2)",
        )
        .bind(client)
        .bind(i32::try_from(batch).unwrap_or(10))
        .execute(primary)
        .await?;
        written += u64::from(batch);
    }
    Ok((written, started.elapsed()))
}

/// A cross-check of the reconciler's histogram that shares none of its code: a consumer
/// of its own reads the change topic and times each of this phase's rows from the commit
/// (`source.ts_ms`) to its arrival, exactly rather than within buckets.
struct Probe {
    task: tokio::task::JoinHandle<Vec<Hops>>,
    stop: tokio::sync::watch::Sender<u64>,
}

impl Probe {
    fn start(stack: &paystream_testkit::Stack, client: Uuid) -> Probe {
        let consumer = stack.consumer_at_end(stack.var("CDC_TOPIC"));
        let (stop, mut expected) = tokio::sync::watch::channel(u64::MAX);
        let client = client.to_string();
        let task = tokio::spawn(async move {
            let mut latencies: Vec<Hops> = Vec::new();
            loop {
                let want = *expected.borrow();
                if latencies.len() as u64 >= want {
                    return latencies;
                }
                let msg = tokio::select! {
                    m = consumer.recv() => m,
                    _ = expected.changed() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => return latencies,
                };
                let Ok(msg) = msg else { continue };
                let arrived = chrono::Utc::now().timestamp_millis();
                let Some(value) = msg
                    .payload()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                else {
                    continue;
                };
                if value["after"]["client_id"].as_str() == Some(client.as_str())
                    && value["op"] == "c"
                    && let Some(committed) = value["source"]["ts_ms"].as_i64()
                {
                    let read = value["ts_ms"].as_i64().unwrap_or(committed);
                    let produced = msg.timestamp().to_millis().unwrap_or(read);
                    latencies.push(Hops {
                        total: arrived - committed,
                        debezium: read - committed,
                        connect: produced - read,
                        broker: arrived - produced,
                    });
                }
            }
        });
        Probe { task, stop }
    }

    /// The latencies of the `written` rows (fewer if some never arrived within 30 s).
    async fn finish(self, written: u64) -> Vec<Hops> {
        let _ = self.stop.send(written);
        self.task.await.unwrap_or_default()
    }
}

/// Where one change's time went, in ms: commit to Debezium's reading of it (its `ts_ms`),
/// to the record's timestamp (Connect's producer), to this consumer (the broker and the
/// fetch).
#[derive(Debug, Clone, Copy)]
struct Hops {
    total: i64,
    debezium: i64,
    connect: i64,
    broker: i64,
}

/// The median of one hop, as text.
fn median_of(hops: &[Hops], hop: impl Fn(&Hops) -> i64) -> String {
    let mut v: Vec<i64> = hops.iter().map(hop).collect();
    v.sort_unstable();
    exact_quantile(&v, 0.5).map_or("-".to_owned(), |m| format!("{m} ms"))
}

/// The `q` quantile of sorted values (nearest rank).
fn exact_quantile(sorted: &[i64], q: f64) -> Option<i64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = ((q * sorted.len() as f64).ceil() as usize).saturating_sub(1);
    sorted.get(rank.min(last)).copied()
}

#[cfg(test)]
mod tests {
    use super::exact_quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(exact_quantile(&v, 0.5), Some(50));
        assert_eq!(exact_quantile(&v, 0.99), Some(99));
        assert_eq!(exact_quantile(&v, 1.0), Some(100));
        assert_eq!(exact_quantile(&v, 0.0), Some(1));
        assert_eq!(exact_quantile(&[7], 0.99), Some(7));
        assert_eq!(exact_quantile(&[], 0.5), None);
    }
}
