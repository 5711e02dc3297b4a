//! Measures what a restart costs the reconciler: rebuilding the pending state of every
//! partition from a replica, with N pending payments, and the state's size.
//!
//! It works in its own database (`paystream_bench`), so Debezium (which captures only
//! `paystream`) and the running services never see these rows:
//!   recovery-bench <admin url of the primary> <pending count> [runs]
//! The replica is reached with the same credentials on `REPLICA_PORT` (default 6432, the
//! stack's nginx). `make bench` runs it on a cluster of its own: a bulk fill's WAL on the
//! stack's primary can outgrow what the Debezium slot may hold back.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use anyhow::Context;
use paystream_bench::db;
use paystream_reconciler::recovery;
use paystream_reconciler::schedule::Schedule;
use sqlx::PgPool;

const DB: &str = "paystream_bench";

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

async fn fill(primary: &PgPool, n: i64) -> anyhow::Result<()> {
    paystream_db::MIGRATOR.run(primary).await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'pending'")
        .fetch_one(primary)
        .await?;
    if have >= n {
        return Ok(());
    }
    println!("filling {} pending payments", n - have);
    let client: uuid::Uuid = uuid::Uuid::now_v7();
    // Shaped like the API's rows: a v7-like random id, an intent id, a client key.
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, status,
                               stripe_payment_intent_id, stripe_status, metadata)
         SELECT gen_random_uuid(), $1, 'order-' || g || '-' || md5(g::text), 1000 + g % 5000, 'usd',
                'pending', 'pi_' || substr(md5(g::text), 1, 24), 'requires_payment_method', '{}'
         FROM generate_series($2::bigint, $3::bigint) g",
    )
    .bind(client)
    .bind(have + 1)
    .bind(n)
    .execute(primary)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let admin = args
        .get(1)
        .context("usage: recovery-bench ADMIN_URL N [RUNS]")?;
    let n: i64 = args.get(2).context("pending count")?.parse()?;
    let runs: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;

    let primary = db::primary(admin, DB).await?;
    fill(&primary, n).await?;
    let replica = paystream_db::Replica::new(&db::url(admin, DB, Some(db::replica_port()?))?, 1)?;
    let primary = paystream_db::Primary::from(primary);

    let partitions = [0, 1, 2, 3];
    let mut times = Vec::new();
    let mut report = None;
    let mut first_rss = None;
    for run in 0..runs {
        let rss_before = rss_bytes();
        let started = Instant::now();
        let states =
            recovery::load(&primary, &replica, &partitions, 4, &Schedule::default()).await?;
        let took = started.elapsed();
        let pending: usize = states.values().map(|s| s.len()).sum();
        let bytes: usize = states.values().map(|s| s.approx_bytes()).sum();
        let rss = rss_bytes().saturating_sub(rss_before);
        println!(
            "run {run}: {pending} pending loaded in {:.2} s; state {bytes} bytes ({} per payment); RSS +{} MB",
            took.as_secs_f64(),
            bytes / pending.max(1),
            rss / 1_000_000
        );
        times.push(took);
        report = Some((pending, bytes));
        first_rss.get_or_insert(rss);
        drop(states);
    }
    times.sort();
    let (pending, bytes) = report.context("no run")?;
    let rss = first_rss.unwrap_or(0);
    println!(
        "recovery of {pending} pending payments: median {:.2} s over {runs} runs; {} state bytes per payment (counted), {} RSS bytes per payment (first run)",
        times[times.len() / 2].as_secs_f64(),
        bytes / pending.max(1),
        rss / pending.max(1) as u64,
    );
    Ok(())
}
