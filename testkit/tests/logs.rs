//! One payment, end to end, in the services' JSON logs: every line that concerns a payment
//! carries its `payment_id` as a structured field, so one search across the logs shows the
//! API call and its Stripe call, the webhook's events and the published status update.
//! Against the running stack (`.stack/logs`); missing logs fail the test.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use serde_json::{Value, json};
use uuid::Uuid;

const LOGS: [&str; 4] = ["api-1", "api-2", "webhook", "reconciler"];

/// Where each service's log ends now: only what is written after is this test's.
fn log_ends(dir: &Path) -> HashMap<&'static str, u64> {
    LOGS.iter()
        .map(|name| {
            let len = std::fs::metadata(dir.join(format!("{name}.log")))
                .map(|m| m.len())
                .unwrap_or(0);
            (*name, len)
        })
        .collect()
}

/// The lines of `name`'s log written since `from` (all of it if the file was recreated).
fn lines_since(dir: &Path, name: &str, from: u64) -> Vec<String> {
    let path: PathBuf = dir.join(format!("{name}.log"));
    let Ok(mut f) = std::fs::File::open(&path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if len < from { 0 } else { from };
    f.seek(SeekFrom::Start(from)).expect("seek in a log");
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).expect("read a log");
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether the object carries `payment_id == id` as a field: at the top level (a flattened
/// event), in `fields`, in its current `span` or in any of its `spans`.
fn names_payment(line: &Value, id: &str) -> bool {
    let has = |v: &Value| v.get("payment_id").and_then(Value::as_str) == Some(id);
    has(line)
        || line.get("fields").is_some_and(has)
        || line.get("span").is_some_and(has)
        || line
            .get("spans")
            .and_then(Value::as_array)
            .is_some_and(|spans| spans.iter().any(has))
}

fn field<'a>(line: &'a Value, key: &str) -> Option<&'a str> {
    line.get(key)
        .or_else(|| line.get("fields").and_then(|f| f.get(key)))
        .and_then(Value::as_str)
}

/// Per service, the JSON lines written since `ends` that name payment `id`, with their raw
/// text. Every line is parsed; one that is not JSON fails the test.
fn payment_lines(
    dir: &Path,
    ends: &HashMap<&'static str, u64>,
    id: &str,
) -> HashMap<&'static str, Vec<(String, Value)>> {
    LOGS.iter()
        .map(|name| {
            let found = lines_since(dir, name, ends[name])
                .into_iter()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| {
                    let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| {
                        panic!("{name}.log holds a line that is not JSON ({e}): {l}")
                    });
                    names_payment(&v, id).then_some((l, v))
                })
                .collect();
            (*name, found)
        })
        .collect()
}

#[derive(Debug, Default)]
struct Seen {
    api_create: bool,
    api_stripe_call: bool,
    webhook_event: bool,
    published: bool,
}

fn seen(lines: &HashMap<&'static str, Vec<(String, Value)>>) -> Seen {
    let api = lines["api-1"].iter().chain(&lines["api-2"]);
    let mut s = Seen::default();
    for (_, v) in api {
        let msg = field(v, "message").unwrap_or_default();
        let in_create = v
            .get("span")
            .and_then(|sp| sp.get("route"))
            .and_then(Value::as_str)
            == Some("/v1/payments")
            && v.get("span")
                .and_then(|sp| sp.get("method"))
                .and_then(Value::as_str)
                == Some("POST");
        s.api_create |= in_create && msg == "request";
        // With the call's own time, to tell it from the database's in a slow request.
        s.api_stripe_call |= msg == "stripe call"
            && field(v, "operation") == Some("create_intent")
            && v.get("latency_us").and_then(Value::as_u64).is_some();
    }
    s.webhook_event = lines["webhook"].iter().any(|(_, v)| {
        field(v, "message") == Some("event processed") && field(v, "event_id").is_some()
    });
    s.published = lines["reconciler"].iter().any(|(_, v)| {
        field(v, "message") == Some("status update published")
            && field(v, "status") == Some("succeeded")
    });
    s
}

#[tokio::test]
async fn one_payment_is_followed_through_every_services_logs() {
    let stack = Stack::get();
    let dir = stack.root().join(".stack/logs");
    let ends = log_ends(&dir);
    let http = reqwest::Client::new();
    let api = stack.var("PAYSTREAM_API_URL");
    let key = stack.var("PAYSTREAM_CLIENT_KEY");

    let res = http
        .post(format!("{api}/v1/payments"))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("logs-{}", Uuid::now_v7()))
        .json(&json!({"amount": 2150, "currency": "usd", "description": "followed in the logs"}))
        .send()
        .await
        .expect("the API answers");
    let status = res.status();
    let payment: Value = res.json().await.expect("JSON");
    assert_eq!(status, 201, "create: {payment}");
    let id = payment["id"].as_str().expect("payment id").to_owned();
    let intent = payment["stripe_payment_intent_id"]
        .as_str()
        .expect("an intent")
        .to_owned();
    let client_secret = payment["client_secret"]
        .as_str()
        .expect("a client secret")
        .to_owned();

    // The customer pays at Stripe (stripe-sim), as the demo does.
    let confirmed = stack.pay(&intent, "pm_card_visa").await;
    assert_eq!(confirmed["status"], "succeeded", "confirm: {confirmed}");

    // Final through the API.
    if let Err(p) = stack
        .await_payment(&id, "succeeded", Duration::from_secs(30))
        .await
    {
        panic!("payment {id} is not final after 30 s: {p}");
    }

    // The logs catch up: the reconciler publishes after the CDC change reaches it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (lines, s) = loop {
        let lines = payment_lines(&dir, &ends, &id);
        let s = seen(&lines);
        if (s.api_create && s.api_stripe_call && s.webhook_event && s.published)
            || Instant::now() >= deadline
        {
            break (lines, s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let counts: HashMap<_, _> = lines.iter().map(|(k, v)| (*k, v.len())).collect();
    assert!(
        s.api_create,
        "no API log line of the create request carries payment_id {id} ({counts:?})"
    );
    assert!(
        s.api_stripe_call,
        "no API log line of the create_intent Stripe call carries payment_id {id} ({counts:?})"
    );
    assert!(
        s.webhook_event,
        "no webhook.log line of a processed event carries payment_id {id} ({counts:?})"
    );
    assert!(
        s.published,
        "no reconciler.log line of the published `succeeded` update carries payment_id {id} ({counts:?})"
    );
    let stripe_key = stack.var("STRIPE_SECRET_KEY");
    for (name, found) in &lines {
        for (raw, _) in found {
            assert!(
                !raw.contains(&client_secret),
                "{name}.log shows the client secret: {raw}"
            );
            assert!(
                !raw.contains(stripe_key),
                "{name}.log shows the Stripe secret key"
            );
        }
    }
    for (name, found) in &lines {
        eprintln!("{name}: {} lines with payment_id {id}", found.len());
        for (_, v) in found {
            eprintln!(
                "  {} {}",
                field(v, "level").unwrap_or_default(),
                field(v, "message").unwrap_or_default()
            );
        }
    }
}
