//! `make bench`: each stage of the running local stack against its floor, measured in the
//! same run on the same machine, printed as one table and written to
//! `.stack/bench/latest.md`. Every figure is the median of several runs.
//!
//!   paystream-bench [--quick]     (--quick: one short run each, a smoke test)
//!   paystream-bench --load SECS   (only payment initiation at 32 clients, to profile)
#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    clippy::cast_precision_loss
)]

mod load;
mod pgbench;
mod procs;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_db::keys::{self, Role};
use paystream_testkit::Stack;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

struct Settings {
    runs: usize,
    length: Duration,
}

/// One line of the table.
struct Row {
    figure: String,
    measured: String,
    floor: String,
    ratio: String,
}

fn row(
    figure: impl Into<String>,
    measured: impl Into<String>,
    floor: impl Into<String>,
    ratio: impl Into<String>,
) -> Row {
    let r = Row {
        figure: figure.into(),
        measured: measured.into(),
        floor: floor.into(),
        ratio: ratio.into(),
    };
    // Each figure as soon as it is measured, so a failing later stage loses nothing.
    println!("  {}: {} | {} | {}", r.figure, r.measured, r.floor, r.ratio);
    r
}

/// A load stage's row: rate, latencies and errors, against its pgbench floor.
fn against_floor(figure: impl Into<String>, r: &load::Run, unit: &str, floor: f64) -> Row {
    row(
        figure,
        format!(
            "{:.0}/s{unit}, p50 {}, p99 {}{}",
            r.per_sec,
            ms(r.p50),
            ms(r.p99),
            errors(r.errors)
        ),
        format!("pgbench {floor:.0} tps"),
        format!("{:.2}", r.per_sec / floor),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn sql_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sql")
}

async fn median_tps(
    url: &str,
    script: &str,
    clients: usize,
    s: &Settings,
    vars: &[(&str, String)],
) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..s.runs {
        v.push(pgbench::tps(url, &sql_dir().join(script), clients, s.length, vars).await?);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// Client keys for the load: spread so no key nears its rate limit (100/s per instance).
async fn bench_keys(primary: &PgPool, n: usize) -> anyhow::Result<(Uuid, Vec<String>)> {
    let mut out = Vec::new();
    let mut first = None;
    let run = Uuid::now_v7();
    for i in 0..n {
        let (client, key) = keys::create(
            &primary.clone().into(),
            &format!("bench-{run}-{i}"),
            Role::Client,
        )
        .await?;
        first.get_or_insert(client);
        out.push(key);
    }
    Ok((first.context("no keys")?, out))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn errors(n: u64) -> String {
    if n > 0 {
        format!(", {n} errors")
    } else {
        String::new()
    }
}

/// A Stripe event as Stripe sends it for a PaymentIntent that succeeded.
fn webhook_event(event_id: &str, pi: &str, payment: Uuid) -> String {
    json!({
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": chrono::Utc::now().timestamp(),
        "data": {"object": {
            "id": pi, "object": "payment_intent", "status": "succeeded",
            "amount": 1250, "currency": "usd", "metadata": {"payment_id": payment.to_string()}
        }}
    })
    .to_string()
}

/// Cumulative buckets `(le, count)` of the reconciler's CDC latency histogram.
async fn cdc_histogram(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<(f64, u64)>> {
    let text = metrics(http, base).await?;
    let buckets: Vec<(f64, u64)> = text
        .lines()
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
        .collect();
    anyhow::ensure!(
        !buckets.is_empty(),
        "no CDC latency histogram at {base}/metrics"
    );
    Ok(buckets)
}

/// Waits until the reconciler has consumed everything on the CDC topic (its lag metric,
/// summed over partitions, reads 0); returns how long that took.
async fn drained(http: &reqwest::Client, base: &str) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        let text = metrics(http, base).await?;
        if sum_series(&text, "reconciler_consumer_lag{") == 0.0 {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the reconciler did not catch up with the CDC topic in 300 s")
}

/// Prometheus' histogram_quantile: linear within the bucket holding the rank.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
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

/// Inserts final (already resolved) payments at `rate` a second (0: as fast as one
/// connection goes) for `length`: changes for the CDC pipeline that leave nothing to poll.
async fn write_at(
    primary: &PgPool,
    client: Uuid,
    rate: u32,
    length: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let started = std::time::Instant::now();
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

/// One new payment through the API, with key number `k` (mod the keys): whether it was
/// created (201).
async fn create_payment(
    http: reqwest::Client,
    api: String,
    keys: Arc<Vec<String>>,
    k: usize,
) -> bool {
    http.post(format!("{api}/v1/payments"))
        .bearer_auth(&keys[k % keys.len()])
        .header("Idempotency-Key", Uuid::now_v7().to_string())
        .json(&create_body())
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED)
}

fn create_body() -> serde_json::Value {
    json!({"amount": 1250, "currency": "usd", "description": "bench"})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick {
        Settings {
            runs: 1,
            length: Duration::from_secs(2),
        }
    } else {
        Settings {
            runs: 3,
            length: Duration::from_secs(5),
        }
    };
    let stack = Stack::from_env_file();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    // Stripe's own rate limits (which stripe-sim mimics: 100/s, 25/s per endpoint) would
    // cap every figure below at 25 creates/s: lifted for the run, restored after.
    let sim = stack.var("STRIPE_SIM_URL").to_owned();
    let world: serde_json::Value = http
        .get(format!("{sim}/_sim/world"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut unlimited = world.clone();
    unlimited["per_endpoint_rate"] = json!(0);
    unlimited["global_rate"] = json!(0);
    http.put(format!("{sim}/_sim/world"))
        .json(&unlimited)
        .send()
        .await?
        .error_for_status()?;
    // `--load SECS`: only POST /v1/payments at 32 clients, for a profiler to watch.
    let load_only = std::env::args()
        .skip_while(|a| a != "--load")
        .nth(1)
        .map(|v| v.parse::<u64>())
        .transpose()?;
    let result = match load_only {
        Some(secs) => initiation_load(&stack, &http, Duration::from_secs(secs))
            .await
            .map(|()| (Vec::new(), Vec::new(), Vec::new())),
        None => stages(&stack, &http, &s).await,
    };
    http.put(format!("{sim}/_sim/world"))
        .json(&world)
        .send()
        .await?
        .error_for_status()?;
    let (rows, idle, peak) = result?;
    if load_only.is_some() {
        return Ok(());
    }

    let text = table(&rows, &idle, &peak);
    println!("\n{text}");
    let out = stack.root().join(".stack/bench/latest.md");
    std::fs::create_dir_all(out.parent().context("dir")?)?;
    std::fs::write(&out, text)?;
    println!("written to {}", out.display());
    Ok(())
}

type Usage = Vec<(String, f64, f64)>;

async fn initiation_load(
    stack: &Stack,
    http: &reqwest::Client,
    length: Duration,
) -> anyhow::Result<()> {
    let primary = stack.pool("DATABASE_URL").await;
    let (_, keys) = bench_keys(&primary, 32).await?;
    let (keys, api) = (Arc::new(keys), stack.var("PAYSTREAM_API_URL").to_owned());
    let http = http.clone();
    let r = load::closed_loop(32, length, move |c, n| {
        create_payment(http.clone(), api.clone(), keys.clone(), c + n as usize)
    })
    .await;
    println!(
        "{:.0}/s, p50 {}, p99 {}{}",
        r.per_sec,
        ms(r.p50),
        ms(r.p99),
        errors(r.errors)
    );
    Ok(())
}

/// Every stage in turn: the table's rows, and resource use at idle and at peak.
async fn stages(
    stack: &Stack,
    http: &reqwest::Client,
    s: &Settings,
) -> anyhow::Result<(Vec<Row>, Usage, Usage)> {
    let api = stack.var("PAYSTREAM_API_URL").to_owned();
    let db_url = stack.var("DATABASE_URL").to_owned();
    let primary = stack.pool("DATABASE_URL").await;
    let mut rows = Vec::new();

    println!("resource use at idle (5 s) ...");
    let idle_a = procs::sample();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = procs::between(&idle_a, &procs::sample());

    // The Stripe stand-in's own capacity, so it is known not to be the API's bottleneck.
    let stripe_base = stack.var("STRIPE_API_BASE").to_owned();
    let stripe_key = stack.var("STRIPE_SECRET_KEY").to_owned();
    let mut runs = Vec::new();
    for _ in 0..s.runs {
        let (http, base, key) = (http.clone(), stripe_base.clone(), stripe_key.clone());
        runs.push(
            load::closed_loop(32, s.length, move |_, _| {
                let (http, base, key) = (http.clone(), base.clone(), key.clone());
                async move {
                    http.post(format!("{base}/v1/payment_intents"))
                        .bearer_auth(&key)
                        .form(&[("amount", "1250"), ("currency", "usd")])
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .await,
        );
    }
    let stripe = load::median(runs);
    rows.push(row(
        "Stripe stand-in: create intent, 32 clients",
        format!("{:.0}/s, p50 {}", stripe.per_sec, ms(stripe.p50)),
        "",
        "",
    ));

    // 1. Payment initiation through nginx, against pgbench running the same SQL.
    let (client_id, keys) = bench_keys(&primary, 32).await?;
    let keys = Arc::new(keys);
    let keyhash = hex(&keys::hash(&keys[0]));
    let floor_vars = [
        ("client", client_id.to_string()),
        ("keyhash", keyhash.clone()),
    ];
    let mut peak = None;
    for clients in [1, 8, 32, 128] {
        println!("payment initiation, {clients} clients ...");
        let mut runs = Vec::new();
        for run in 0..s.runs {
            let before = procs::sample();
            let (http, api, keys) = (http.clone(), api.clone(), keys.clone());
            runs.push(
                load::closed_loop(clients, s.length, move |c, n| {
                    create_payment(http.clone(), api.clone(), keys.clone(), c + n as usize)
                })
                .await,
            );
            if clients == 128 && run == 0 {
                peak = Some(procs::between(&before, &procs::sample()));
            }
        }
        let r = load::median(runs);
        let floor = median_tps(&db_url, "create_payment.sql", clients, s, &floor_vars).await?;
        rows.push(against_floor(
            format!("1. POST /v1/payments, {clients} clients"),
            &r,
            "",
            floor,
        ));
    }

    // 2. Idempotent replays: the same 200 requests again, served from the stored responses.
    // Each key replays its own requests, spread over the 32 keys so the per-key rate limit
    // (100/s per instance) is not what is measured.
    println!("idempotent replays ...");
    let prefix = format!("replay-{}-", Uuid::now_v7());
    let key_of = |k: usize| keys[k % keys.len()].clone();
    for k in 1..=200 {
        let r = http
            .post(format!("{api}/v1/payments"))
            .bearer_auth(key_of(k))
            .header("Idempotency-Key", format!("{prefix}{k}"))
            .json(&create_body())
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == reqwest::StatusCode::CREATED,
            "replay seed: {}",
            r.status()
        );
    }
    let mut runs = Vec::new();
    for _ in 0..s.runs {
        let (http, api, keys, prefix) = (http.clone(), api.clone(), keys.clone(), prefix.clone());
        runs.push(
            load::closed_loop(32, s.length, move |c, n| {
                let (http, api, keys, prefix) =
                    (http.clone(), api.clone(), keys.clone(), prefix.clone());
                let k = 1 + (c * 7 + n as usize) % 200;
                async move {
                    http.post(format!("{api}/v1/payments"))
                        .bearer_auth(&keys[k % keys.len()])
                        .header("Idempotency-Key", format!("{prefix}{k}"))
                        .json(&create_body())
                        .send()
                        .await
                        .is_ok_and(|r| r.headers().contains_key("idempotent-replayed"))
                }
            })
            .await,
        );
    }
    let r = load::median(runs);
    let floor = median_tps(
        &db_url,
        "replay.sql",
        32,
        s,
        &[
            ("client", client_id.to_string()),
            ("keyhash", keyhash.clone()),
            ("prefix", prefix.clone()),
            ("n", "200".into()),
        ],
    )
    .await?;
    rows.push(against_floor(
        "2. Idempotent replay, 32 clients",
        &r,
        "",
        floor,
    ));

    // 6. Webhook ingest through nginx: signed payment_intent.succeeded events, each for its
    // own pending payment, so every one is verified, stored and applied.
    println!("webhook ingest ...");
    let run = Uuid::now_v7().simple().to_string();
    // Enough for three 5 s runs at 1,300/s; the unused rest is deleted after the stage.
    let total: i64 = 20_000;
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, stripe_payment_intent_id, stripe_status)
         SELECT gen_random_uuid(), $1, 'wh-' || $2 || '-' || g, 1250, 'usd', 'pi_wh_' || $2 || '_' || g, 'requires_payment_method'
         FROM generate_series(1, $3::bigint) g",
    )
    .bind(client_id)
    .bind(&run)
    .bind(total)
    .execute(&primary)
    .await?;
    let ids: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT stripe_payment_intent_id, id FROM payments WHERE idempotency_key LIKE 'wh-' || $1 || '-%'",
    )
    .bind(&run)
    .fetch_all(&primary)
    .await?;
    let ids = Arc::new(ids);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let secret = Arc::new(stack.var("STRIPE_WEBHOOK_SECRET").to_owned());
    let mut runs = Vec::new();
    for _ in 0..s.runs {
        let (http, api, ids, next, secret) = (
            http.clone(),
            api.clone(),
            ids.clone(),
            next.clone(),
            secret.clone(),
        );
        runs.push(
            load::closed_loop(32, s.length, move |_, _| {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (http, api) = (http.clone(), api.clone());
                let event = ids
                    .get(i)
                    .map(|(pi, id)| webhook_event(&format!("evt_{pi}"), pi, *id));
                let secret = secret.clone();
                async move {
                    let Some(body) = event else { return false };
                    let t = chrono::Utc::now().timestamp();
                    http.post(format!("{api}/webhook/stripe"))
                        .header(
                            "Stripe-Signature",
                            stripe_sim::webhooks::header(&[&secret], t, &body),
                        )
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .await,
        );
    }
    let r = load::median(runs);
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE idempotency_key LIKE 'wh-' || $1 || '-%' AND status = 'succeeded'",
    )
    .bind(&run)
    .fetch_one(&primary)
    .await?;
    let sent = next
        .load(std::sync::atomic::Ordering::Relaxed)
        .min(ids.len());
    anyhow::ensure!(
        applied as usize + r.errors as usize >= sent.saturating_sub(64),
        "webhooks accepted but not applied: {applied} of {sent}"
    );
    // Fixtures no event reached: never shown to a client nor sent to Stripe, so removed
    // rather than left pending for the reconciler to poll.
    sqlx::query(
        "DELETE FROM payments WHERE idempotency_key LIKE 'wh-' || $1 || '-%' AND status = 'pending'",
    )
    .bind(&run)
    .execute(&primary)
    .await?;
    // The floor's payments: final already, so the reconciler never polls them.
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, status, resolution_source,
                               resolved_at, stripe_payment_intent_id, stripe_status)
         SELECT gen_random_uuid(), $1, 'wfloor-' || g, 1250, 'usd', 'succeeded', 'webhook', now(),
                'pi_wfloor_' || g, 'succeeded'
         FROM generate_series(1, 32 * 500) g
         ON CONFLICT DO NOTHING",
    )
    .bind(client_id)
    .execute(&primary)
    .await?;
    let floor = median_tps(&db_url, "webhook.sql", 32, s, &[("n", "500".into())]).await?;
    rows.push(against_floor(
        "6. Webhook ingest, 32 senders",
        &r,
        " applied",
        floor,
    ));

    // 3. CDC latency: commit on the primary (source.ts_ms) to the change in the
    // reconciler's state, from its histogram, at fixed write rates and flat out.
    for rate in [100u32, 1000, 0] {
        let label = if rate == 0 {
            "max".to_owned()
        } else {
            format!("{rate}/s")
        };
        println!("CDC latency at {label} ...");
        // Only this phase's changes may be in the histogram's difference.
        let reconciler = stack.var("RECONCILER_URL");
        drained(http, reconciler).await?;
        let before = cdc_histogram(http, reconciler).await?;
        let (written, took) = write_at(&primary, client_id, rate, s.length * 2).await?;
        let behind = drained(http, reconciler).await?;
        let after = cdc_histogram(http, reconciler).await?;
        let delta: Vec<(f64, u64)> = after
            .iter()
            .zip(&before)
            .map(|((le, a), (_, b))| (*le, a - b))
            .collect();
        let q = |p: f64| {
            quantile(&delta, p).map_or("-".to_owned(), |v| format!("{:.0} ms", v * 1000.0))
        };
        rows.push(row(
            format!("3. CDC commit -> reconciler state, {label}"),
            format!(
                "{:.0} writes/s; p50 {}, p95 {}, p99 {}; drained {:.1} s after the last write",
                written as f64 / took.as_secs_f64(),
                q(0.5),
                q(0.95),
                q(0.99),
                behind.as_secs_f64()
            ),
            "",
            "",
        ));
    }

    // 5. The poller: with 100,000 payments due at once, the Stripe call rate the
    // reconciler achieves against its limit (the stack runs the default, 20/s).
    println!("poller, 100,000 due ...");
    let reconciler = stack.var("RECONCILER_URL");
    let run = Uuid::now_v7().simple().to_string();
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, stripe_payment_intent_id,
                               stripe_status, created_at)
         SELECT gen_random_uuid(), $1, 'due-' || $2 || '-' || g, 1250, 'usd', 'pi_due_' || $2 || '_' || g,
                'requires_payment_method', now() - interval '10 minutes'
         FROM generate_series(1, 100000) g",
    )
    .bind(client_id)
    .bind(&run)
    .execute(&primary)
    .await?;
    drained(http, reconciler).await?;
    // The first second may spend the bucket's burst; the steady rate is what is bounded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = if s.runs == 1 { 10 } else { 30 };
    // Rates over the samples' real spacing: a scrape takes time, so "1 s" is a bit more.
    let mut samples = vec![(
        std::time::Instant::now(),
        polls_total(http, reconciler).await?,
    )];
    for _ in 0..window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((
            std::time::Instant::now(),
            polls_total(http, reconciler).await?,
        ));
    }
    let rate = |a: &(std::time::Instant, u64), b: &(std::time::Instant, u64)| {
        (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()
    };
    let achieved = rate(&samples[0], &samples[window]);
    let max = samples
        .windows(2)
        .map(|w| rate(&w[0], &w[1]))
        .fold(0.0, f64::max);
    sqlx::query("DELETE FROM payments WHERE idempotency_key LIKE 'due-' || $1 || '-%'")
        .bind(&run)
        .execute(&primary)
        .await?;
    rows.push(row(
        format!("5. Poller, 100,000 due, limit {POLL_RATE}/s"),
        format!("{achieved:.2} calls/s over {window} s; busiest second {max:.1}/s"),
        format!("limit {POLL_RATE}/s"),
        format!("{:.3}", achieved / f64::from(POLL_RATE)),
    ));

    Ok((rows, idle, peak.unwrap_or_default()))
}

/// The stack's reconciler runs with the default poll rate (`APP_POLL__RATE_PER_SEC`).
const POLL_RATE: u32 = 20;

/// Stripe polls the reconciler has made, all outcomes.
async fn polls_total(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = metrics(http, base).await?;
    Ok(sum_series(&text, "reconciler_polls_total{") as u64)
}

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

fn table(rows: &[Row], idle: &[(String, f64, f64)], peak: &[(String, f64, f64)]) -> String {
    let mut t = String::from(
        "| figure | measured (median) | floor (same run) | ratio |\n|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} |",
            r.figure, r.measured, r.floor, r.ratio
        );
    }
    t.push_str("\n| process | RSS idle | CPU idle | RSS at peak (128 clients) | CPU at peak |\n|---|---|---|---|---|\n");
    for (name, rss, cpu) in idle {
        let (prss, pcpu) = peak
            .iter()
            .find(|p| &p.0 == name)
            .map_or((0.0, 0.0), |p| (p.1, p.2));
        let _ = writeln!(
            t,
            "| {name} | {rss:.0} MB | {cpu:.0}% | {prss:.0} MB | {pcpu:.0}% |"
        );
    }
    t
}
