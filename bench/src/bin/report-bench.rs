//! Measures a reconciliation report over large windows: `paystream report` (the CLI, as an
//! operator runs it) over windows of N payments each, Stripe's side from one Reporting API
//! file. Prints each run's time and the report process's peak memory.
//!
//!   report-bench <admin url of the primary> <N> [N ...]
//!
//! Our side: a database of its own (`paystream_report_bench`), one window of N payments
//! per N, each on a day of its own in January 2026, read through the replica on
//! `REPLICA_PORT`. Stripe's side: a stripe-sim in this process whose ledger is seeded
//! (`POST /_sim/ledger`) with the captures of the window's succeeded payments. Three
//! discrepancies per thousand payments are planted, and the report must find exactly
//! them: a payment succeeded here that Stripe never charged, one canceled here that
//! Stripe charged, and one charged a minor unit more than we captured.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use paystream_bench::db;
use serde_json::{Value, json};
use sqlx::PgPool;

const DB: &str = "paystream_report_bench";
const SIM_KEY: &str = "sk_test_report_bench";

/// The window of `n` payments: an hour of a day of its own.
fn window(n: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = 1 + (n.ilog10() as i64);
    let since = DateTime::parse_from_rfc3339(&format!("2026-01-{day:02}T00:00:00Z"))
        .map(|t| t.to_utc())
        .unwrap_or_default();
    (since, since + chrono::Duration::hours(1))
}

/// `n` payments spread over the window (idempotent): three currencies, 94% succeeded,
/// 5% canceled, 1% failed.
async fn fill(primary: &PgPool, n: i64) -> anyhow::Result<()> {
    let (since, until) = window(n);
    let have: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE created_at >= $1 AND created_at < $2",
    )
    .bind(since)
    .bind(until)
    .fetch_one(primary)
    .await?;
    if have == n {
        return Ok(());
    }
    anyhow::ensure!(
        have == 0,
        "window of {n} holds {have} payments: drop database {DB}"
    );
    println!("filling {n} payments ...");
    let started = Instant::now();
    let step_us = 3_600_000_000 / n;
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, amount_captured, currency,
                               status, stripe_payment_intent_id, resolution_source, created_at,
                               updated_at, resolved_at)
         SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', 'w' || $3 || '-' || g,
                a.amount, CASE WHEN s.status = 'succeeded' THEN a.amount END,
                (ARRAY['usd', 'eur', 'jpy'])[1 + g % 3], s.status,
                'pi_' || substr(md5($3 || '-' || g), 1, 24), 'webhook', c.at, c.at + interval '2 s',
                c.at + interval '2 s'
         FROM generate_series(1::bigint, $3::bigint) g,
         LATERAL (SELECT $1 + (g - 1) * $2 * interval '1 microsecond' AS at) c,
         LATERAL (SELECT 100 + abs(hashtext('a' || g)) % 100000 AS amount) a,
         LATERAL (SELECT CASE WHEN g % 1000 = 8 OR g % 100 BETWEEN 1 AND 5 THEN 'canceled'
                              WHEN g % 100 = 6 THEN 'failed'
                              ELSE 'succeeded' END AS status) s",
    )
    .bind(since)
    .bind(step_us)
    .bind(n)
    .execute(primary)
    .await?;
    sqlx::query("VACUUM (ANALYZE) payments")
        .execute(primary)
        .await?;
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Books at stripe-sim what Stripe took for the window: every succeeded payment's capture
/// two seconds after its creation, but none for one in a thousand (`g % 1000 = 7`), one for
/// a canceled payment (`g % 1000 = 8`), and one a minor unit over (`g % 1000 = 9`).
async fn seed(primary: &PgPool, http: &reqwest::Client, sim: &str, n: i64) -> anyhow::Result<u64> {
    let (since, until) = window(n);
    let mut rows = sqlx::query_as::<_, (String, String, i64, String, i64)>(
        "SELECT id::text, stripe_payment_intent_id,
                amount + CASE WHEN g % 1000 = 9 THEN 1 ELSE 0 END, currency,
                extract(epoch FROM created_at)::bigint + 2
         FROM payments, LATERAL (SELECT split_part(idempotency_key, '-', 2)::bigint AS g) k
         WHERE created_at >= $1 AND created_at < $2
           AND ((status = 'succeeded' AND g % 1000 <> 7) OR g % 1000 = 8)
         ORDER BY created_at",
    )
    .bind(since)
    .bind(until)
    .fetch(primary);
    let mut chunk = Vec::with_capacity(20_000);
    let mut booked = 0;
    loop {
        let row = rows.try_next().await?;
        let done = row.is_none();
        if let Some((payment_id, intent, amount, currency, created)) = row {
            chunk.push(json!({"payment_id": payment_id, "payment_intent": intent,
                              "amount": amount, "currency": currency, "created": created}));
        }
        if chunk.len() == 20_000 || (done && !chunk.is_empty()) {
            let r: Value = http
                .post(format!("{sim}/_sim/ledger"))
                .json(&json!({ "charges": chunk }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            booked += r["booked"].as_u64().context("booked")?;
            chunk.clear();
        }
        if done {
            return Ok(booked);
        }
    }
}

/// Waits until the replica holds the window's `n` payments.
async fn caught_up(replica: &PgPool, n: i64) -> anyhow::Result<()> {
    let (since, until) = window(n);
    let started = Instant::now();
    loop {
        let have: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payments WHERE created_at >= $1 AND created_at < $2",
        )
        .bind(since)
        .bind(until)
        .fetch_one(replica)
        .await?;
        if have == n {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "replica behind"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The peak resident memory of a running process so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

struct Measured {
    took: Duration,
    peak: u64,
    report: Value,
}

/// `paystream report` over the window, as an operator runs it; its peak memory read
/// from /proc while it runs.
async fn report(replica_url: &str, sim: &str, n: i64) -> anyhow::Result<Measured> {
    let (since, until) = window(n);
    let cli = std::env::current_exe()?
        .parent()
        .context("bin dir")?
        .join("paystream");
    let out = std::env::temp_dir().join(format!("report-bench-{n}.json"));
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&cli)
        .args(["report", "--format", "json", "--stripe-rate", "20"])
        .args([
            "--since",
            &since.to_rfc3339(),
            "--until",
            &until.to_rfc3339(),
        ])
        .arg("--out")
        .arg(&out)
        .env("REPLICA_URL", replica_url)
        .env("STRIPE_API_BASE", sim)
        .env("STRIPE_SECRET_KEY", SIM_KEY)
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("{}", cli.display()))?;
    let pid = child.id().context("pid")?;
    let mut peak = 0;
    let status = loop {
        if let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut e, &mut log).await?;
    }
    // Exit code 2: discrepancies found (the planted ones).
    anyhow::ensure!(
        status.code() == Some(2),
        "paystream report: {status}\n{log}"
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    std::fs::remove_file(&out)?;
    Ok(Measured { took, peak, report })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let admin = args
        .get(1)
        .context("usage: report-bench ADMIN_URL N [N ...]")?;
    let sizes: Vec<i64> = args[2..]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!sizes.is_empty(), "no window size");
    let primary = db::primary(admin, DB).await?;
    paystream_db::MIGRATOR.run(&primary).await?;
    let replica_url = db::url(admin, DB, Some(db::replica_port()?))?;
    let replica = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(paystream_db::tls::connect_options(&replica_url)?)
        .await?;
    let (_sim, sim) = stripe_sim::spawn_ephemeral().await?;
    let http = reqwest::Client::new();
    for &n in &sizes {
        fill(&primary, n).await?;
        caught_up(&replica, n).await?;
        let seeding = Instant::now();
        let booked = seed(&primary, &http, &sim, n).await?;
        println!(
            "stripe-sim: {booked} captures booked in {:.1} s",
            seeding.elapsed().as_secs_f64()
        );
        let m = report(&replica_url, &sim, n).await?;
        let count = |class: &str| m.report["counts"][class].as_i64().unwrap_or(-1);
        let planted = n / 1000;
        anyhow::ensure!(
            m.report["stripe_source"] == "report_run"
                && m.report["payments"] == n
                && count("status_mismatch") == 2 * planted
                && count("amount_mismatch") == planted
                && count("currency_mismatch") == 0
                && count("orphan_at_stripe") == 0,
            "the report did not find exactly the planted discrepancies: {}",
            m.report["counts"]
        );
        println!(
            "report over {n} payments: {:.1} s, peak RSS {} MB ({} balance changes from one report run; {} planted discrepancies found, {} matched)",
            m.took.as_secs_f64(),
            m.peak / 1_000_000,
            m.report["balance_changes"],
            3 * planted,
            count("matched"),
        );
    }
    Ok(())
}
