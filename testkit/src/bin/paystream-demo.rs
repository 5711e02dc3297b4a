//! `make up`'s demo: sends payments through the running stack and prints what happened
//! to each. Until the API, webhook and reconciler land (issues 4-6) it writes payments
//! straight to the primary, as the API will, and follows each one through replication
//! (both replicas, via nginx) and the CDC pipeline (Debezium -> broker).
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use paystream_testkit::cdc;
use uuid::Uuid;

const CLIENT: &str = "00000000-0000-7000-8000-00000000de70";

#[tokio::main]
async fn main() {
    let stack = Stack::from_env_file();
    let consumer = stack.consumer_at_end(stack.var("CDC_TOPIC"));
    let primary = stack.pool("DATABASE_URL").await;
    let replicas = stack.pool("REPLICA_URL").await;

    let payments: [(i64, &str); 5] = [
        (1250, "usd"),
        (9900, "eur"),
        (500, "jpy"),
        (4200, "gbp"),
        (75, "usd"),
    ];
    let mut sent = Vec::new();
    for (amount, currency) in payments {
        let id = Uuid::now_v7();
        let started = Instant::now();
        sqlx::query("INSERT INTO payments (id, client_id, idempotency_key, amount, currency) VALUES ($1, $2::uuid, $3, $4, $5)")
            .bind(id)
            .bind(CLIENT)
            .bind(format!("demo-{id}"))
            .bind(amount)
            .bind(currency)
            .execute(&primary)
            .await
            .expect("insert on the primary");
        sent.push((id, amount, currency, started));
    }

    let wanted: HashSet<String> = sent.iter().map(|(id, ..)| id.to_string()).collect();
    let seen = cdc::collect(
        &consumer,
        Duration::from_secs(60),
        |k| wanted.contains(k),
        |s| s.len() == wanted.len(),
    )
    .await;

    println!();
    println!(
        "{:<38} {:>10} {:<8} {:<8} {:>12} {:>13}",
        "payment", "amount", "status", "replicas", "cdc partition", "commit->kafka"
    );
    let mut ok = true;
    for (id, amount, currency, started) in &sent {
        let on_replica = wait_on_replica(&replicas, *id).await;
        let record = seen.get(&id.to_string()).and_then(|r| r.first());
        let status = record
            .and_then(|r| r.envelope.as_ref())
            .and_then(|e| e["after"]["status"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into());
        let (partition, latency) = match record {
            Some(r) => (
                r.partition.to_string(),
                format!("{} ms", r.received_at.duration_since(*started).as_millis()),
            ),
            None => ("missing".into(), "-".into()),
        };
        ok &= on_replica && record.is_some();
        println!(
            "{:<38} {:>10} {:<8} {:<8} {:>12} {:>13}",
            id.to_string(),
            format!("{amount} {currency}"),
            status,
            if on_replica { "yes" } else { "NO" },
            partition,
            latency
        );
    }
    println!();
    if !ok {
        eprintln!(
            "demo: some payments did not make it through the pipeline; see `make status` and .stack/logs"
        );
        std::process::exit(1);
    }
    println!("All payments reached both replicas (via nginx) and the CDC topic.");
}

async fn wait_on_replica(replicas: &sqlx::PgPool, id: Uuid) -> bool {
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE id = $1")
            .bind(id)
            .fetch_one(replicas)
            .await
            .unwrap_or(0);
        if n == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
