//! `paystream report` on the real replicas and a stripe-sim of its own, seeded with one
//! payment of every class (and refunds of several refund classes) by editing rows and
//! Stripe's state behind the system's back.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use paystream_core::gateway::{NewRefund, StripeGateway, StripeReporting, refund_key};
use paystream_core::{PaymentId, PaymentStatus};
use paystream_db::payments::{self, Observation, Source};
use paystream_testkit::Stack;
use paystream_testkit::sim::{SIM_KEY, SimWorld};
use serde_json::{Value, json};
use uuid::Uuid;

/// One `paystream report` run: exit code, output, log and the stored run's id.
struct Run {
    code: i32,
    stdout: String,
    log: String,
    id: Uuid,
}

/// Runs the CLI without blocking the runtime: the test's stripe-sim is served by it.
async fn report(stack: &Stack, world: &SimWorld, format: &str, extra: &[&str]) -> Run {
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args(["report", "--format", format, "--stripe-rate", "2000"])
        .args(if extra.contains(&"--since") {
            &[][..]
        } else {
            &["--since", "3h"][..]
        })
        // The seeded discrepancies are seconds old: without a grace (the default is 2
        // minutes) they are what they are, not `in_flight`.
        .args(if extra.contains(&"--grace") {
            &[][..]
        } else {
            &["--grace", "0s"][..]
        })
        // The seeded classes are the list walk's (`missing_at_stripe` is only its): a stack
        // that benchmarks have filled past `--bulk-from` must not switch paths under it.
        .args(if extra.contains(&"--bulk-from") {
            &[][..]
        } else {
            &["--bulk-from", "100000000"][..]
        })
        .args(extra)
        .env("REPLICA_URL", stack.var("REPLICA_URL"))
        .env("DATABASE_URL", stack.var("DATABASE_URL"))
        .env("STRIPE_API_BASE", &world.sim)
        .env("STRIPE_SECRET_KEY", SIM_KEY)
        .output()
        .await
        .expect("run paystream report");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or_else(|| panic!("killed: {log}"));
    assert!(
        code != 1,
        "the report failed after {:?}: {log}",
        started.elapsed()
    );
    // Not a terminal: a line per step says the run is alive and what it read.
    assert!(
        log.lines().any(|l| l.starts_with("report "))
            && log
                .lines()
                .any(|l| l.starts_with("counting the window's payments"))
            && log.lines().any(|l| l.starts_with("report made in ")),
        "{log}"
    );
    let id = log
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.strip_suffix(" stored"))
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(|| panic!("no stored run id in: {log}"));
    Run {
        code,
        stdout: String::from_utf8(out.stdout).expect("utf-8"),
        log,
        id,
    }
}

async fn edit(world: &SimWorld, sql: &str, id: Uuid) {
    sqlx::query(sql)
        .bind(id)
        .execute(&world.db)
        .await
        .expect(sql);
}

/// A payment paid at Stripe and succeeded in our books, as after its webhook.
async fn paid(world: &SimWorld) -> (Uuid, String) {
    let (id, pi) = world.payment().await;
    world.confirm(&pi, "pm_card_visa").await;
    let obs = Observation {
        status: PaymentStatus::Succeeded,
        intent: None,
        stripe_status: Some("succeeded"),
        error: None,
        source: Source::Webhook,
        detail: None,
        amount_received: None,
    };
    payments::apply_status(&world.primary, PaymentId::from_uuid(id), &obs)
        .await
        .unwrap();
    (id, pi)
}

/// A refund of `pi` at Stripe naming `refund_id` in its metadata, as the API makes them.
async fn stripe_refund(world: &SimWorld, pi: &str, refund_id: Uuid, amount: i64) -> String {
    let id = refund_id.to_string();
    let r = world
        .stripe
        .create_refund(&NewRefund {
            refund_id: &id,
            payment_intent: pi,
            amount,
            reason: None,
            idempotency_key: &refund_key(&refund_id),
        })
        .await
        .expect("create refund");
    assert_eq!(r.stripe_status, "succeeded", "refunds settle at once here");
    r.id
}

/// Our refund row as the pipeline would have left it, and the payment's refunded sum.
async fn our_refund(
    world: &SimWorld,
    payment: Uuid,
    id: Uuid,
    amount: i64,
    status: &str,
    stripe_id: Option<&str>,
) {
    sqlx::query(
        "INSERT INTO refunds (id, payment_id, requested_by, idempotency_key, amount, currency,
                              status, stripe_refund_id, stripe_status, resolution_source, resolved_at)
         VALUES ($1, $2, $3, 'test-refund-' || $1::text, $4, 'usd', $5::text, $6,
                 CASE WHEN $5::text = 'pending' THEN NULL ELSE $5::text END,
                 CASE WHEN $5::text = 'pending' THEN NULL ELSE 'webhook' END,
                 CASE WHEN $5::text = 'pending' THEN NULL ELSE now() END)",
    )
    .bind(id)
    .bind(payment)
    .bind(Uuid::now_v7())
    .bind(amount)
    .bind(status)
    .bind(stripe_id)
    .execute(&world.db)
    .await
    .expect("insert refund");
    edit(
        world,
        "UPDATE payments SET amount_refunded = (SELECT coalesce(sum(amount), 0) FROM refunds
                                                WHERE payment_id = $1 AND status = 'succeeded')
         WHERE id = $1",
        payment,
    )
    .await;
}

/// What a refund finding is about: Stripe's refund for orphans, the payment for its
/// refunded sum, else our refund.
fn refund_subject(f: &Value) -> Option<String> {
    let field = match f["class"].as_str()? {
        "refund_orphan_at_stripe" => "stripe_refund_id",
        "refunded_amount_mismatch" => "payment_id",
        c if c.starts_with("refund_") => "refund_id",
        _ => return None,
    };
    f[field].as_str().map(str::to_owned)
}

/// A window compared through one Reporting API file (`--bulk-from 1`: any window): money
/// Stripe moved that our books deny, and money our books claim that Stripe never took,
/// are found; a payment pending at both, or canceled before any money moved, agrees.
#[tokio::test]
async fn a_large_window_compares_our_books_with_stripes_report_run() {
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;
    let (matched, _) = paid(&world).await;
    let (pending_both, _) = world.payment().await;
    let (canceled_both, pi) = world.payment().await;
    world
        .stripe
        .cancel_intent(&pi, None, &format!("t-{pi}"))
        .await
        .unwrap();
    edit(
        &world,
        "UPDATE payments SET status = 'canceled', resolution_source = 'webhook', resolved_at = now(),
                             version = version + 1 WHERE id = $1",
        canceled_both,
    )
    .await;
    // Charged at Stripe; our books still say pending.
    let (charged_pending, pi) = world.payment().await;
    world.confirm(&pi, "pm_card_visa").await;
    // Charged at Stripe; our books say canceled.
    let (charged_canceled, pi) = world.payment().await;
    world.confirm(&pi, "pm_card_visa").await;
    edit(
        &world,
        "UPDATE payments SET status = 'canceled', resolution_source = 'webhook', resolved_at = now(),
                             version = version + 1 WHERE id = $1",
        charged_canceled,
    )
    .await;
    // Succeeded in our books; Stripe never took the money.
    let (uncharged, _) = world.payment().await;
    edit(
        &world,
        "UPDATE payments SET status = 'succeeded', resolution_source = 'webhook', resolved_at = now(),
                             amount_captured = amount, version = version + 1 WHERE id = $1",
        uncharged,
    )
    .await;
    let (amount, _) = paid(&world).await;
    edit(
        &world,
        "UPDATE payments SET amount = amount + 1, amount_captured = amount + 1, version = version + 1
         WHERE id = $1",
        amount,
    )
    .await;
    // Charged at Stripe for a payment id we have no row for.
    let orphan = Uuid::now_v7();
    let orphan_pi = world.intent_for(orphan).await;
    world.confirm(&orphan_pi, "pm_card_visa").await;
    // The report reads the replicas: wait for the last edit.
    let replica = stack.pool("REPLICA_URL").await;
    let started = Instant::now();
    let edited: i64 = sqlx::query_scalar("SELECT version FROM payments WHERE id = $1")
        .bind(amount)
        .fetch_one(&world.db)
        .await
        .unwrap();
    while sqlx::query_scalar::<_, i64>("SELECT version FROM payments WHERE id = $1")
        .bind(amount)
        .fetch_optional(&replica)
        .await
        .unwrap()
        != Some(edited)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replicas did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A report's data ends with the second before Stripe's present (the interval's end is
    // exclusive): the captures above must be in the past.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stripe has report data from the UTC day of the account's first balance change (this
    // world's first capture, just now): in the hours after midnight a 3-hour window would
    // start before it, and the report would rightly walk the lists instead.
    let available = world
        .stripe
        .report_availability(paystream_report::bulk::REPORT_TYPE)
        .await
        .unwrap();
    let since = (chrono::Utc::now() - chrono::Duration::hours(3))
        .timestamp()
        .max(available.start);
    let since = chrono::DateTime::from_timestamp(since, 0)
        .unwrap()
        .to_rfc3339();
    let bulk = ["--bulk-from", "1", "--since", &since];
    let run = report(stack, &world, "json", &bulk).await;
    let v: Value = serde_json::from_str(&run.stdout).expect("json report");
    assert_eq!(v["stripe_source"], "report_run", "{}", run.log);
    assert!(
        v["balance_changes"].as_u64() >= Some(4),
        "{} charged payments, {} balance changes: {}",
        v["stripe_intents"],
        v["balance_changes"],
        run.log
    );
    let want: HashMap<String, &str> = [
        (charged_pending, "status_mismatch"),
        (charged_canceled, "status_mismatch"),
        (uncharged, "status_mismatch"),
        (amount, "amount_mismatch"),
        (orphan, "orphan_at_stripe"),
    ]
    .into_iter()
    .map(|(id, c)| (id.to_string(), c))
    .collect();
    let agreeing = [matched, pending_both, canceled_both].map(|id| id.to_string());
    let found: HashMap<String, &str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            let id = f["payment_id"].as_str()?;
            (want.contains_key(id) || agreeing.iter().any(|a| a == id))
                .then(|| (id.to_owned(), f["class"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(
        found, want,
        "exactly the seeded classes, and the agreeing payments in none"
    );
    let text = report(stack, &world, "table", &bulk).await;
    assert!(
        text.stdout.contains("balance changes, one report run"),
        "{}",
        text.stdout
    );
}

#[tokio::test]
async fn the_report_finds_exactly_the_seeded_discrepancies_in_every_format() {
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;

    let (matched, pi) = world.payment().await;
    world.confirm(&pi, "pm_card_visa").await;
    let obs = Observation {
        status: PaymentStatus::Succeeded,
        intent: None,
        stripe_status: Some("succeeded"),
        error: None,
        source: Source::Webhook,
        detail: None,
        amount_received: None,
    };
    payments::apply_status(&world.primary, PaymentId::from_uuid(matched), &obs)
        .await
        .unwrap();
    // Paid at Stripe; we never heard of it.
    let (status, pi) = world.payment().await;
    world.confirm(&pi, "pm_card_visa").await;
    let (amount, _) = world.payment().await;
    edit(
        &world,
        "UPDATE payments SET amount = amount + 1, version = version + 1 WHERE id = $1",
        amount,
    )
    .await;
    let (currency, _) = world.payment().await;
    edit(
        &world,
        "UPDATE payments SET currency = 'eur', version = version + 1 WHERE id = $1",
        currency,
    )
    .await;
    let missing = Uuid::now_v7();
    world.insert_pending(missing).await;
    payments::attach_intent(
        &world.primary,
        PaymentId::from_uuid(missing),
        &format!("pi_unknown_{}", missing.simple()),
        "requires_payment_method",
    )
    .await
    .unwrap();
    // Created at Stripe for a payment id that has no row.
    let orphan = Uuid::now_v7();
    let orphan_pi = world.intent_for(orphan).await;

    // Refunds. Stripe settles them at once here.
    let mut sim_world: Value = world
        .http
        .get(format!("{}/_sim/world", world.sim))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    sim_world["refund_ms"] = json!(0);
    world
        .http
        .put(format!("{}/_sim/world", world.sim))
        .json(&sim_world)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("PUT /_sim/world");
    // Agrees on both sides: no finding.
    let (refunded_ok, pi) = paid(&world).await;
    let refund_ok = Uuid::now_v7();
    let re_ok = stripe_refund(&world, &pi, refund_ok, 500).await;
    our_refund(
        &world,
        refunded_ok,
        refund_ok,
        500,
        "succeeded",
        Some(&re_ok),
    )
    .await;
    // We hold a Stripe refund Stripe never made.
    let (refund_missing_payment, _) = paid(&world).await;
    let refund_missing = Uuid::now_v7();
    let re_unknown = format!("re_unknown_{}", refund_missing.simple());
    our_refund(
        &world,
        refund_missing_payment,
        refund_missing,
        700,
        "pending",
        Some(&re_unknown),
    )
    .await;
    // Stripe gave back 500; our refund (and so the payment's refunded sum) says 600.
    let (refund_amount_payment, pi) = paid(&world).await;
    let refund_amount = Uuid::now_v7();
    let re_amount = stripe_refund(&world, &pi, refund_amount, 500).await;
    our_refund(
        &world,
        refund_amount_payment,
        refund_amount,
        600,
        "succeeded",
        Some(&re_amount),
    )
    .await;
    // A Stripe refund naming a refund id we have no row for, on a payment of ours.
    let (refund_orphan_payment, pi) = paid(&world).await;
    let nobody = Uuid::now_v7();
    let re_orphan = stripe_refund(&world, &pi, nobody, 300).await;
    // A refund made at Stripe outside Paystream (no metadata) on a payment of ours.
    let (refund_dashboard_payment, pi) = paid(&world).await;
    let dashboard: Value = world
        .http
        .post(format!("{}/v1/refunds", world.sim))
        .bearer_auth(SIM_KEY)
        .form(&[("payment_intent", pi.as_str()), ("amount", "200")])
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("dashboard refund")
        .json()
        .await
        .unwrap();
    let re_dashboard = dashboard["id"].as_str().unwrap().to_owned();
    let refund_payments: HashSet<String> = [
        refunded_ok,
        refund_missing_payment,
        refund_amount_payment,
        refund_orphan_payment,
        refund_dashboard_payment,
    ]
    .iter()
    .map(Uuid::to_string)
    .collect();
    let want_refunds: HashSet<(String, String)> = [
        ("refund_missing_at_stripe", refund_missing.to_string()),
        ("refund_amount_mismatch", refund_amount.to_string()),
        (
            "refunded_amount_mismatch",
            refund_amount_payment.to_string(),
        ),
        ("refund_orphan_at_stripe", re_orphan.clone()),
        (
            "refunded_amount_mismatch",
            refund_orphan_payment.to_string(),
        ),
        ("refund_orphan_at_stripe", re_dashboard.clone()),
        (
            "refunded_amount_mismatch",
            refund_dashboard_payment.to_string(),
        ),
    ]
    .into_iter()
    .map(|(c, s)| (c.to_owned(), s))
    .collect();

    let (stuck, _) = world.payment().await;
    edit(&world, "UPDATE payments SET created_at = now() - interval '2 hours', version = version + 1 WHERE id = $1", stuck).await;

    // The report reads the replicas: wait until the last edit is there.
    let replica = stack.pool("REPLICA_URL").await;
    let started = Instant::now();
    loop {
        let moved: Option<bool> = sqlx::query_scalar(
            "SELECT created_at < now() - interval '1 hour' FROM payments WHERE id = $1",
        )
        .bind(stuck)
        .fetch_optional(&replica)
        .await
        .unwrap();
        if moved == Some(true) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replicas did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let want: HashMap<String, &str> = [
        (status, "status_mismatch"),
        (amount, "amount_mismatch"),
        (currency, "currency_mismatch"),
        (missing, "missing_at_stripe"),
        (orphan, "orphan_at_stripe"),
        (stuck, "stuck_pending"),
    ]
    .into_iter()
    .map(|(id, c)| (id.to_string(), c))
    .collect();
    let ours = |id: &str| want.contains_key(id) || id == matched.to_string();

    let Run {
        code,
        stdout: json,
        id: first_run,
        ..
    } = report(stack, &world, "json", &[]).await;
    assert_eq!(
        code, 2,
        "discrepancies make the exit code non-zero:\n{json}"
    );
    let v: Value = serde_json::from_str(&json).expect("json report");
    let found: HashMap<String, String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["payment_id"].as_str().is_some_and(ours))
        .map(|f| {
            (
                f["payment_id"].as_str().unwrap().to_owned(),
                f["class"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let found: HashMap<String, &str> = found.iter().map(|(k, v)| (k.clone(), v.as_str())).collect();
    assert_eq!(
        found, want,
        "exactly the seeded classes, and the matched payment in none"
    );
    let orphan_finding = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["class"] == "orphan_at_stripe" && f["payment_id"] == orphan.to_string())
        .unwrap();
    assert_eq!(orphan_finding["intent_id"], orphan_pi.as_str());
    assert!(
        v["data_as_of"].is_string(),
        "the report says how fresh it is"
    );
    assert!(v["resolved_by"]["webhook"].as_u64() >= Some(1));
    assert_eq!(v["grace_secs"], 0);

    // With the default grace, the payment that is pending here and succeeded at Stripe a
    // moment ago is in flight (its webhook is on its way), not a discrepancy.
    let graced = report(stack, &world, "json", &["--grace", "10m"]).await;
    let g: Value = serde_json::from_str(&graced.stdout).expect("json report");
    let class_of = |id: Uuid| {
        g["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["payment_id"] == id.to_string())
            .map(|f| f["class"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(class_of(status).as_deref(), Some("in_flight"));
    assert_eq!(
        class_of(amount).as_deref(),
        Some("amount_mismatch"),
        "only status waits"
    );
    assert_eq!(g["grace_secs"], 600);

    // Exactly the seeded refund findings, and the matched refund in none.
    let seeded_stripe: HashSet<&str> =
        [re_ok.as_str(), re_orphan.as_str(), re_dashboard.as_str()].into();
    let refund_findings: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| refund_subject(f).is_some())
        .filter(|f| {
            f["payment_id"]
                .as_str()
                .is_some_and(|p| refund_payments.contains(p))
                || f["stripe_refund_id"]
                    .as_str()
                    .is_some_and(|s| seeded_stripe.contains(s))
        })
        .collect();
    let found_refunds: HashSet<(String, String)> = refund_findings
        .iter()
        .map(|f| {
            (
                f["class"].as_str().unwrap().to_owned(),
                refund_subject(f).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        (found_refunds.len(), &found_refunds),
        (refund_findings.len(), &want_refunds),
        "exactly the seeded refund classes, once each: {refund_findings:#?}"
    );
    let finding = |class: &str, subject: &str| {
        *refund_findings
            .iter()
            .find(|f| f["class"] == class && refund_subject(f).as_deref() == Some(subject))
            .unwrap()
    };
    let f = finding("refund_amount_mismatch", &refund_amount.to_string());
    assert_eq!(
        (&f["ours"], &f["stripe"], &f["stripe_refund_id"]),
        (&json!("600 usd"), &json!("500 usd"), &json!(re_amount))
    );
    let f = finding(
        "refunded_amount_mismatch",
        &refund_amount_payment.to_string(),
    );
    assert_eq!(
        (&f["ours"], &f["stripe"]),
        (&json!("600 usd"), &json!("500 usd"))
    );
    let f = finding("refund_orphan_at_stripe", &re_orphan);
    assert_eq!(
        (&f["refund_id"], &f["payment_id"]),
        (
            &json!(nobody.to_string()),
            &json!(refund_orphan_payment.to_string())
        )
    );
    assert_eq!(
        finding("refund_missing_at_stripe", &refund_missing.to_string())["ours"],
        re_unknown.as_str()
    );
    assert!(
        v["counts"]["refund_matched"].as_u64() >= Some(1),
        "{}",
        v["counts"]
    );
    assert!(v["refunds"].as_u64() >= Some(3) && v["stripe_refunds"].as_u64() >= Some(4));

    let Run {
        code,
        stdout: csv,
        id: csv_run,
        ..
    } = report(stack, &world, "csv", &[]).await;
    assert_eq!(code, 2);
    for (id, class) in &want {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("{class},{id},"))),
            "{class} {id} in CSV"
        );
    }
    assert!(!csv.contains(&matched.to_string()));
    for (class, subject) in &want_refunds {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("{class},")) && l.contains(subject.as_str())),
            "{class} {subject} in CSV"
        );
    }
    assert!(
        csv.lines().any(|l| l.starts_with("refund_amount_mismatch,")
            && l.ends_with(&format!(",{refund_amount},{re_amount}"))),
        "the refund ids close the CSV line"
    );
    assert!(!csv.contains(&refund_ok.to_string()) && !csv.contains(&re_ok));
    let Run {
        code,
        stdout: table,
        ..
    } = report(stack, &world, "table", &[]).await;
    assert_eq!(code, 2);
    for (id, class) in &want {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(class) && l.contains(id.as_str())),
            "{class} {id} in the table"
        );
    }
    assert!(table.contains("matched"), "{table}");
    for (class, subject) in &want_refunds {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(class.as_str()) && l.contains(subject.as_str())),
            "{class} {subject} in the table"
        );
    }
    assert!(table.contains("refund_matched"), "{table}");

    // --repair fixes exactly the status mismatch, as an operator change.
    let log = report(stack, &world, "json", &["--repair"]).await.log;
    assert!(
        log.contains(&format!("repaired {status}: pending -> succeeded")),
        "{log}"
    );
    for id in [amount, currency, missing, stuck] {
        assert!(
            !log.contains(&format!("repaired {id}")),
            "{id} is not a status mismatch: {log}"
        );
    }
    let after: (String, Option<String>) =
        sqlx::query_as("SELECT status, resolution_source FROM payments WHERE id = $1")
            .bind(status)
            .fetch_one(&world.db)
            .await
            .unwrap();
    assert_eq!(after, ("succeeded".to_owned(), Some("operator".to_owned())));
    // Once the replicas have the repair, the next run no longer reports it.
    let started = Instant::now();
    let last_run = loop {
        let Run {
            stdout: json,
            id: run,
            ..
        } = report(stack, &world, "json", &[]).await;
        let v: Value = serde_json::from_str(&json).unwrap();
        let still = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["payment_id"] == status.to_string());
        if !still {
            break run;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the repaired payment is still reported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Every run was stored: listed, re-rendered identically, and diffed.
    let reports = |args: Vec<String>| {
        let replica = stack.var("REPLICA_URL").to_owned();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"))
                .arg("reports")
                .args(&args)
                .env("REPLICA_URL", replica)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "reports {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let started = Instant::now();
    let listed = loop {
        let listed = reports(vec!["list".into(), "--limit".into(), "50".into()]).await;
        if listed.contains(&last_run.to_string()) || started.elapsed() > Duration::from_secs(30) {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for run in [first_run, csv_run, last_run] {
        assert!(listed.contains(&run.to_string()), "{run} listed:\n{listed}");
    }
    let again = reports(vec![
        "show".into(),
        csv_run.to_string(),
        "--format".into(),
        "csv".into(),
    ])
    .await;
    assert_eq!(again, csv, "a stored run renders as it did");
    let diff = reports(vec![
        "diff".into(),
        first_run.to_string(),
        last_run.to_string(),
    ])
    .await;
    assert!(
        diff.lines().any(|l| l.starts_with(&status.to_string())
            && l.contains("status_mismatch")
            && l.ends_with("(none)")),
        "{diff}"
    );
    assert!(
        !diff.contains(&amount.to_string()),
        "unchanged findings are not in the diff: {diff}"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_paystream"))
        .args([
            "report",
            "--since",
            "yesterday",
            "--replica-url",
            "postgres://x@127.0.0.1:1/x",
            "--stripe-api-base",
            "http://127.0.0.1:1",
            "--stripe-secret-key",
            "sk_test_x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration like 24h"));
}
