//! Analytics on a cluster of its own (cluster.sh on ports 25533-25535), because this test
//! pauses a replica's replay and stops the primary. Seeded rows are checked against
//! independent SQL on the primary: totals, volumes, sources, success rates, percentiles,
//! for whole-hour (rollup) and partial-hour (raw) windows, after an incremental refresh.

// Success rates are ratios, compared to the ratio of the counts.
#![allow(clippy::float_arithmetic, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_analytics::histogram::{bucket_lo, bucket_width};
use paystream_analytics::{Guard, OnLag};
use paystream_api::config::RateLimitConfig;
use paystream_api::ratelimit::RateLimiter;
use paystream_api::{AppState, router};
use paystream_db::keys::{self, Role};
use paystream_stripe::StripeApi;
use paystream_testkit::cluster::{Node, ScratchCluster};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const MAX_LAG: Duration = Duration::from_millis(1500);

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}"))
}

async fn serve(primary: PgPool, replica_url: &str, on_lag: OnLag) -> String {
    let state = AppState {
        db: primary.into(),
        // Never called: analytics do not talk to Stripe, and nothing here creates payments.
        stripe: Arc::new(
            StripeApi::new(
                "http://127.0.0.1:1",
                "sk_test_unused",
                Duration::from_secs(1),
            )
            .unwrap(),
        ),
        max_amount: 1_000_000,
        lease: Duration::from_secs(30),
        limiter: Arc::new(RateLimiter::new(RateLimitConfig {
            per_second: 1000,
            burst: 1000,
        })),
        metrics: Arc::new(paystream_service::Metrics::default()),
        replica: Some(paystream_db::Replica::new(replica_url, 2).unwrap()),
        analytics: Guard {
            max_lag: MAX_LAG,
            on_lag,
        },
        keys: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    base
}

/// Waits until `replica` has replayed everything the primary has written so far.
async fn caught_up(primary: &PgPool, replica: &PgPool) {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await
        .unwrap();
    for _ in 0..300 {
        let done: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&lsn)
            .fetch_one(replica)
            .await
            .unwrap();
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replica never replayed {lsn}");
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> (StatusCode, Value) {
    let r = http.get(url).bearer_auth(key).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Payments numbered `gs` (3,000 over ~51 hours from `t0` for the first seed), the g-th
/// made at `t0 + g * step`, in three currencies, every status and source, resolution
/// times spread over 1 ms to ~3 h, each with its history row as the app writes it. A third of the succeeded ones captured less
/// than their amount (partial capture), the others as rows from before capture existed
/// (`amount_captured` NULL: their amount). Their refunded sums follow `seed_refunds`'
/// rules. Deterministic: derived from hashes of g.
async fn seed(primary: &PgPool, t0: DateTime<Utc>, gs: (i32, i32), step: chrono::Duration) {
    sqlx::query(
        "WITH made AS (
         INSERT INTO payments (id, client_id, idempotency_key, amount, currency, status,
                               resolution_source, created_at, resolved_at,
                               amount_captured, amount_refunded)
         SELECT gen_random_uuid(), gen_random_uuid(), 'seed-' || g, a.amount,
                (ARRAY['usd', 'eur', 'jpy'])[1 + abs(hashtext('c' || g)) % 3],
                s.status,
                CASE WHEN s.status <> 'pending' THEN
                    (ARRAY['api', 'webhook', 'poll', 'expiry', 'operator'])[1 + abs(hashtext('r' || g)) % 5] END,
                $1 + g * $4 * interval '1 millisecond',
                CASE WHEN s.status <> 'pending' THEN $1 + g * $4 * interval '1 millisecond'
                    + (abs(hashtext('t' || g)) % (10 ^ (1 + abs(hashtext('d' || g)) % 7))::int)
                      * interval '1 millisecond' END,
                CASE WHEN s.status = 'succeeded' AND abs(hashtext('k' || g)) % 3 = 0
                     THEN a.amount - a.amount / 10 END,
                CASE WHEN s.status = 'succeeded' THEN
                    CASE WHEN abs(hashtext('ra' || 'seed-' || g)) % 3 = 0 THEN a.amount / 4 ELSE 0 END
                  + CASE WHEN abs(hashtext('rb' || 'seed-' || g)) % 5 = 0 THEN a.amount / 10 ELSE 0 END
                ELSE 0 END
         FROM generate_series($2::int, $3::int) g,
         LATERAL (SELECT 100 + abs(hashtext('a' || g)) % 100000 AS amount) a,
         LATERAL (SELECT (ARRAY['pending', 'succeeded', 'succeeded', 'succeeded', 'failed', 'canceled'])
                         [1 + abs(hashtext('s' || g)) % 6] AS status) s
         RETURNING id, status, resolution_source
         )
         INSERT INTO payment_status_history (payment_id, to_status, source)
         SELECT id, status, coalesce(resolution_source, 'api') FROM made",
    )
    .bind(t0)
    .bind(gs.0)
    .bind(gs.1)
    .bind(step.num_milliseconds())
    .execute(primary)
    .await
    .unwrap();
}

/// Refunds of the succeeded seeded payments numbered `from..=to`: a quarter back for a
/// third of them, a tenth for a fifth, and pending and failed ones that count nowhere.
/// Made a day after their payment: they count in its hour all the same. Only the refunds
/// table changes (the seed set the refunded sums), so for the rollups only the refunds'
/// own status history makes their payments' hours dirty, as the app writes it.
async fn seed_refunds(primary: &PgPool, from: i32, to: i32) {
    sqlx::query(
        "WITH made AS (
            INSERT INTO refunds (id, payment_id, requested_by, idempotency_key, amount, currency,
                                 status, resolution_source, resolved_at, created_at)
            SELECT gen_random_uuid(), p.id, p.client_id, 'refund-' || k.kind || '-' || p.idempotency_key,
                   p.amount / k.part, p.currency, k.status,
                   CASE WHEN k.status <> 'pending' THEN 'webhook' END,
                   CASE WHEN k.status <> 'pending' THEN p.created_at + interval '1 day 1 second' END,
                   p.created_at + interval '1 day'
            FROM payments p
            CROSS JOIN (VALUES ('ra', 3, 4, 'succeeded'), ('rb', 5, 10, 'succeeded'),
                               ('rc', 7, 5, 'pending'), ('rd', 11, 5, 'failed')) k(kind, every, part, status)
            WHERE p.status = 'succeeded'
              AND p.idempotency_key IN (SELECT 'seed-' || g FROM generate_series($1, $2) g)
              AND abs(hashtext(k.kind || p.idempotency_key)) % k.every = 0
            RETURNING id, payment_id, status
         )
         INSERT INTO refund_status_history (refund_id, payment_id, to_status, source)
         SELECT id, payment_id, status, 'webhook' FROM made",
    )
    .bind(from)
    .bind(to)
    .execute(primary)
    .await
    .unwrap();
}

/// The window's money, straight from the raw rows on the primary: per currency (succeeded
/// payments, captured, refunded payments, succeeded refunds, refunded).
async fn expected_money(
    primary: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    currency: Option<&str>,
) -> Vec<(String, i64, i64, i64, i64, i64)> {
    sqlx::query_as(
        "WITH r AS (SELECT payment_id, count(*) AS n, sum(amount) AS amount FROM refunds
                    WHERE status = 'succeeded' GROUP BY payment_id)
         SELECT p.currency, count(*), sum(coalesce(p.amount_captured, p.amount))::bigint,
                count(r.payment_id), coalesce(sum(r.n), 0)::bigint, coalesce(sum(r.amount), 0)::bigint
         FROM payments p LEFT JOIN r ON r.payment_id = p.id
         WHERE p.status = 'succeeded' AND p.created_at >= $1 AND p.created_at < $2
           AND ($3::text IS NULL OR p.currency = $3)
         GROUP BY 1",
    )
    .bind(from)
    .bind(to)
    .bind(currency)
    .fetch_all(primary)
    .await
    .unwrap()
}

/// The window's truth, straight from the raw rows on the primary.
async fn expected_summary(
    primary: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    currency: Option<&str>,
) -> Value {
    let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT status, coalesce(resolution_source, ''), currency, count(*), sum(amount)::bigint
         FROM payments WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR currency = $3)
         GROUP BY 1, 2, 3",
    )
    .bind(from)
    .bind(to)
    .bind(currency)
    .fetch_all(primary)
    .await
    .unwrap();
    let mut by_status = serde_json::Map::new();
    for s in ["pending", "succeeded", "failed", "canceled"] {
        by_status.insert(s.into(), serde_json::json!({"count": 0, "volume": {}}));
    }
    let mut sources = serde_json::Map::new();
    for (status, source, cur, n, vol) in rows {
        let t = &mut by_status[&status];
        t["count"] = (t["count"].as_i64().unwrap() + n).into();
        let v = t["volume"][&cur].as_i64().unwrap_or(0) + vol;
        t["volume"][&cur] = v.into();
        if !source.is_empty() {
            let n = sources.get(&source).and_then(Value::as_i64).unwrap_or(0) + n;
            sources.insert(source, n.into());
        }
    }
    serde_json::json!({"by_status": by_status, "resolution_sources": sources})
}

async fn exact_percentiles(
    primary: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    currency: Option<&str>,
) -> (i64, Vec<i64>) {
    sqlx::query_as(
        "SELECT count(*), percentile_disc(ARRAY[0.5, 0.95, 0.99, 1.0]) WITHIN GROUP
                (ORDER BY floor(extract(epoch FROM resolved_at - created_at) * 1000)::bigint)
         FROM payments WHERE created_at >= $1 AND created_at < $2 AND resolved_at IS NOT NULL
           AND ($3::text IS NULL OR currency = $3)",
    )
    .bind(from)
    .bind(to)
    .bind(currency)
    .fetch_one(primary)
    .await
    .unwrap()
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn summary_url(
    base: &str,
    (from, to, currency): (DateTime<Utc>, DateTime<Utc>, Option<&str>),
) -> String {
    let mut url = format!(
        "{base}/v1/analytics/summary?from={}&to={}",
        rfc(from).replace('+', "%2B"),
        rfc(to).replace('+', "%2B")
    );
    if let Some(c) = currency {
        url.push_str(&format!("&currency={c}"));
    }
    url
}

async fn check_summary(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    primary: &PgPool,
    (from, to, currency): (DateTime<Utc>, DateTime<Utc>, Option<&str>),
) -> Value {
    let (status, got) = get(http, &summary_url(base, (from, to, currency)), key).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let want = expected_summary(primary, from, to, currency).await;
    assert_eq!(
        got["by_status"], want["by_status"],
        "{from}..{to} {currency:?}"
    );
    assert_eq!(got["resolution_sources"], want["resolution_sources"]);
    let count = |s: &str| want["by_status"][s]["count"].as_i64().unwrap();
    let total: i64 = ["pending", "succeeded", "failed", "canceled"]
        .iter()
        .map(|s| count(s))
        .sum();
    assert_eq!(got["payments"], total);
    assert!(total > 0, "the window {from}..{to} must hold payments");
    let fin = count("succeeded") + count("failed") + count("canceled");
    let rate = got["success_rate"].as_f64().unwrap();
    assert!((rate * fin as f64 - count("succeeded") as f64).abs() < 1e-6);

    // Gross (captured), refunded and net volume per currency; refunds and the rate.
    let money = expected_money(primary, from, to, currency).await;
    let (mut gross, mut refunded, mut net) = (
        serde_json::Map::new(),
        serde_json::Map::new(),
        serde_json::Map::new(),
    );
    let (mut succeeded, mut refunded_payments, mut refunds) = (0, 0, 0);
    for (cur, n, captured, refunded_n, refunds_n, back) in money {
        gross.insert(cur.clone(), captured.into());
        refunded.insert(cur.clone(), back.into());
        net.insert(cur, (captured - back).into());
        succeeded += n;
        refunded_payments += refunded_n;
        refunds += refunds_n;
    }
    assert_eq!(succeeded, count("succeeded"));
    assert!(refunded_payments > 0, "the window must hold refunds");
    assert_eq!(
        got["gross_volume"],
        Value::Object(gross),
        "{from}..{to} {currency:?}"
    );
    assert_eq!(got["refunded_volume"], Value::Object(refunded));
    assert_eq!(got["net_volume"], Value::Object(net));
    assert_eq!(
        (&got["refunds"], &got["refunded_payments"]),
        (&refunds.into(), &refunded_payments.into())
    );
    assert_eq!(
        got["refund_rate_bps"],
        refunded_payments * 10_000 / succeeded
    );

    let (resolved, exact) = exact_percentiles(primary, from, to, currency).await;
    let t = &got["time_to_resolution"];
    assert_eq!(t["resolved"], resolved);
    for (field, exact) in ["p50_ms", "p95_ms", "p99_ms", "max_ms"].iter().zip(exact) {
        let reported = t[field].as_i64().unwrap();
        assert!(
            reported >= exact && reported < bucket_lo(exact) + bucket_width(exact),
            "{field}: reported {reported}, exact {exact}"
        );
    }
    got
}

async fn check_series(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    primary: &PgPool,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    bucket: &str,
) {
    let rows: Vec<(DateTime<Utc>, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT date_trunc($3, created_at, 'UTC'), count(*),
                count(*) FILTER (WHERE status = 'succeeded'),
                count(*) FILTER (WHERE status <> 'pending'),
                coalesce(sum(amount) FILTER (WHERE status = 'succeeded' AND currency = 'usd'), 0)::bigint
         FROM payments WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
    )
    .bind(from)
    .bind(to)
    .bind(bucket)
    .fetch_all(primary)
    .await
    .unwrap();
    let truth: std::collections::HashMap<DateTime<Utc>, (i64, i64, i64, i64)> = rows
        .into_iter()
        .map(|(t, a, b, c, d)| (t, (a, b, c, d)))
        .collect();
    let url = |metric: &str, cur: &str| {
        format!(
            "{base}/v1/analytics/timeseries?from={}&to={}&bucket={bucket}&metric={metric}{cur}",
            rfc(from),
            rfc(to)
        )
    };
    let (_, count) = get(http, &url("count", ""), key).await;
    let (_, rate) = get(http, &url("success_rate", ""), key).await;
    let (status, volume) = get(http, &url("volume", "&currency=usd"), key).await;
    assert_eq!(status, StatusCode::OK, "{volume}");
    let points = count["points"].as_array().unwrap();
    assert!(points.len() >= truth.len() && !truth.is_empty());
    let mut nonzero = 0;
    for (i, p) in points.iter().enumerate() {
        let start: DateTime<Utc> = p["start"].as_str().unwrap().parse().unwrap();
        let (n, ok, fin, vol) = truth.get(&start).copied().unwrap_or_default();
        assert_eq!(p["value"], n, "{bucket} count at {start}");
        assert_eq!(
            volume["points"][i]["value"], vol,
            "{bucket} usd volume at {start}"
        );
        match rate["points"][i]["value"].as_f64() {
            Some(r) => assert!((r * fin as f64 - ok as f64).abs() < 1e-6),
            None => assert_eq!(fin, 0),
        }
        nonzero += usize::from(n > 0);
    }
    assert_eq!(
        nonzero,
        truth.len(),
        "every bucket with payments is reported"
    );

    // The money metrics: (succeeded, refunded payments, refunds) across currencies, and
    // (captured, refunded) in usd, per bucket.
    let rows: Vec<(DateTime<Utc>, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH r AS (SELECT payment_id, count(*) AS n, sum(amount) AS amount FROM refunds
                    WHERE status = 'succeeded' GROUP BY payment_id)
         SELECT date_trunc($3, p.created_at, 'UTC'), count(*), count(r.payment_id),
                coalesce(sum(r.n), 0)::bigint,
                coalesce(sum(coalesce(p.amount_captured, p.amount)) FILTER (WHERE p.currency = 'usd'), 0)::bigint,
                coalesce(sum(r.amount) FILTER (WHERE p.currency = 'usd'), 0)::bigint
         FROM payments p LEFT JOIN r ON r.payment_id = p.id
         WHERE p.status = 'succeeded' AND p.created_at >= $1 AND p.created_at < $2 GROUP BY 1",
    )
    .bind(from)
    .bind(to)
    .bind(bucket)
    .fetch_all(primary)
    .await
    .unwrap();
    let money: std::collections::HashMap<DateTime<Utc>, (i64, i64, i64, i64, i64)> = rows
        .into_iter()
        .map(|(t, a, b, c, d, e)| (t, (a, b, c, d, e)))
        .collect();
    let (_, gross) = get(http, &url("gross_volume", "&currency=usd"), key).await;
    let (_, back) = get(http, &url("refunded_volume", "&currency=usd"), key).await;
    let (_, net) = get(http, &url("net_volume", "&currency=usd"), key).await;
    let (_, refunds) = get(http, &url("refunds", ""), key).await;
    let (status, rate) = get(http, &url("refund_rate_bps", ""), key).await;
    assert_eq!(status, StatusCode::OK, "{rate}");
    let (status, body) = get(http, &url("net_volume", ""), key).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "amounts need a currency"
    );
    let mut refunded_buckets = 0;
    for (i, p) in points.iter().enumerate() {
        let start: DateTime<Utc> = p["start"].as_str().unwrap().parse().unwrap();
        let (ok, refunded, n, captured, given_back) =
            money.get(&start).copied().unwrap_or_default();
        assert_eq!(
            gross["points"][i]["value"], captured,
            "{bucket} gross at {start}"
        );
        assert_eq!(
            back["points"][i]["value"], given_back,
            "{bucket} refunded at {start}"
        );
        assert_eq!(
            net["points"][i]["value"],
            captured - given_back,
            "{bucket} net at {start}"
        );
        assert_eq!(
            refunds["points"][i]["value"], n,
            "{bucket} refunds at {start}"
        );
        let want = if ok > 0 {
            Value::from(refunded * 10_000 / ok)
        } else {
            Value::Null
        };
        assert_eq!(
            rate["points"][i]["value"], want,
            "{bucket} refund rate at {start}"
        );
        refunded_buckets += usize::from(n > 0);
    }
    assert!(refunded_buckets > 0, "the series must hold refunds");
}

/// The hour in progress: its finished minutes are read from the minute rollups, and a
/// change to one of them is counted by the next refresh; the minute the refresh ran in and
/// after it, from the rows.
async fn the_hour_in_progress(
    http: &reqwest::Client,
    base: &str,
    analyst: &str,
    primary: &PgPool,
    replica: &PgPool,
) {
    // A finished minute needs the hour's second, and the reads below must end within the
    // hour: a few seconds' work.
    let hour = |t: DateTime<Utc>| {
        chrono::DurationRound::duration_trunc(t, chrono::Duration::hours(1)).unwrap()
    };
    let minute_of_hour = (Utc::now() - hour(Utc::now())).num_minutes();
    if !(1..58).contains(&minute_of_hour) {
        let next =
            hour(Utc::now()) + chrono::Duration::minutes(if minute_of_hour == 0 { 1 } else { 61 });
        tokio::time::sleep(
            (next - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1),
        )
        .await;
    }
    let start = hour(Utc::now());
    let step = (Utc::now() - start) / 121;
    // Payments 5001-5120 over the hour so far, then their refunds.
    seed(primary, start - step * 5000, (5001, 5120), step).await;
    seed_refunds(primary, 5001, 5120).await;
    let run = refreshed(primary).await;
    let minutes: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT DISTINCT minute FROM analytics_minutely ORDER BY 1")
            .fetch_all(primary)
            .await
            .unwrap();
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT refreshed_at FROM analytics_refresh")
        .fetch_one(primary)
        .await
        .unwrap();
    let finished = chrono::DurationRound::duration_trunc(at, chrono::Duration::minutes(1)).unwrap();
    assert!(
        run.minutes > 0
            && !minutes.is_empty()
            && minutes.iter().all(|m| start <= *m && *m < finished),
        "{run:?}: {minutes:?}, refreshed at {at}"
    );
    // After the refresh: read from the rows.
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'after-the-refresh', 900, 'eur')",
    )
    .execute(primary)
    .await
    .unwrap();
    caught_up(primary, replica).await;
    let window = (
        start - chrono::Duration::minutes(20),
        Utc::now() + chrono::Duration::minutes(1),
        None,
    );
    let got = check_summary(http, base, analyst, primary, window).await;
    assert!(
        got["rollups_as_of"].is_string(),
        "the finished minutes come from the rollups: {got}"
    );
    // A change with no history row is invisible to the refresh: the answer still shows the
    // rolled-up minute, which proves where it was read from. Its history row makes the
    // next refresh recompute that minute.
    let (id, amount): (Uuid, i64) = sqlx::query_as(
        "UPDATE payments SET amount = amount + 1
          WHERE idempotency_key = (SELECT min(idempotency_key) FROM payments
                                    WHERE idempotency_key LIKE 'seed-5%' AND status = 'failed'
                                      AND created_at >= $1 AND created_at < $2)
          RETURNING id, amount",
    )
    .bind(start)
    .bind(finished)
    .fetch_one(primary)
    .await
    .unwrap();
    caught_up(primary, replica).await;
    let (_, stale) = get(http, &summary_url(base, window), analyst).await;
    let failed_volume = |v: &Value| -> i64 {
        v["by_status"]["failed"]["volume"]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_i64().unwrap())
            .sum()
    };
    assert_eq!(failed_volume(&stale), failed_volume(&got), "{stale}");
    sqlx::query(
        "INSERT INTO payment_status_history (payment_id, to_status, source) VALUES ($1, 'failed', 'operator')",
    )
    .bind(id)
    .execute(primary)
    .await
    .unwrap();
    refreshed(primary).await;
    caught_up(primary, replica).await;
    let fresh = check_summary(http, base, analyst, primary, window).await;
    assert_eq!(
        failed_volume(&fresh),
        failed_volume(&got) + 1,
        "payment {id} now {amount}"
    );
}

/// One incremental refresh, which must have taken the lock (nothing else refreshes here).
async fn refreshed(primary: &PgPool) -> paystream_analytics::refresh::Refreshed {
    paystream_analytics::refresh::refresh(&primary.clone().into(), false)
        .await
        .unwrap()
        .expect("the refresh lock is free")
}

/// A change whose transaction began before a refresh and committed after it is counted
/// by the next refresh (however long it ran), and an hour is not recomputed again for a
/// change a refresh already counted. (The earlier design took every payment whose
/// `updated_at` was within a minute before the previous run: a long transaction was
/// missed, and an hour was recomputed whole on every run for a minute after a change.)
async fn long_transactions_count_once(primary: &PgPool) {
    let (id, hour): (Uuid, DateTime<Utc>) = sqlx::query_as(
        "SELECT id, date_trunc('hour', created_at, 'UTC') FROM payments
         WHERE status = 'pending' AND idempotency_key LIKE 'seed-2%' ORDER BY created_at LIMIT 1",
    )
    .fetch_one(primary)
    .await
    .unwrap();
    let succeeded_in_hour = || async move {
        let rolled: Option<i64> = sqlx::query_scalar(
            "SELECT sum(payments)::bigint FROM analytics_hourly WHERE hour = $1 AND status = 'succeeded'",
        )
        .bind(hour)
        .fetch_one(primary)
        .await
        .unwrap();
        rolled.unwrap_or(0)
    };
    let before = succeeded_in_hour().await;
    let mut long = primary.begin().await.unwrap();
    sqlx::query(
        "WITH changed AS (
            UPDATE payments SET status = 'succeeded', resolution_source = 'poll',
                   resolved_at = created_at + interval '5 minutes'
             WHERE id = $1 RETURNING id
         )
         INSERT INTO payment_status_history (payment_id, from_status, to_status, source)
         SELECT id, 'pending', 'succeeded', 'poll' FROM changed",
    )
    .bind(id)
    .execute(&mut *long)
    .await
    .unwrap();
    // A later transaction completes first: the long one is then in the next snapshot's
    // list of running transactions, below its end, not simply past it.
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(primary)
        .await
        .unwrap();
    let during = refreshed(primary).await;
    assert_eq!(succeeded_in_hour().await, before, "{during:?}");
    long.commit().await.unwrap();
    let after = refreshed(primary).await;
    assert!(after.hours >= 1, "{after:?}");
    assert_eq!(succeeded_in_hour().await, before + 1, "{after:?}");

    // Counted: the next run leaves the hour's rows as they are (same row versions).
    let versions = || async move {
        let v: Vec<String> = sqlx::query_scalar(
            "SELECT xmin::text FROM analytics_hourly WHERE hour = $1 ORDER BY xmin::text",
        )
        .bind(hour)
        .fetch_all(primary)
        .await
        .unwrap();
        v
    };
    let counted = versions().await;
    let again = refreshed(primary).await;
    assert_eq!(versions().await, counted, "recomputed again: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_match_the_primary_bound_their_lag_and_outlive_the_primary() {
    let cluster = ScratchCluster::new("analytics", 25533);
    cluster.must("up");
    let primary = pool(&cluster.url("paystream", Node::Primary)).await;
    paystream_db::MIGRATOR.run(&primary).await.unwrap();
    // The API reads keys on the replica too, so it uses the app's role there.
    let replica_url = cluster.url("paystream", Node::Replica1);
    let replica = pool(&replica_url).await;
    let replica_admin = pool(&cluster.url("postgres", Node::Replica1)).await;
    let base = serve(primary.clone(), &replica_url, OnLag::Refuse).await;
    let flagging = serve(primary.clone(), &replica_url, OnLag::Flag).await;
    let http = reqwest::Client::new();

    let (_, analyst) = keys::create(&primary.clone().into(), "analyst", Role::Analyst)
        .await
        .unwrap();
    let (_, client) = keys::create(&primary.clone().into(), "client", Role::Client)
        .await
        .unwrap();
    let t0: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    seed(&primary, t0, (1, 3000), chrono::Duration::seconds(61)).await;
    // Refunds of every seeded payment but those in hours 33-34, refunded after the first
    // refresh.
    seed_refunds(&primary, 1, 1999).await;
    seed_refunds(&primary, 2061, 3000).await;
    // A payment of this hour, which is still being filled: the rollups leave it to the rows.
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'this-hour', 700, 'usd')",
    )
    .execute(&primary)
    .await
    .unwrap();
    let first = refreshed(&primary).await;
    assert!(first.full && first.hours >= 51, "{first:?}");
    let this_hour: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics_hourly WHERE hour >= date_trunc('hour', now(), 'UTC')",
    )
    .fetch_one(&primary)
    .await
    .unwrap();
    assert_eq!(this_hour, 0, "the refresh computed the hour it ran in");
    // Changes after the refresh: late resolutions and new payments in old hours, each with
    // its history row as the app writes it. The next (incremental) refresh must find
    // exactly those hours.
    sqlx::query(
        "WITH changed AS (
            UPDATE payments SET status = 'succeeded', resolution_source = 'poll',
                   resolved_at = created_at + interval '2 hours 3 minutes'
             WHERE status = 'pending' AND idempotency_key LIKE 'seed-1%' RETURNING id
         )
         INSERT INTO payment_status_history (payment_id, from_status, to_status, source)
         SELECT id, 'pending', 'succeeded', 'poll' FROM changed",
    )
    .execute(&primary)
    .await
    .unwrap();
    sqlx::query(
        "WITH made AS (
            INSERT INTO payments (id, client_id, idempotency_key, amount, currency, status,
                                  resolution_source, created_at, resolved_at)
            SELECT gen_random_uuid(), gen_random_uuid(), 'late-' || g, 5000, 'usd', 'failed', 'webhook',
                   $1 + g * interval '17 minutes', $1 + g * interval '17 minutes' + interval '250 ms'
            FROM generate_series(1, 40) g RETURNING id
         )
         INSERT INTO payment_status_history (payment_id, to_status, source)
         SELECT id, 'failed', 'webhook' FROM made",
    )
    .bind(t0)
    .execute(&primary)
    .await
    .unwrap();
    seed_refunds(&primary, 2000, 2060).await;
    let second = refreshed(&primary).await;
    assert!(
        !second.full && second.hours > 0 && second.hours < first.hours,
        "{second:?}"
    );
    // Each day's histogram (before today's) is the sum of its hours', after the
    // incremental refresh too; the summaries below read whole days from it.
    let disagree: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM analytics_resolution_daily d
         FULL JOIN (SELECT date_trunc('day', hour, 'UTC') AS day, currency, lo_ms, sum(payments) AS payments
                    FROM analytics_resolution_hourly
                    WHERE hour < (SELECT date_trunc('day', refreshed_at, 'UTC') FROM analytics_refresh)
                    GROUP BY 1, 2, 3) h USING (day, currency, lo_ms)
         WHERE d.payments IS DISTINCT FROM h.payments",
    )
    .fetch_one(&primary)
    .await
    .unwrap();
    let days: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT day) FROM analytics_resolution_daily")
            .fetch_one(&primary)
            .await
            .unwrap();
    assert_eq!((disagree, days >= 3), (0, true), "{days} days rolled up");
    long_transactions_count_once(&primary).await;
    caught_up(&primary, &replica).await;

    // The SQL bucket function and its Rust twin agree: powers of two, each decade's
    // edges (where a bucket's width changes), below zero and bigint's largest.
    let mut probes: Vec<i64> = (0..64).map(|i| (1i64 << i.min(40)) + i * 7).collect();
    for d in 0..=18 {
        let p = 10i64.pow(d);
        probes.extend([p - 1, p, p + 1, p + p / 2]);
    }
    probes.extend([-1, -150, i64::MAX]);
    // Each beside the body migration 0013 replaced (0005's), which it must equal.
    let sql: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT analytics_ms_bucket(v),
                CASE WHEN v < 100 THEN greatest(v, 0)
                     ELSE v - v % power(10::numeric, length(v::text) - 2)::bigint END
         FROM unnest($1::bigint[]) WITH ORDINALITY u (v, i) ORDER BY i",
    )
    .bind(&probes)
    .fetch_all(&primary)
    .await
    .unwrap();
    assert_eq!(
        sql,
        probes
            .iter()
            .map(|&v| (bucket_lo(v), bucket_lo(v)))
            .collect::<Vec<_>>()
    );
    let null: Option<i64> = sqlx::query_scalar("SELECT analytics_ms_bucket(NULL)")
        .fetch_one(&primary)
        .await
        .unwrap();
    assert_eq!(null, None);
    // Resolution times are whole milliseconds rounded down, never below zero, and null
    // while unresolved.
    let created = DateTime::parse_from_rfc3339("2026-03-01T10:00:00.123456Z")
        .unwrap()
        .with_timezone(&Utc);
    let resolved: Vec<Option<DateTime<Utc>>> = [
        -2_000_000,
        -1,
        0,
        999,
        1_000,
        1_001,
        1_999_999,
        86_400_000_001,
    ]
    .into_iter()
    .map(|gap_us| Some(created + chrono::Duration::microseconds(gap_us)))
    .chain([None])
    .collect();
    let sql: Vec<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT analytics_resolution_ms($1, r),
                CASE WHEN r IS NOT NULL
                     THEN greatest(0, floor(extract(epoch FROM r - $1) * 1000))::bigint END
         FROM unnest($2::timestamptz[]) WITH ORDINALITY u (r, i) ORDER BY i",
    )
    .bind(created)
    .bind(&resolved)
    .fetch_all(&primary)
    .await
    .unwrap();
    let want: Vec<(Option<i64>, Option<i64>)> = resolved
        .iter()
        .map(|r| r.map(|r| (r - created).num_milliseconds().max(0)))
        .map(|ms| (ms, ms))
        .collect();
    assert_eq!(sql, want);

    // Access: analysts and operators read analytics; clients may not; analyst keys do
    // nothing else.
    let summary =
        format!("{base}/v1/analytics/summary?from=2026-03-01T00:00:00Z&to=2026-03-04T00:00:00Z");
    let (status, body) = get(&http, &summary, &client).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("analytics_forbidden"))
    );
    let (status, _) = get(&http, &summary, "psk_analyst_unknown").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let r = http
        .get(format!("{base}/v1/payments"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "analytics_only"
    );

    // Results: mixed windows (partial edge hours + whole hours), a window inside one hour
    // (raw only), one currency, and the hourly and daily series.
    let h = |hours: i64, secs: i64| {
        t0 + chrono::Duration::hours(hours) + chrono::Duration::seconds(secs)
    };
    let whole = check_summary(
        &http,
        &base,
        &analyst,
        &primary,
        (h(0, 1817), h(40, 301), None),
    )
    .await;
    assert!(whole["rollups_as_of"].is_string(), "{whole}");
    assert!(
        whole["refunds"].as_i64() > whole["refunded_payments"].as_i64(),
        "some payments were refunded twice: {whole}"
    );
    for cur in ["usd", "eur", "jpy"] {
        let gross = whole["gross_volume"][cur].as_i64().unwrap();
        let amounts = whole["by_status"]["succeeded"]["volume"][cur]
            .as_i64()
            .unwrap();
        let net = whole["net_volume"][cur].as_i64().unwrap();
        assert!(
            net < gross && gross < amounts,
            "{cur}: gross is what was captured (partial captures take less than the amount), net what was kept: {whole}"
        );
    }
    // The hours refunded after the first refresh are in the rollups: refreshed through the
    // refunds' own changes.
    let late = check_summary(&http, &base, &analyst, &primary, (h(33, 0), h(35, 0), None)).await;
    assert!(
        late["rollups_as_of"].is_string() && late["refunds"].as_i64() > Some(0),
        "{late}"
    );
    // One currency; then whole UTC days inside the rolled-up hours, read from the daily
    // histogram, with and without hourly edges around them.
    for window in [
        (h(3, 0), h(27, 0), Some("eur")),
        (h(0, 1817), h(50, 1200), Some("usd")),
        (h(0, 0), h(48, 0), None),
    ] {
        check_summary(&http, &base, &analyst, &primary, window).await;
    }
    let inside = check_summary(
        &http,
        &base,
        &analyst,
        &primary,
        (h(5, 60), h(5, 3000), Some("usd")),
    )
    .await;
    assert!(
        inside["rollups_as_of"].is_null(),
        "one partial hour is read raw: {inside}"
    );
    check_series(
        &http,
        &base,
        &analyst,
        &primary,
        (h(0, 1817), h(40, 301)),
        "hour",
    )
    .await;
    check_series(
        &http,
        &base,
        &analyst,
        &primary,
        (h(-3, 0), h(60, 7)),
        "day",
    )
    .await;

    the_hour_in_progress(&http, &base, &analyst, &primary, &replica).await;

    // Freshness: the replica's replay time, and the rollups' refresh when older.
    let replayed: DateTime<Utc> = whole["replica_replayed_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let data_as_of: DateTime<Utc> = whole["data_as_of"].as_str().unwrap().parse().unwrap();
    let rollups: DateTime<Utc> = whole["rollups_as_of"].as_str().unwrap().parse().unwrap();
    assert_eq!(data_as_of, replayed.min(rollups));
    assert!(
        replayed <= Utc::now() && whole["stale"] == false && whole["replica_streaming"] == true,
        "{whole}"
    );

    // Bad input: a clear 400 with a stable code, for each way to get it wrong.
    for q in [
        "summary?from=yesterday",
        "summary?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
        "summary?from=800d",
        "summary?currency=USD",
        "summary?currency=xyz",
        "summary?limit=5",
        "timeseries?bucket=week",
        "timeseries?metric=avg",
        "timeseries?metric=volume",
    ] {
        let (status, body) = get(&http, &format!("{base}/v1/analytics/{q}"), &analyst).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{q}: {body}"
        );
    }

    // The lag bound: with replay paused and new WAL arriving, the replica falls behind.
    // Refusing instances answer 503 replica_lagging; flagging ones answer, marked stale.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica_admin)
        .await
        .unwrap();
    sqlx::query(
        "WITH made AS (
            INSERT INTO payments (id, client_id, idempotency_key, amount, currency, created_at)
            VALUES ($1, $1, 'lag', 100, 'usd', $2) RETURNING id
         )
         INSERT INTO payment_status_history (payment_id, to_status, source)
         SELECT id, 'pending', 'api' FROM made",
    )
    .bind(Uuid::now_v7())
    .bind(t0)
    .execute(&primary)
    .await
    .unwrap();
    tokio::time::sleep(MAX_LAG + Duration::from_millis(500)).await;
    let r = http
        .get(&summary)
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "replica_lagging"
    );
    let (status, stale) = get(&http, &summary.replace(&base, &flagging), &analyst).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        stale["stale"] == true && stale["replica_lag_ms"].as_i64().unwrap() > 1500,
        "{stale}"
    );
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica_admin)
        .await
        .unwrap();
    // The new row's hour is read from the rollups: counted once they are refreshed.
    paystream_analytics::refresh::refresh(&primary.clone().into(), false)
        .await
        .unwrap();
    caught_up(&primary, &replica).await;
    let (status, fresh) = get(&http, &summary, &analyst).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(fresh["stale"], false);
    assert_eq!(
        fresh["by_status"]["pending"]["count"],
        stale["by_status"]["pending"]["count"].as_i64().unwrap() + 1
    );

    // The primary stopped: analytics answer the same, from the replica alone (their key
    // check included), while payments get 503.
    cluster.must("stop-primary");
    let mut streaming = true;
    for _ in 0..100 {
        let (status, body) = get(&http, &summary, &analyst).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["by_status"], fresh["by_status"]);
        streaming = body["replica_streaming"] == true;
        if !streaming {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!streaming, "the replica should notice its primary is gone");
    let (status, series) = get(&http, &format!("{base}/v1/analytics/timeseries?from=2026-03-01T00:00:00Z&to=2026-03-03T00:00:00Z&bucket=day"), &analyst).await;
    assert_eq!(status, StatusCode::OK, "{series}");
    let r = http
        .get(format!("{base}/v1/payments"))
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}
