//! The Reporting API for itemized balance changes: balance transactions booked by
//! payments and refunds, report runs that finish in the background, their CSV files as
//! Stripe writes them, Stripe's refusals, and async-stripe's models parsing every object.

mod common;

use std::time::Duration;

use common::{KEY, TestSim};
use serde_json::{Value, json};

const ITEMIZED_1: &str = "balance_change_from_activity.itemized.1";
const ITEMIZED_2: &str = "balance_change_from_activity.itemized.2";

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

async fn now_s(t: &TestSim) -> i64 {
    let v = t
        .control(reqwest::Method::GET, "/_sim/clock", Value::Null)
        .await;
    v["now_ms"].as_i64().unwrap().div_euclid(1000)
}

/// A succeeded card payment with our id in its metadata.
async fn pay(t: &TestSim, amount: &str, currency: &str, payment_id: &str) -> Value {
    let (status, _, v) = t
        .post(
            "/v1/payment_intents",
            &[
                ("amount", amount),
                ("currency", currency),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
                ("description", "Order 7, blue"),
                ("metadata[payment_id]", payment_id),
            ],
            None,
        )
        .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("succeeded")),
        "{v}"
    );
    v
}

async fn refund(t: &TestSim, pi: &str, amount: &str, refund_id: &str) -> Value {
    let (status, _, v) = t
        .post(
            "/v1/refunds",
            &[
                ("payment_intent", pi),
                ("amount", amount),
                ("metadata[refund_id]", refund_id),
            ],
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Creates a run over `[start, end)`; asserts it is answered `pending`.
async fn run(
    t: &TestSim,
    report_type: &str,
    start: i64,
    end: i64,
    extra: &[(&str, &str)],
) -> Value {
    let (start, end) = (start.to_string(), end.to_string());
    let mut form = vec![
        ("report_type", report_type),
        ("parameters[interval_start]", start.as_str()),
        ("parameters[interval_end]", end.as_str()),
    ];
    form.extend_from_slice(extra);
    let (status, _, v) = t.post("/v1/reporting/report_runs", &form, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["status"], &v["result"], &v["succeeded_at"]),
        (&json!("pending"), &Value::Null, &Value::Null),
        "a run is never done within its create request: {v}"
    );
    v
}

/// Polls the run, as a client of Stripe must, until it is no longer pending.
async fn finished(t: &TestSim, run: &Value) -> Value {
    let path = format!("/v1/reporting/report_runs/{}", id(run));
    for _ in 0..200 {
        let (status, v) = t.get(&path).await;
        assert_eq!(status, 200, "{v}");
        if v["status"] != "pending" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {} still pending", id(run));
}

/// The run's file, downloaded from its `url` with the secret key: (content type, rows).
async fn download(t: &TestSim, run: &Value) -> (String, Vec<String>) {
    assert_eq!(run["status"], "succeeded", "{run}");
    let url = run["result"]["url"].as_str().expect("a result url");
    let res = t.http.get(url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    let body = res.text().await.unwrap();
    assert_eq!(
        body.len() as u64,
        run["result"]["size"].as_u64().unwrap(),
        "size is the file's"
    );
    (kind, body.lines().map(str::to_owned).collect())
}

/// A CSV line's fields (the sim quotes free text; these tests split quoted fields too).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[tokio::test]
async fn a_run_itemizes_payments_and_refunds_with_ids_a_reconciler_maps() {
    let t = common::start().await;
    let start = now_s(&t).await;
    let a = pay(&t, "1250", "usd", "pay_a").await;
    let b = pay(&t, "2000", "usd", "pay_b").await;
    let c = pay(&t, "5000", "jpy", "pay_c").await;
    let re = refund(&t, &id(&b), "500", "ref_1").await;

    // Every capture and refund is booked, and the charge names its balance transaction.
    let ch = a["latest_charge"].as_str().unwrap();
    let (_, charge) = t.get(&format!("/v1/charges/{ch}")).await;
    let txn = charge["balance_transaction"].as_str().expect("linked");
    let (status, bt) = t.get(&format!("/v1/balance_transactions/{txn}")).await;
    assert_eq!(status, 200, "{bt}");
    assert_eq!(
        (
            &bt["amount"],
            &bt["fee"],
            &bt["net"],
            &bt["type"],
            &bt["source"]
        ),
        (
            &json!(1250),
            &json!(66),
            &json!(1184),
            &json!("charge"),
            &json!(ch)
        )
    );
    assert_eq!(
        bt["status"], "pending",
        "card funds are available two days later"
    );
    let (_, listed) = t.get("/v1/balance_transactions?limit=2").await;
    assert_eq!(listed["data"][0]["id"], re["balance_transaction"]);
    assert_eq!(listed["data"][0]["amount"], -500);
    assert_eq!(listed["has_more"], true);

    // An interval ends no later than now: data is final only up to now.
    t.advance(5).await;
    let end = now_s(&t).await;
    let columns = [
        "balance_transaction_id",
        "created_utc",
        "created",
        "available_on_utc",
        "available_on",
        "currency",
        "gross",
        "fee",
        "net",
        "reporting_category",
        "source_id",
        "description",
        "charge_id",
        "payment_intent_id",
        "payment_metadata[payment_id]",
        "refund_metadata[refund_id]",
    ];
    let extra: Vec<(&str, &str)> = columns
        .iter()
        .map(|c| ("parameters[columns][]", *c))
        .collect();
    let created = run(&t, ITEMIZED_2, start, end, &extra).await;
    assert_eq!(
        created["parameters"],
        json!({"interval_start": start, "interval_end": end, "columns": columns})
    );
    let done = finished(&t, &created).await;
    assert_eq!(done["result"]["purpose"], "finance_report_run");
    assert_eq!(done["result"]["type"], "csv");
    assert!(done["succeeded_at"].as_i64().unwrap() >= done["created"].as_i64().unwrap());
    let (kind, lines) = download(&t, &done).await;
    assert!(kind.starts_with("text/csv"), "{kind}");
    assert_eq!(lines[0], columns.join(","));
    let rows: Vec<Vec<String>> = lines[1..].iter().map(|l| fields(l)).collect();
    assert_eq!(rows.len(), 4, "{lines:?}");
    let col = |name: &str| columns.iter().position(|c| *c == name).unwrap();
    let pick = |name: &str| -> Vec<&str> { rows.iter().map(|r| r[col(name)].as_str()).collect() };
    assert_eq!(
        pick("reporting_category"),
        ["charge", "charge", "charge", "refund"]
    );
    assert_eq!(pick("currency"), ["usd", "usd", "jpy", "usd"]);
    // Major units, as Stripe writes them: cents with two decimals, yen whole.
    assert_eq!(pick("gross"), ["12.50", "20.00", "5000", "-5.00"]);
    assert_eq!(pick("fee"), ["0.66", "0.88", "180", "0.00"]);
    assert_eq!(pick("net"), ["11.84", "19.12", "4820", "-5.00"]);
    let (pa, pb, pc) = (id(&a), id(&b), id(&c));
    assert_eq!(pick("payment_intent_id"), [&pa, &pb, &pc, &pb]);
    assert_eq!(
        pick("payment_metadata[payment_id]"),
        ["pay_a", "pay_b", "pay_c", "pay_b"]
    );
    assert_eq!(pick("refund_metadata[refund_id]"), ["", "", "", "ref_1"]);
    assert_eq!(pick("source_id")[3], id(&re));
    assert_eq!(pick("charge_id")[0], ch);
    assert_eq!(pick("balance_transaction_id")[0], txn);
    assert_eq!(pick("balance_transaction_id")[3], re["balance_transaction"]);
    assert_eq!(pick("description")[0], "Order 7, blue");
    assert_eq!(pick("description")[3], "REFUND FOR CHARGE (Order 7, blue)");
    let created_utc = pick("created_utc")[0];
    assert_eq!(
        created_utc.len(),
        "2026-12-02 07:30:00".len(),
        "{created_utc}"
    );
    assert_eq!(pick("created")[0], created_utc, "no timezone: local is UTC");

    // Default columns, and the filters Stripe documents.
    let default = finished(&t, &run(&t, ITEMIZED_1, start, end, &[]).await).await;
    let (_, lines) = download(&t, &default).await;
    assert_eq!(
        lines[0],
        "balance_transaction_id,created_utc,available_on_utc,currency,gross,fee,net,reporting_category,description"
    );
    assert_eq!(lines.len(), 5);
    assert!(default["parameters"].get("columns").is_none());
    let yen = run(
        &t,
        ITEMIZED_1,
        start,
        end,
        &[("parameters[currency]", "jpy")],
    )
    .await;
    let (_, lines) = download(&t, &finished(&t, &yen).await).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains(",jpy,5000,180,4820,charge,"), "{lines:?}");
    let refunds = run(
        &t,
        ITEMIZED_1,
        start,
        end,
        &[("parameters[reporting_category]", "refund")],
    )
    .await;
    let (_, lines) = download(&t, &finished(&t, &refunds).await).await;
    assert_eq!(lines.len(), 2, "{lines:?}");

    // An interval with nothing in it: the header alone.
    t.advance(10).await;
    let empty = finished(&t, &run(&t, ITEMIZED_1, end, end + 5, &[]).await).await;
    let (_, lines) = download(&t, &empty).await;
    assert_eq!(lines.len(), 1, "{lines:?}");

    // The list, newest first; the file by id; its contents need the key.
    let (_, list) = t.get("/v1/reporting/report_runs?limit=2").await;
    assert_eq!(list["data"][0]["id"], empty["id"]);
    assert_eq!(list["has_more"], true);
    let file = empty["result"]["id"].as_str().unwrap();
    let (status, f) = t.get(&format!("/v1/files/{file}")).await;
    assert_eq!((status, &f), (200, &empty["result"]));
    let anonymous = t
        .http
        .get(empty["result"]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, missing) = t.get("/v1/files/file_nope/contents").await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (404, &json!("resource_missing"))
    );
}

#[tokio::test]
async fn captures_and_refund_failures_are_booked_when_they_happen() {
    let t = common::start().await;
    let start = now_s(&t).await;
    // A held authorization moves no money until its (partial) capture.
    let held = t.paid("3000", "pm_card_visa", true).await;
    let (_, ch) = t
        .get(&format!(
            "/v1/charges/{}",
            held["latest_charge"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ch["balance_transaction"], Value::Null);
    let (status, _, _) = t
        .post(
            &format!("/v1/payment_intents/{}/capture", id(&held)),
            &[("amount_to_capture", "1000")],
            None,
        )
        .await;
    assert_eq!(status, 200);
    // A refund to a card that fails it: the money comes back two days later.
    let failing = t.paid("4000", "pm_card_refundFail", false).await;
    let re = refund(&t, &id(&failing), "4000", "ref_f").await;
    t.advance(2 * 86_400 + 5).await;
    let failed = t
        .get_until(&format!("/v1/refunds/{}", id(&re)), |v| {
            v["status"] == "failed"
        })
        .await;
    assert_eq!(failed["status"], "failed");
    // The failure is dated now; an interval ending now leaves it for the next one.
    t.advance(1).await;
    let end = now_s(&t).await;
    let extra = [
        ("parameters[columns][]", "reporting_category"),
        ("parameters[columns][]", "gross"),
        ("parameters[columns][]", "net"),
        ("parameters[columns][]", "source_id"),
        ("parameters[columns][]", "balance_transaction_id"),
    ];
    let done = finished(&t, &run(&t, ITEMIZED_2, start, end, &extra).await).await;
    let (_, lines) = download(&t, &done).await;
    let fb = failed["failure_balance_transaction"].as_str().unwrap();
    let booked = |ch: &Value| {
        let ch = ch["latest_charge"].as_str().unwrap().to_owned();
        let t = &t;
        async move {
            let (_, c) = t.get(&format!("/v1/charges/{ch}")).await;
            format!("{ch},{}", c["balance_transaction"].as_str().unwrap())
        }
    };
    let (re_id, re_txn) = (id(&re), re["balance_transaction"].as_str().unwrap());
    assert_eq!(
        lines[1..],
        [
            format!("charge,10.00,9.41,{}", booked(&held).await),
            format!("charge,40.00,38.54,{}", booked(&failing).await),
            format!("refund,-40.00,-40.00,{re_id},{re_txn}"),
            format!("refund_failure,40.00,40.00,{re_id},{fb}"),
        ],
        "{lines:?}"
    );
    let (_, bt) = t.get(&format!("/v1/balance_transactions/{fb}")).await;
    assert_eq!(
        (&bt["type"], &bt["amount"]),
        (&json!("refund_failure"), &json!(4000))
    );
}

#[tokio::test]
async fn bad_runs_get_stripes_error_shape() {
    let t = common::start().await;
    t.paid("1000", "pm_card_visa", false).await;
    t.advance(5).await;
    let now = now_s(&t).await;
    let (s, e) = (now - 60, now.to_string());
    let s = s.to_string();
    let refused = |form: Vec<(&'static str, String)>| {
        let t = &t;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, _, v) = t.post("/v1/reporting/report_runs", &form, None).await;
            assert_eq!(status, 400, "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            v["error"].clone()
        }
    };
    let unknown = refused(vec![
        ("report_type", "balance.summary.9".into()),
        ("parameters[interval_start]", s.clone()),
        ("parameters[interval_end]", e.clone()),
    ])
    .await;
    assert_eq!(unknown["param"], "report_type");
    let missing = refused(vec![
        ("report_type", ITEMIZED_1.into()),
        ("parameters[interval_end]", e.clone()),
    ])
    .await;
    assert_eq!(
        (&missing["param"], &missing["code"]),
        (
            &json!("parameters[interval_start]"),
            &json!("parameter_missing")
        )
    );
    let missing_type = refused(vec![("parameters[interval_end]", e.clone())]).await;
    assert_eq!(missing_type["param"], "report_type");
    let future = refused(vec![
        ("report_type", ITEMIZED_1.into()),
        ("parameters[interval_start]", s.clone()),
        ("parameters[interval_end]", (now + 3600).to_string()),
    ])
    .await;
    assert_eq!(future["param"], "parameters[interval_end]");
    let backwards = refused(vec![
        ("report_type", ITEMIZED_1.into()),
        ("parameters[interval_start]", e.clone()),
        ("parameters[interval_end]", s.clone()),
    ])
    .await;
    assert_eq!(backwards["param"], "parameters[interval_start]");
    let column = refused(vec![
        ("report_type", ITEMIZED_1.into()),
        ("parameters[interval_start]", s.clone()),
        ("parameters[interval_end]", e.clone()),
        ("parameters[columns][]", "gross".into()),
        ("parameters[columns][]", "favourite_colour".into()),
    ])
    .await;
    assert_eq!(column["param"], "parameters[columns]");
    let not_a_number = refused(vec![
        ("report_type", ITEMIZED_1.into()),
        ("parameters[interval_start]", "yesterday".into()),
        ("parameters[interval_end]", e.clone()),
    ])
    .await;
    assert_eq!(not_a_number["param"], "parameters[interval_start]");
    let unknown_param = refused(vec![
        ("report_type", ITEMIZED_1.into()),
        ("parameters[interval_start]", s.clone()),
        ("parameters[interval_end]", e.clone()),
        ("parameters[timezone]", "Europe/Paris".into()),
    ])
    .await;
    assert_eq!(unknown_param["param"], "parameters[timezone]");

    let (status, v) = t.get("/v1/reporting/report_runs/frr_nope").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("resource_missing"))
    );
    let (status, v) = t.get("/v1/reporting/report_types/nope.1").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("resource_missing"))
    );
}

#[tokio::test]
async fn report_types_say_which_data_is_available() {
    let t = common::start().await;
    t.paid("1000", "pm_card_visa", false).await;
    let (status, v) = t
        .get(&format!("/v1/reporting/report_types/{ITEMIZED_2}"))
        .await;
    assert_eq!(status, 200, "{v}");
    let now = now_s(&t).await;
    let (start, end) = (
        v["data_available_start"].as_i64().unwrap(),
        v["data_available_end"].as_i64().unwrap(),
    );
    assert_eq!(start % 86_400, 0, "from the first transaction's UTC day");
    assert!(start <= now && end <= now && now - end < 5, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["default_columns"][0], "balance_transaction_id");
}

/// async-stripe's own models parse every object of the Reporting API as the sim renders it.
#[tokio::test]
async fn async_stripe_parses_runs_files_types_and_balance_transactions() {
    let t = common::start().await;
    let start = now_s(&t).await;
    let pi = t.paid("1250", "pm_card_visa", false).await;
    t.advance(5).await;
    let end = now_s(&t).await;
    let created = run(
        &t,
        ITEMIZED_2,
        start,
        end,
        &[
            ("parameters[columns][]", "balance_transaction_id"),
            ("parameters[columns][]", "payment_intent_id"),
            ("parameters[currency]", "usd"),
        ],
    )
    .await;
    let pending: stripe_misc::ReportingReportRun =
        miniserde::json::from_str(&created.to_string()).expect("a pending run parses");
    assert_eq!(pending.status, "pending");
    assert!(pending.result.is_none());
    let done = finished(&t, &created).await;
    let run: stripe_misc::ReportingReportRun =
        miniserde::json::from_str(&done.to_string()).expect("a succeeded run parses");
    assert_eq!(run.id.as_str(), id(&done));
    assert_eq!(run.report_type, ITEMIZED_2);
    assert_eq!(run.parameters.interval_start, Some(start));
    assert_eq!(run.parameters.interval_end, Some(end));
    assert_eq!(
        run.parameters.columns.as_deref(),
        Some(
            &[
                "balance_transaction_id".to_owned(),
                "payment_intent_id".to_owned()
            ][..]
        )
    );
    assert_eq!(run.parameters.currency, Some(stripe_types::Currency::USD));
    let file = run.result.expect("a result");
    assert_eq!(file.purpose, stripe_shared::FilePurpose::FinanceReportRun);
    assert_eq!(file.type_.as_deref(), Some("csv"));
    assert!(file.size > 0);
    let (_, f) = t.get(&format!("/v1/files/{}", file.id.as_str())).await;
    let parsed: stripe_shared::File =
        miniserde::json::from_str(&f.to_string()).expect("a file parses");
    assert_eq!(parsed.url, file.url);

    let (_, rt) = t
        .get(&format!("/v1/reporting/report_types/{ITEMIZED_2}"))
        .await;
    let rt: stripe_misc::ReportingReportType =
        miniserde::json::from_str(&rt.to_string()).expect("a report type parses");
    assert_eq!(rt.version, 2);

    let (_, ch) = t
        .get(&format!(
            "/v1/charges/{}",
            pi["latest_charge"].as_str().unwrap()
        ))
        .await;
    let (_, bt) = t
        .get(&format!(
            "/v1/balance_transactions/{}",
            ch["balance_transaction"].as_str().unwrap()
        ))
        .await;
    let bt: stripe_shared::BalanceTransaction =
        miniserde::json::from_str(&bt.to_string()).expect("a balance transaction parses");
    assert_eq!((bt.amount, bt.fee, bt.net), (1250, 66, 1184));
    assert_eq!(bt.type_, stripe_shared::BalanceTransactionType::Charge);
    let charge: stripe_shared::Charge =
        miniserde::json::from_str(&ch.to_string()).expect("a charge parses");
    assert!(charge.balance_transaction.is_some());
}

// --- POST /_sim/ledger: balance transactions seeded in bulk, with no intents behind them.

const SEEDED_COLUMNS: [&str; 7] = [
    "balance_transaction_id",
    "created",
    "currency",
    "gross",
    "reporting_category",
    "payment_intent_id",
    "payment_metadata[payment_id]",
];

/// A sim-shaped intent id, as one the sim would have made.
const PI_A: &str = "pi_AAAAAAAAAAAAAAAAAAAAAAA1";

async fn seed(t: &TestSim, body: Value) -> (u16, Value) {
    let res = t
        .http
        .post(format!("{}/_sim/ledger", t.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

fn charge(payment_id: &str, pi: &str, amount: i64, currency: &str, created: i64) -> Value {
    json!({
        "payment_id": payment_id,
        "payment_intent": pi,
        "amount": amount,
        "currency": currency,
        "created": created,
    })
}

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The rows of a finished run over `[start, end)` with `columns`, header dropped.
async fn report(t: &TestSim, start: i64, end: i64, columns: &[&str]) -> Vec<Vec<String>> {
    let extra: Vec<(&str, &str)> = columns
        .iter()
        .map(|c| ("parameters[columns][]", *c))
        .collect();
    let r = run(t, ITEMIZED_2, start, end, &extra).await;
    let r = finished(t, &r).await;
    let (_, lines) = download(t, &r).await;
    assert_eq!(lines[0], columns.join(","));
    lines[1..].iter().map(|l| fields(l)).collect()
}

#[tokio::test]
async fn seeded_charges_report_as_captured_charges_with_their_ids() {
    let t = common::start().await;
    let now = now_s(&t).await;
    let t0 = now - 3600;
    let (status, v) = seed(
        &t,
        json!({"charges": [
            charge(&uuid(1), PI_A, 1250, "usd", t0),
            // Another shape of intent id (a benchmark's own), and a UUID in capitals.
            charge("0F8FAD5B-D9CB-469F-A165-70867728950E", "pi_bench_2", 2000, "EUR", t0 + 1),
            charge(&uuid(3), "pi_bench_3", 5000, "jpy", t0 + 2),
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"booked": 3, "balance_transactions": 3}));

    let rows = report(&t, t0, now, &SEEDED_COLUMNS).await;
    let expected = [
        ("usd", "12.50", PI_A, uuid(1)),
        (
            "eur",
            "20.00",
            "pi_bench_2",
            "0f8fad5b-d9cb-469f-a165-70867728950e".to_owned(),
        ),
        ("jpy", "5000", "pi_bench_3", uuid(3)),
    ];
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, (currency, gross, pi, payment_id)) in rows.iter().zip(&expected) {
        assert!(row[0].starts_with("txn_"), "{row:?}");
        assert_eq!(
            &row[2..],
            [*currency, *gross, "charge", *pi, payment_id.as_str()],
            "{row:?}"
        );
    }
    assert!(
        rows[0][1] < rows[1][1] && rows[1][1] < rows[2][1],
        "{rows:?}"
    );

    // Booked as a captured charge is: fee, net, funds available two days later, a charge.
    let (status, bt) = t
        .get(&format!("/v1/balance_transactions/{}", rows[0][0]))
        .await;
    assert_eq!(status, 200, "{bt}");
    assert_eq!(
        (
            &bt["amount"],
            &bt["fee"],
            &bt["net"],
            &bt["type"],
            &bt["created"]
        ),
        (
            &json!(1250),
            &json!(66),
            &json!(1184),
            &json!("charge"),
            &json!(t0)
        )
    );
    assert_eq!(bt["available_on"], t0 + 2 * 86_400);
    assert!(bt["source"].as_str().unwrap().starts_with("ch_"), "{bt}");
    let (_, jpy) = t
        .get(&format!("/v1/balance_transactions/{}", rows[2][0]))
        .await;
    assert_eq!((&jpy["fee"], &jpy["net"]), (&json!(180), &json!(4820)));

    // A reset forgets them.
    t.control(reqwest::Method::POST, "/_sim/reset", json!({}))
        .await;
    let (_, listed) = t.get("/v1/balance_transactions").await;
    assert_eq!(listed["data"], json!([]));
}

#[tokio::test]
async fn seeded_rows_are_kept_in_created_order_whatever_order_they_come_in() {
    let t = common::start().await;
    // A real payment first: seeded rows days older must still be found and reported.
    pay(&t, "1000", "usd", "pay_real").await;
    let now = now_s(&t).await;
    let t0 = now - 3 * 86_400;
    let batch = |times: &[i64], from: u32| {
        let charges: Vec<Value> = times
            .iter()
            .zip(from..)
            .map(|(dt, n)| charge(&uuid(n), PI_A, 100 + i64::from(n), "usd", t0 + dt))
            .collect();
        json!({ "charges": charges })
    };
    assert_eq!(seed(&t, batch(&[30, 10, 20], 1)).await.0, 200);
    let (status, v) = seed(&t, batch(&[5, 15, 25], 4)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"booked": 3, "balance_transactions": 7}));

    let (_, listed) = t.get("/v1/balance_transactions?limit=100").await;
    let created: Vec<i64> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["created"].as_i64().unwrap())
        .collect();
    assert_eq!(created.len(), 7);
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
    assert_eq!(&created[1..], [30, 25, 20, 15, 10, 5].map(|d| t0 + d));

    // The first seeded row's day is where the data starts now.
    let (_, rt) = t
        .get(&format!("/v1/reporting/report_types/{ITEMIZED_2}"))
        .await;
    let first = t0 + 5;
    assert_eq!(rt["data_available_start"], first - first.rem_euclid(86_400));

    // `[t0 + 10, t0 + 21)`: exactly the rows at 10, 15 and 20, in order.
    let rows = report(&t, t0 + 10, t0 + 21, &SEEDED_COLUMNS).await;
    let ids: Vec<&str> = rows.iter().map(|r| r[6].as_str()).collect();
    assert_eq!(ids, [uuid(2), uuid(5), uuid(3)]);
    let gross: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(gross, ["1.02", "1.05", "1.03"]);
}

#[tokio::test]
async fn bad_seeds_are_refused_whole_naming_the_entry() {
    let t = common::start().await;
    let now = now_s(&t).await;
    let good = charge(&uuid(1), PI_A, 1250, "usd", now - 10);
    let refused = [
        (
            json!({"charges": [good, {"payment_id": uuid(2), "payment_intent": PI_A, "amount": "12", "currency": "usd", "created": now}]}),
            "charges[1].amount",
        ),
        (
            json!({"charges": [good, charge("pay_2", PI_A, 1, "usd", now)]}),
            "charges[1].payment_id",
        ),
        (
            json!({"charges": [charge(&uuid(1), "ch_1", 1, "usd", now)]}),
            "charges[0].payment_intent",
        ),
        (
            json!({"charges": [charge(&uuid(1), PI_A, 0, "usd", now)]}),
            "charges[0].amount",
        ),
        (
            json!({"charges": [charge(&uuid(1), PI_A, 1, "dollars", now)]}),
            "charges[0].currency",
        ),
        (
            json!({"charges": [charge(&uuid(1), PI_A, 1, "usd", now + 3600)]}),
            "charges[0].created",
        ),
        (
            json!({"charges": [{"payment_id": uuid(1), "payment_intent": PI_A, "amount": 1, "currency": "usd"}]}),
            "charges[0].created: missing",
        ),
        (
            json!({"charges": [good], "refunds": [{"refund_id": uuid(9), "payment_intent": "pi_other", "payment_id": uuid(1), "amount": 1, "currency": "usd", "created": now}]}),
            "refunds[0].payment_intent",
        ),
        (
            json!({"charges": [good], "refunds": [{"refund_id": uuid(9), "payment_intent": PI_A, "payment_id": uuid(1), "amount": 1, "currency": "eur", "created": now}]}),
            "refunds[0].currency",
        ),
        (json!({"charges": [good], "payments": []}), "unknown field"),
    ];
    for (body, names) in refused {
        let (status, v) = seed(&t, body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(names), "{names}: {msg}");
    }
    let many: Vec<Value> = (0..20_001).map(|_| good.clone()).collect();
    let (status, v) = seed(&t, json!({ "charges": many })).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 20000 per request"),
        "{v}"
    );
    let (_, listed) = t.get("/v1/balance_transactions").await;
    assert_eq!(listed["data"], json!([]), "nothing was booked");
}

#[tokio::test]
async fn seeded_refunds_report_as_refunds_of_their_charges() {
    let t = common::start().await;
    let now = now_s(&t).await;
    let t0 = now - 600;
    let (status, v) = seed(
        &t,
        json!({"charges": [charge(&uuid(1), "pi_bench_1", 2000, "usd", t0)]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = seed(
        &t,
        json!({"refunds": [{
            "refund_id": uuid(7),
            "payment_intent": "pi_bench_1",
            "payment_id": uuid(1),
            "amount": 500,
            "currency": "usd",
            "created": t0 + 60,
        }]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let columns = [
        "reporting_category",
        "gross",
        "fee",
        "net",
        "source_id",
        "charge_id",
        "payment_intent_id",
        "payment_metadata[payment_id]",
        "refund_metadata[refund_id]",
    ];
    let rows = report(&t, t0, now, &columns).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][..4], ["charge", "20.00", "0.88", "19.12"]);
    assert_eq!(rows[0][6..], ["pi_bench_1", uuid(1).as_str(), ""]);
    assert_eq!(rows[1][..4], ["refund", "-5.00", "0.00", "-5.00"]);
    assert!(rows[1][4].starts_with("re_"), "{rows:?}");
    assert_eq!(
        rows[1][5], rows[0][5],
        "the refund names the charge it refunds"
    );
    assert_eq!(
        rows[1][6..],
        ["pi_bench_1", uuid(1).as_str(), uuid(7).as_str()]
    );
}
