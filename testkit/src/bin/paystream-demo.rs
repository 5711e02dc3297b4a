//! `make up`'s demo: a client creates payments through nginx and the API, customers pay
//! them at Stripe (stripe-sim, or Stripe in test mode with `make up STRIPE=real`) with
//! different test cards, Stripe's webhooks come back through nginx to the webhook receiver,
//! and each payment is followed through replication (both replicas, via nginx) and the CDC
//! pipeline (Debezium -> broker). With stripe-sim, the last payment's webhooks are dropped
//! at Stripe: the reconciler's poll resolves it. Real Stripe can do neither that nor the
//! sim's own `pm_sim_processing` card: those are skipped, and the demo says so.
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use paystream_testkit::cdc;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let stack = Stack::from_env_file();
    let consumer = stack.consumer_at_end(stack.var("CDC_TOPIC"));
    let replicas = stack.pool("REPLICA_URL").await;
    let http = reqwest::Client::new();
    let api = stack.var("PAYSTREAM_API_URL");
    let stripe = stack.var("STRIPE_API_BASE");
    let sim = stack.var("STRIPE_MODE") != "real";

    // (amount, currency, card, whether Stripe's webhooks for it are dropped)
    let orders: [(i64, &str, &str, bool); 6] = [
        (1250, "usd", "pm_card_visa", false),
        (9900, "eur", "pm_card_chargeDeclined", false),
        (500, "jpy", "pm_card_threeDSecure2Required", false),
        (4200, "gbp", "pm_card_visa", false),
        (7500, "usd", "pm_sim_processing", false),
        (3100, "usd", "pm_card_visa", true),
    ];
    if !sim {
        println!(
            "Stripe test mode (STRIPE=real): skipped the pm_sim_processing payment (a stripe-sim card)"
        );
        println!(
            "and dropping a payment's webhooks (stripe-sim's /_sim/faults): Stripe cannot be told to."
        );
    }
    // Only stripe-sim has them; never called against real Stripe.
    let faults = |drop: f64| {
        http.put(format!("{stripe}/_sim/faults"))
            .json(&json!({"webhook_drop_rate": drop}))
            .send()
    };
    let mut sent = Vec::new();
    for (amount, currency, card, dropped) in orders {
        if !sim && (dropped || card == "pm_sim_processing") {
            continue;
        }
        let started = Instant::now();
        let res = http
            .post(format!("{api}/v1/payments"))
            .bearer_auth(stack.var("PAYSTREAM_CLIENT_KEY"))
            .header("Idempotency-Key", format!("demo-{}", Uuid::now_v7()))
            .json(&json!({"amount": amount, "currency": currency, "description": "demo order"}))
            .send()
            .await
            .expect("the API answers through nginx");
        let status = res.status();
        let payment: Value = res.json().await.expect("JSON");
        assert!(
            status.is_success(),
            "creating a payment failed: {status} {payment}"
        );
        // The customer pays at Stripe with the PaymentIntent the API created.
        let pi = payment["stripe_payment_intent_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if dropped {
            faults(1.0).await.expect("stripe-sim faults");
        }
        let confirmed = stack.pay(&pi, card).await;
        let stripe_status = confirmed["status"]
            .as_str()
            .or_else(|| confirmed["error"]["payment_intent"]["status"].as_str())
            .unwrap_or("?")
            .to_owned();
        let card = if dropped {
            "pm_card_visa, webhook dropped"
        } else {
            card
        };
        sent.push((payment, card, stripe_status, started));
    }

    let wanted: HashSet<String> = sent
        .iter()
        .map(|(p, ..)| p["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let seen = cdc::collect(
        &consumer,
        Duration::from_secs(60),
        |k| wanted.contains(k),
        |s| s.len() == wanted.len(),
    )
    .await;

    // Our status follows Stripe's through the webhooks (a few hundred ms), or the
    // reconciler's poll (5 s after creation in the local stack) when a webhook is lost.
    let mut finals = Vec::new();
    for (p, _, stripe_status, _) in &sent {
        let id = p["id"].as_str().unwrap_or_default();
        let want = match stripe_status.as_str() {
            "succeeded" => "succeeded",
            "canceled" => "canceled",
            _ => "pending",
        };
        // Shown as it stands after 30 s, reached or not.
        let v = stack
            .await_payment(id, want, Duration::from_secs(30))
            .await
            .unwrap_or_else(|last| last);
        finals.push((
            v["status"].as_str().unwrap_or("?").to_owned(),
            v["resolution_source"].as_str().unwrap_or("-").to_owned(),
        ));
    }

    // Stripe decides a delivery's fate when it sends it, so the drop stays on until the
    // poll has done its work.
    if sim {
        faults(0.0).await.expect("stripe-sim faults");
    }

    println!();
    println!(
        "{:<38} {:>10} {:<30} {:<10} {:<8} {:<24} {:<8} {:>12}",
        "payment", "amount", "card", "ours", "by", "stripe", "replicas", "api->kafka"
    );
    let mut ok = true;
    for ((p, card, stripe_status, started), (ours, by)) in sent.iter().zip(&finals) {
        let id = p["id"].as_str().unwrap_or_default();
        let on_replica = wait_on_replica(&replicas, id).await;
        let record = seen.get(id).and_then(|r| r.first());
        let latency = record.map_or("missing".to_owned(), |r| {
            format!("{} ms", r.received_at.duration_since(*started).as_millis())
        });
        ok &= on_replica && record.is_some();
        ok &= stripe_status != "succeeded" || ours == "succeeded";
        println!(
            "{:<38} {:>10} {:<30} {:<10} {:<8} {:<24} {:<8} {:>12}",
            id,
            format!(
                "{} {}",
                p["amount"],
                p["currency"].as_str().unwrap_or_default()
            ),
            card,
            ours,
            by,
            stripe_status,
            if on_replica { "yes" } else { "NO" },
            latency
        );
    }
    println!();
    ok &= money_back_and_money_held(&http, &stack, &sent, &finals).await;
    println!();
    if !ok {
        eprintln!(
            "demo: some payments did not make it through the pipeline; see `make status` and .stack/logs"
        );
        std::process::exit(1);
    }
    println!(
        "All payments were created through nginx and the API and reached both replicas and the CDC"
    );
    if sim {
        println!(
            "topic; our status followed Stripe's through its webhooks, or through the reconciler's poll when"
        );
        println!(
            "the webhook was dropped (states Stripe has not finished stay pending and are polled on)."
        );
    } else {
        println!(
            "topic; our status followed Stripe's through its webhooks (`stripe listen` or a public endpoint)"
        );
        println!(
            "or the reconciler's polls, as `by` says (states Stripe has not finished stay pending, polled on)."
        );
    }
}

/// A partial refund of the first payment that succeeded, followed until Stripe settles it
/// (its webhook, or the reconciler's poll), and a manual payment captured in part.
async fn money_back_and_money_held(
    http: &reqwest::Client,
    stack: &Stack,
    sent: &[(Value, &str, String, Instant)],
    finals: &[(String, String)],
) -> bool {
    let api = stack.var("PAYSTREAM_API_URL");
    let key = stack.var("PAYSTREAM_CLIENT_KEY");
    let call = |req: reqwest::RequestBuilder| async move {
        let res = req
            .bearer_auth(key)
            .header("Idempotency-Key", format!("demo-{}", Uuid::now_v7()))
            .send()
            .await
            .expect("the API answers");
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    let mut ok = true;
    if let Some((p, ..)) = sent
        .iter()
        .zip(finals)
        .find(|(_, (ours, _))| ours == "succeeded")
        .map(|(s, _)| s)
    {
        let id = p["id"].as_str().unwrap_or_default();
        let amount = p["amount"].as_i64().unwrap_or(0) / 3;
        let started = Instant::now();
        let (status, refund) = call(
            http.post(format!("{api}/v1/payments/{id}/refunds"))
                .json(&json!({"amount": amount, "reason": "requested_by_customer"})),
        )
        .await;
        let rid = refund["id"].as_str().unwrap_or_default().to_owned();
        let mut now = refund.clone();
        for _ in 0..300 {
            if now["status"] != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = call(http.get(format!("{api}/v1/refunds/{rid}"))).await.1;
        }
        ok &= status.is_success() && now["status"] == "succeeded";
        println!(
            "refund  {rid}: {amount} {} of {id}: {} -> {} by {} in {} ms",
            p["currency"].as_str().unwrap_or_default(),
            refund["status"].as_str().unwrap_or("?"),
            now["status"].as_str().unwrap_or("?"),
            now["resolution_source"].as_str().unwrap_or("-"),
            started.elapsed().as_millis()
        );
    }
    let (_, held) = call(
        http.post(format!("{api}/v1/payments"))
            .json(&json!({"amount": 3000, "currency": "usd", "capture_method": "manual", "description": "demo order, captured later"})),
    )
    .await;
    let id = held["id"].as_str().unwrap_or_default().to_owned();
    let pi = held["stripe_payment_intent_id"]
        .as_str()
        .unwrap_or_default();
    let confirmed = stack.pay(pi, "pm_card_visa").await["status"] == "requires_capture";
    let (status, captured) = call(
        http.post(format!("{api}/v1/payments/{id}/capture"))
            .json(&json!({"amount_to_capture": 2000})),
    )
    .await;
    ok &= confirmed && status.is_success() && captured["amount_captured"] == 2000;
    println!(
        "capture {id}: 2000 of 3000 usd held at Stripe: {} (amount_captured {}, the rest released)",
        captured["status"].as_str().unwrap_or("?"),
        captured["amount_captured"]
    );
    ok
}

async fn wait_on_replica(replicas: &sqlx::PgPool, id: &str) -> bool {
    let Ok(id) = Uuid::parse_str(id) else {
        return false;
    };
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
