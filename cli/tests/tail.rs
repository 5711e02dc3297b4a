//! `paystream tail` against the real stack: one payment made through the API and paid at
//! the stack's Stripe, then read back off the CDC and status topics by the built binary;
//! and, on a topic of the test's own, records that do not decode, following from the end,
//! and no offsets committed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

/// The binary with the stack's brokers and topics, as an operator who sourced
/// `.stack/env` runs it.
fn tail_command(stack: &Stack, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paystream"));
    cmd.arg("tail").args(args);
    for var in [
        "KAFKA_BROKERS",
        "CDC_TOPIC",
        "STATUS_TOPIC",
        "REFUND_CDC_TOPIC",
        "REFUND_STATUS_TOPIC",
    ] {
        cmd.env(var, stack.var(var));
    }
    cmd.kill_on_drop(true);
    cmd
}

struct Tail {
    lines: Vec<String>,
    log: String,
}

impl Tail {
    fn json(&self) -> Vec<Value> {
        self.lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The consumer group the tail named (and must not have committed to).
    fn group(&self) -> String {
        self.log
            .split("(group ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("no group in: {}", self.log))
            .to_owned()
    }
}

/// Runs `paystream tail ARGS` to its end; it must exit 0 within `limit`.
async fn tail(stack: &Stack, args: &[&str], limit: Duration) -> Tail {
    let out = tokio::time::timeout(limit, tail_command(stack, args).output())
        .await
        .unwrap_or_else(|_| panic!("paystream tail {args:?} still running after {limit:?}"))
        .expect("run paystream tail");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "paystream tail {args:?}: {}\n{log}",
        out.status
    );
    Tail {
        lines: String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect(),
        log,
    }
}

/// A payment made through nginx with the stack's client key.
async fn create_payment(stack: &Stack, http: &reqwest::Client, amount: i64) -> Value {
    let res = http
        .post(format!("{}/v1/payments", stack.var("PAYSTREAM_API_URL")))
        .bearer_auth(stack.var("PAYSTREAM_CLIENT_KEY"))
        .header("Idempotency-Key", format!("tail-test-{}", Uuid::now_v7()))
        .json(&json!({"amount": amount, "currency": "usd", "description": "paystream tail test"}))
        .send()
        .await
        .expect("the API answers");
    let status = res.status();
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(status.as_u16(), 201, "create payment: {body}");
    body
}

/// Our payment once it is final (its webhook, or a poll), within a minute.
async fn final_payment(stack: &Stack, http: &reqwest::Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p: Value = http
            .get(format!(
                "{}/v1/payments/{id}",
                stack.var("PAYSTREAM_API_URL")
            ))
            .bearer_auth(stack.var("PAYSTREAM_CLIENT_KEY"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET payment")
            .json()
            .await
            .expect("JSON");
        if p["status"] != "pending" {
            return p;
        }
        assert!(Instant::now() < deadline, "{id} still pending: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tails `stream` for `payment` from the beginning until `done` holds for its lines (the
/// reconciler publishes a status update a moment after the change it carries).
async fn records_of(
    stack: &Stack,
    stream: &str,
    payment: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Tail {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let args = [
            stream,
            "--from-beginning",
            "--payment",
            payment,
            "--format",
            "json",
            "--timeout-secs",
            "5",
        ];
        // The CDC topic holds every test run's changes: reading it all takes a while.
        let t = tail(stack, &args, Duration::from_secs(300)).await;
        if done(&t.json()) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "tail {stream} of {payment} never showed what was expected:\n{}\n{}",
            t.lines.join("\n"),
            t.log
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn committed_nothing(stack: &Stack, topic: &str, group: &str) {
    let consumer: BaseConsumer = stack
        .kafka_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..stack.partition_count(topic) as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("committed offsets of {group}: {e}"));
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Invalid,
            "{group} committed {topic}/{}",
            e.partition()
        );
    }
}

#[tokio::test]
async fn one_payment_read_end_to_end_off_the_cdc_and_status_topics() {
    let stack = Stack::get();
    let http = reqwest::Client::new();
    // The payment followed, and another one that must not show in its tail.
    let mine = create_payment(stack, &http, 2000).await;
    let other = create_payment(stack, &http, 2100).await;
    let (id, other_id) = (
        mine["id"].as_str().expect("id").to_owned(),
        other["id"].as_str().expect("id").to_owned(),
    );
    let intent = mine["stripe_payment_intent_id"]
        .as_str()
        .expect("an intent");
    let paid = stack.pay(intent, "pm_card_visa").await;
    assert_eq!(paid["status"], "succeeded", "confirm {intent}: {paid}");
    let cancel = http
        .post(format!(
            "{}/v1/payments/{other_id}/cancel",
            stack.var("PAYSTREAM_API_URL")
        ))
        .bearer_auth(stack.var("PAYSTREAM_CLIENT_KEY"))
        .send()
        .await
        .expect("cancel");
    assert!(cancel.status().is_success(), "cancel: {}", cancel.status());
    let ours = final_payment(stack, &http, &id).await;
    assert_eq!(ours["status"], "succeeded", "{ours}");
    assert_eq!(
        final_payment(stack, &http, &other_id).await["status"],
        "canceled"
    );

    // Debezium's changes of the payment: its pending insert first, its final update last.
    let is_final_update = |l: &Value| {
        l["op"] == "update"
            && l["before_status"] == "pending"
            && l["status"] == "succeeded"
            && l["publishes_update"] == true
    };
    let cdc = records_of(stack, "cdc", &id, |ls| ls.iter().any(is_final_update)).await;
    let lines = cdc.json();
    let shown = cdc.lines.join("\n");
    for l in &lines {
        assert_eq!(
            (
                l["kind"].as_str(),
                l["payment_id"].as_str(),
                l["topic"].as_str()
            ),
            (
                Some("payment_change"),
                Some(id.as_str()),
                Some(stack.var("CDC_TOPIC"))
            ),
            "only the payment's changes: {shown}"
        );
    }
    assert!(!shown.contains(&other_id), "{shown}");
    let first = &lines[0];
    assert_eq!(
        (
            &first["op"],
            &first["status"],
            &first["version"],
            &first["amount"],
            &first["currency"]
        ),
        (
            &json!("insert"),
            &json!("pending"),
            &json!(1),
            &json!(2000),
            &json!("usd")
        ),
        "{shown}"
    );
    let last = lines.last().expect("lines");
    assert!(
        is_final_update(last),
        "the final update comes last: {shown}"
    );
    assert!(
        last["resolution_source"].is_string() && last["lsn"].is_i64(),
        "{shown}"
    );
    // One payment lives in one partition, its changes in order.
    let versions: Vec<i64> = lines
        .iter()
        .map(|l| l["version"].as_i64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{shown}");
    assert!(
        lines.iter().all(|l| l["partition"] == first["partition"]),
        "{shown}"
    );
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["offset"].as_i64() < w[1]["offset"].as_i64()),
        "{shown}"
    );
    committed_nothing(stack, stack.var("CDC_TOPIC"), &cdc.group());

    // Its status update: the final change above, published by the reconciler.
    let status = records_of(stack, "status", &id, |ls| !ls.is_empty()).await;
    let shown = status.lines.join("\n");
    for u in status.json() {
        assert_eq!(
            (
                &u["kind"],
                &u["payment_id"],
                &u["status"],
                &u["version"],
                &u["lsn"],
                &u["resolution_source"],
                &u["amount"]
            ),
            (
                &json!("payment_status_update"),
                &json!(id),
                &json!("succeeded"),
                &last["version"],
                &last["lsn"],
                &last["resolution_source"],
                &json!(2000)
            ),
            "{shown}"
        );
    }
    assert!(!shown.contains(&other_id), "{shown}");
    // The other payment is on the same topic (the filter had something to filter out).
    let theirs = records_of(stack, "status", &other_id, |ls| !ls.is_empty()).await;
    assert!(
        theirs
            .json()
            .iter()
            .all(|u| u["payment_id"] == json!(other_id) && u["status"] == "canceled"),
        "{}",
        theirs.lines.join("\n")
    );

    // The table: a header, then the same update for people.
    let table = tail(
        stack,
        &[
            "status",
            "--from-beginning",
            "--payment",
            &id,
            "--timeout-secs",
            "5",
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(
        table.lines[0].starts_with("PART/OFFSET"),
        "{:?}",
        table.lines
    );
    assert!(
        table.lines[1..].iter().all(|l| l.contains(&id)
            && l.contains("status-update")
            && l.contains("succeeded")
            && l.contains("2000 usd")),
        "{:?}",
        table.lines
    );
    assert!(table.lines.len() >= 2, "{:?}", table.lines);
}

#[tokio::test]
async fn undecodable_records_are_shown_and_the_tail_follows_from_the_end() {
    let stack = Stack::get();
    let topic = format!("tail-test-{}", Uuid::now_v7());
    stack.create_topic(&topic, 1).await;
    let producer: FutureProducer = stack.kafka_config().create().expect("producer");
    let send = |key: Option<String>, value: Option<String>| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let mut record = FutureRecord::<String, String>::to(&topic);
            if let Some(k) = &key {
                record = record.key(k);
            }
            if let Some(v) = &value {
                record = record.payload(v);
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    };
    let id = Uuid::now_v7().to_string();
    let key = json!({ "id": id }).to_string();
    let row = json!({"id": id, "status": "pending", "stripe_payment_intent_id": null,
        "idempotency_key": "k", "amount": 700, "currency": "eur", "version": 1,
        "created_at": "2026-12-02T10:00:00Z", "resolution_source": null, "attention": null});
    let envelope = json!({"before": null, "after": row, "op": "c", "ts_ms": 1,
        "source": {"lsn": 5, "ts_ms": 1_764_669_600_000_i64}})
    .to_string();
    send(Some(key.clone()), Some("{\"not\": \"an envelope\"}".into())).await;
    send(Some(key.clone()), Some(envelope)).await;
    send(Some(key.clone()), None).await;
    send(None, Some("no key".into())).await;

    let own = |extra: &[&str]| {
        let mut args = vec!["cdc", "--cdc-topic", &topic];
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let args = own(&[
        "--from-beginning",
        "--format",
        "json",
        "--timeout-secs",
        "3",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = tail(stack, &args, Duration::from_secs(60)).await;
    let lines = t.json();
    let kinds: Vec<(&str, Option<&str>)> = lines
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["op"].as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("undecodable", None),
            ("payment_change", Some("insert")),
            ("payment_change", Some("tombstone")),
            ("undecodable", None)
        ],
        "{}",
        t.lines.join("\n")
    );
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a Debezium envelope")
            && lines[0]["key"] == json!(key),
        "{}",
        lines[0]
    );
    assert_eq!(lines[3]["error"], "record has no key");
    assert_eq!(
        (&lines[1]["amount"], &lines[1]["currency"], &lines[1]["lsn"]),
        (&json!(700), &json!("eur"), &json!(5))
    );
    assert!(t.log.contains("tail: 4 shown, 4 read"), "{}", t.log);
    committed_nothing(stack, &topic, &t.group());

    // --payment keeps the undecodable record keyed by the payment, drops the keyless one.
    let args = own(&["--from-beginning", "--timeout-secs", "3", "--payment", &id]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = tail(stack, &args, Duration::from_secs(60)).await;
    assert_eq!(t.lines.len(), 4, "a header and 3 records: {:?}", t.lines);
    assert!(
        t.lines[1].contains("UNDECODABLE") && t.lines[1].contains("not a Debezium envelope"),
        "{}",
        t.lines[1]
    );
    assert!(
        t.lines[2].contains("insert") && t.lines[2].contains("700 eur"),
        "{}",
        t.lines[2]
    );

    // --max stops at once, whatever the timeout.
    let args = own(&["--from-beginning", "--max", "1", "--timeout-secs", "600"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = tail(stack, &args, Duration::from_secs(60)).await;
    assert_eq!(t.lines.len(), 2, "{:?}", t.lines);

    // From the end: nothing old; what comes after it starts is printed.
    let args = own(&["--format", "json", "--max", "1", "--timeout-secs", "60"]);
    let mut child = tail_command(stack, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn paystream tail");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let banner = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
        .await
        .expect("the tail starts")
        .expect("stderr")
        .expect("a banner");
    assert!(banner.contains("from the end"), "{banner}");
    let later = Uuid::now_v7().to_string();
    send(
        Some(json!({ "id": later }).to_string()),
        Some("late garbage".into()),
    )
    .await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the tail stops after --max 1")
        .expect("output");
    assert!(out.status.success(), "{}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(
        (&lines[0]["kind"], &lines[0]["offset"]),
        (&json!("undecodable"), &json!(4)),
        "{stdout}"
    );
    assert!(
        lines[0]["key"].as_str().unwrap().contains(&later),
        "{stdout}"
    );
}
