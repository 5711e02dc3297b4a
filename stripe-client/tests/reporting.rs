//! The Reporting API through `StripeApi` against stripe-sim: a run of the itemized
//! balance changes, polled until done, its CSV streamed to a file, and Stripe's refusals
//! mapped as every other call's.

use std::path::PathBuf;
use std::time::Duration;

use paystream_core::gateway::{GatewayError, ReportRun, StripeReporting};
use paystream_stripe::StripeApi;
use serde_json::{Value, json};

const KEY: &str = "sk_test_reporting";
const ITEMIZED_2: &str = "balance_change_from_activity.itemized.2";
const COLUMNS: [&str; 7] = [
    "balance_transaction_id",
    "created",
    "currency",
    "gross",
    "reporting_category",
    "payment_intent_id",
    "payment_metadata[payment_id]",
];

struct Sim {
    _sim: stripe_sim::Sim,
    base: String,
    http: reqwest::Client,
    api: StripeApi,
}

impl Sim {
    async fn start() -> Sim {
        let (sim, base) = stripe_sim::spawn_ephemeral().await.unwrap();
        let api = StripeApi::new(&base, KEY, Duration::from_secs(5)).unwrap();
        Sim {
            _sim: sim,
            base,
            http: reqwest::Client::new(),
            api,
        }
    }

    /// The sim's clock, in unix seconds.
    async fn now_s(&self) -> i64 {
        let v: Value = self
            .http
            .get(format!("{}/_sim/clock", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["now_ms"].as_i64().unwrap().div_euclid(1000)
    }

    async fn advance(&self, seconds: i64) {
        let res = self
            .http
            .post(format!("{}/_sim/clock/advance", self.base))
            .json(&json!({ "seconds": seconds }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }

    /// A succeeded card payment with our id in its metadata; its intent's id.
    async fn pay(&self, amount: &str, payment_id: &str) -> String {
        let v: Value = self
            .http
            .post(format!("{}/v1/payment_intents", self.base))
            .bearer_auth(KEY)
            .form(&[
                ("amount", amount),
                ("currency", "usd"),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
                ("metadata[payment_id]", payment_id),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "succeeded", "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    /// Polls the run, as a client of Stripe must, until it is no longer pending.
    async fn finished(&self, id: &str) -> ReportRun {
        for _ in 0..200 {
            let run = self.api.report_run(id).await.unwrap();
            if run.status != "pending" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {id} still pending");
    }
}

/// A file in the temp dir no other test (or run) writes, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        TempFile(std::env::temp_dir().join(format!(
            "paystream-{what}-{}-{nanos}.csv",
            std::process::id()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn a_run_is_polled_until_done_and_its_file_streamed_to_disk() {
    let t = Sim::start().await;
    let start = t.now_s().await;
    let a = t.pay("1250", "pay_a").await;
    let b = t.pay("2000", "pay_b").await;
    // Data is final only up to now: the interval must end after the payments.
    t.advance(5).await;

    let now = t.now_s().await;
    let available = t.api.report_availability(ITEMIZED_2).await.unwrap();
    assert!(
        available.start <= start && available.start <= now && now <= available.end,
        "{available:?} does not cover {start}..={now}"
    );

    let created = t
        .api
        .start_report_run(ITEMIZED_2, start, available.end, &COLUMNS)
        .await
        .unwrap();
    assert_eq!(
        (created.status.as_str(), &created.file_url),
        ("pending", &None),
        "{created:?}"
    );
    assert!(created.id.starts_with("frr_"), "{created:?}");
    let done = t.finished(&created.id).await;
    assert_eq!(
        (done.status.as_str(), &done.error),
        ("succeeded", &None),
        "{done:?}"
    );
    let url = done.file_url.expect("a succeeded run has a file");

    let file = TempFile::new("report");
    let size = t.api.download_file(&url, &file.0).await.unwrap();
    let csv = std::fs::read_to_string(&file.0).unwrap();
    assert_eq!(size, csv.len() as u64);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(COLUMNS.join(",").as_str()));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let col = |name: &str| COLUMNS.iter().position(|c| *c == name).unwrap();
    let pick = |name: &str| -> Vec<&str> { rows.iter().map(|r| r[col(name)]).collect() };
    assert_eq!(pick("reporting_category"), ["charge", "charge"], "{csv}");
    assert_eq!(pick("payment_intent_id"), [a.as_str(), b.as_str()]);
    assert_eq!(pick("payment_metadata[payment_id]"), ["pay_a", "pay_b"]);
    assert_eq!(pick("gross"), ["12.50", "20.00"]);
    assert_eq!(pick("currency"), ["usd", "usd"]);
}

#[tokio::test]
async fn stripes_refusals_map_to_gateway_errors() {
    let t = Sim::start().await;
    let start = t.now_s().await;
    t.pay("1000", "pay_x").await;
    t.advance(5).await;
    let end = t.now_s().await;

    match t
        .api
        .start_report_run("balance.summary.9", start, end, &COLUMNS)
        .await
    {
        Err(GatewayError::Rejected { status: 400, .. }) => {}
        other => panic!("an unknown report type: {other:?}"),
    }
    assert_eq!(
        t.api.report_availability("balance.summary.9").await,
        Err(GatewayError::NotFound)
    );
    assert_eq!(
        t.api.report_run("frr_nope").await,
        Err(GatewayError::NotFound)
    );

    let file = TempFile::new("missing");
    let missing = format!("{}/v1/files/file_nope/contents", t.base);
    assert_eq!(
        t.api.download_file(&missing, &file.0).await,
        Err(GatewayError::NotFound)
    );
    assert!(!file.0.exists(), "nothing is written for a failed download");
}

#[tokio::test]
async fn the_key_is_never_sent_outside_stripe() {
    let t = Sim::start().await;
    // Another origin than the API's, even on the same host: refused before any request.
    let foreign = TempFile::new("foreign");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = format!(
        "http://{}/v1/files/file_1/contents",
        listener.local_addr().unwrap()
    );
    match t.api.download_file(&elsewhere, &foreign.0).await {
        Err(GatewayError::Rejected { code, .. }) => assert_eq!(code, "file_url_not_stripe"),
        other => panic!("a foreign url: {other:?}"),
    }
    assert!(!foreign.0.exists());
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "no connection was even opened"
    );
}
