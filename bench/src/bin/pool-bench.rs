//! What a pooled statement costs beyond the statement: 32 tasks run `SELECT 1` on the
//! stack's primary for a few seconds, each acquiring a connection from a sqlx pool and
//! releasing it per statement (as every service does), then each holding one connection
//! for all its statements (the baseline, same run). Prints statements/s and the machine's
//! CPU per statement (all cores, from /proc/stat) for each, and their ratio.
//!
//!   pool-bench              (DATABASE_URL from .stack/env)
//!
//! sqlx's release used to ping each connection, a round trip per statement;
//! `PAYSTREAM_SQLX_PING_ON_RELEASE=1` restores that ping (third_party/sqlx-core), so
//! running this with and without it measures the patch.
#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    clippy::cast_precision_loss
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgPool;

const TASKS: usize = 32;
const ROUND: Duration = Duration::from_secs(4);

/// Busy CPU time of the whole machine so far, in clock ticks (user, nice, system, irq,
/// softirq).
fn machine_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let f: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat is empty")?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok(f[0] + f[1] + f[2] + f[5] + f[6])
}

/// Statements/s and machine CPU (us) per statement over one round.
async fn round(pool: &PgPool, held: bool) -> anyhow::Result<(f64, f64)> {
    let done = Arc::new(AtomicU64::new(0));
    let (started, ticks) = (Instant::now(), machine_ticks()?);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (pool, done) = (pool.clone(), done.clone());
            tokio::spawn(async move {
                let end = Instant::now() + ROUND;
                let mut own = if held {
                    Some(pool.acquire().await?)
                } else {
                    None
                };
                while Instant::now() < end {
                    let q = sqlx::query("SELECT 1");
                    match own.as_mut() {
                        Some(c) => q.execute(&mut **c).await?,
                        None => q.execute(&pool).await?,
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let n = done.load(Ordering::Relaxed) as f64;
    let cpu_us = (machine_ticks()? - ticks) as f64 * 10_000.0;
    Ok((n / started.elapsed().as_secs_f64(), cpu_us / n))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL (source .stack/env)")?;
    // As the services' pools: no ping before acquire (db/src/pool.rs).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(TASKS as u32)
        .test_before_acquire(false)
        .connect_with(paystream_db::tls::connect_options(&url)?)
        .await?;
    let ping = std::env::var_os("PAYSTREAM_SQLX_PING_ON_RELEASE").is_some_and(|v| v == "1");
    println!(
        "pooled statements, {TASKS} tasks, release {}",
        if ping {
            "with sqlx's ping"
        } else {
            "patched (no ping)"
        }
    );
    // The first round opens the pool's connections; it is not counted.
    round(&pool, false).await?;
    for r in 1..=3 {
        let (pooled_rate, pooled_us) = round(&pool, false).await?;
        let (held_rate, held_us) = round(&pool, true).await?;
        println!(
            "round {r}: acquired per statement {pooled_rate:.0}/s, {pooled_us:.1} us CPU each | connection held {held_rate:.0}/s, {held_us:.1} us | CPU ratio {:.2}",
            pooled_us / held_us
        );
    }
    Ok(())
}
