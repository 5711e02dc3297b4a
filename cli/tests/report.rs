//! `paystream report` on the real replicas and a stripe-sim of its own, seeded with one
//! payment of every class by editing rows and Stripe's state behind the system's back.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use paystream_core::{PaymentId, PaymentStatus};
use paystream_db::payments::{self, Observation, Source};
use paystream_testkit::Stack;
use paystream_testkit::sim::{SIM_KEY, SimWorld};
use serde_json::Value;
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
        .args([
            "report",
            "--since",
            "3h",
            "--format",
            format,
            "--stripe-rate",
            "2000",
        ])
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
