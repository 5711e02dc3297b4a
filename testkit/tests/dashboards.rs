//! The monitoring that `make up` runs, checked against the running stack:
//! - Prometheus scrapes every target of the stack and holds all the alert rules, and
//!   Alertmanager receives from it;
//! - every panel query of the Grafana dashboards (monitoring/grafana/dashboards) is
//!   evaluated against that Prometheus as Grafana would send it, during a short load
//!   through the stack (Grafana cannot run here). A query that does not parse fails; one
//!   that returns nothing fails unless its panel is in `MAY_BE_EMPTY`, which says why;
//!   and every metric a query names must be one Prometheus has scraped, so that a typo
//!   or an unscraped target fails (in a panel that may be empty, a counter that never
//!   counted has no series: there, a name the services' source declares is accepted).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paystream_testkit::Stack;
use serde_json::{Value, json};
use uuid::Uuid;

/// Panels that show nothing on a healthy stack, and why. Each must exist (a renamed panel
/// must be renamed here too), and their queries must still parse and name known metrics.
const MAY_BE_EMPTY: [(&str, &str); 5] = [
    (
        "Refund polls, by outcome",
        "stripe-sim settles the load's refund at once: nothing to poll",
    ),
    ("API 5xx ratio", "a healthy API answers no 5xx"),
    (
        "Stripe calls refused (429) or failing (5xx)",
        "the load stays under stripe-sim's limits",
    ),
    ("Alerts firing", "a healthy stack fires no alert"),
    (
        "Background task restarts",
        "no supervised task fails under this load",
    ),
];

/// The jobs Prometheus must scrape, with how many targets each (monitoring/prometheus).
const JOBS: [(&str, usize); 7] = [
    ("api", 2),
    ("webhook", 1),
    ("reconciler", 1),
    ("stripe-sim", 1),
    ("exporter", 1),
    ("prometheus", 1),
    ("alertmanager", 1),
];

struct Panel {
    dashboard: String,
    title: String,
    /// Each query, and whether Grafana sends it as an instant query (a table's).
    exprs: Vec<(String, bool)>,
}

fn dashboards(stack: &Stack) -> Vec<Panel> {
    let dir = stack.root().join("monitoring/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "dashboards in {}: {files:?}",
        dir.display()
    );
    let mut panels = Vec::new();
    for f in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", f.display()));
        let name = d["title"].as_str().expect("a dashboard title").to_owned();
        for p in d["panels"].as_array().expect("panels") {
            let exprs: Vec<(String, bool)> = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let expr = t["expr"].as_str().expect("a PromQL expr").to_owned();
                    (expr, t["instant"] == true)
                })
                .collect();
            let title = p["title"].as_str().expect("a panel title").to_owned();
            assert!(!exprs.is_empty(), "{name}: panel {title:?} has no query");
            panels.push(Panel {
                dashboard: name.clone(),
                title,
                exprs,
            });
        }
    }
    panels
}

/// The query as Grafana sends it for the dashboards' default hour: `$__interval` is the
/// data source's 5 s (the scrape interval: an hour over a panel's width is less), and
/// `$__rate_interval` is max(`$__interval` + 5 s, 4 x 5 s).
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$__interval", "5s")
        .replace("$__range", "1h")
}

/// PromQL's aggregation operators: `sum by (x) (...)` names no metric `sum`.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Clauses whose parenthesised list names labels, not metrics.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

const KEYWORDS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "inf"];

/// The metric names a PromQL expression selects: identifiers outside label matchers,
/// ranges and grouping clauses that are not functions or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' | '"' => {
                let close = match c {
                    '{' => '}',
                    '[' => ']',
                    _ => '"',
                };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if GROUPING.contains(&last_word.as_str()) => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                last_word.clear();
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let is_call = next == Some(&'(');
                let lower = word.to_ascii_lowercase();
                if !is_call
                    && !GROUPING.contains(&lower.as_str())
                    && !KEYWORDS.contains(&lower.as_str())
                    && !AGGREGATIONS.contains(&lower.as_str())
                {
                    names.insert(word.clone());
                }
                last_word = word;
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                last_word.clear();
                i += 1;
            }
        }
    }
    names
}

#[test]
fn metric_names_are_read_off_queries() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{job="api",x=~"a|b"}[1m]))) / on (job) group_left sum without (instance) (up) > bool 0.5 or vector(1) unless ALERTS{alertstate="firing"}"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ALERTS", "http_request_duration_seconds_bucket", "up"]
    );
}

/// Every string literal in the deployables' Rust source that looks like a metric name.
fn declared_metric_names(stack: &Stack) -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for literal in text.split('"').skip(1).step_by(2) {
                    if !literal.is_empty()
                        && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        out.insert(literal.to_owned());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for krate in [
        "api",
        "webhook",
        "reconciler",
        "service",
        "stripe-sim",
        "cli",
    ] {
        walk(&stack.root().join(krate).join("src"), &mut out);
    }
    out
}

/// The label names an expression's selectors match on, per metric: `name{a="x",b=~"y"}`
/// gives (name, [a, b]).
fn selector_labels(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let name: String = rest[..open]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let labels = rest[open + 1..close]
            .split(',')
            .filter_map(|m| {
                let end = m.find(['=', '!'])?;
                Some(m[..end].trim().to_owned())
            })
            .filter(|l| !l.is_empty())
            .collect();
        if !name.is_empty() {
            out.push((name, labels));
        }
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out
}

#[test]
fn selector_labels_are_read_off_queries() {
    assert_eq!(
        selector_labels(r#"sum(rate(x_total{job="api",outcome=~"a|b"}[1m])) / y{z!="1"} + w"#),
        [
            (
                "x_total".to_owned(),
                vec!["job".to_owned(), "outcome".to_owned()]
            ),
            ("y".to_owned(), vec!["z".to_owned()]),
        ]
    );
}

/// In a panel that may be empty, a misspelt label matcher would keep it empty for ever:
/// each label it matches on must be one its metric's series carry (when it has any).
async fn unknown_labels(prom: &Prometheus, expr: &str, from: f64) -> Vec<String> {
    let mut out = Vec::new();
    for (metric, labels) in selector_labels(expr) {
        let body = prom
            .get(
                "/api/v1/labels",
                &[("match[]", &metric), ("start", &format!("{from:.3}"))],
            )
            .await;
        let carried: BTreeSet<String> = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        if carried.is_empty() {
            continue;
        }
        for label in labels {
            if !carried.contains(&label) {
                out.push(format!("{metric} has no label {label}"));
            }
        }
    }
    out
}

struct Prometheus {
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("Prometheus at {} answers {path}: {e}", self.url));
        let body: Value = res.json().await.expect("Prometheus answers JSON");
        body
    }

    /// The query over `[from, now]` at Grafana's step, or at now if `instant`; `Err`
    /// holds Prometheus's error (a query that does not parse).
    async fn eval(&self, expr: &str, from: f64, instant: bool) -> Result<Vec<Value>, String> {
        let now = format!("{:.3}", unix_now());
        let from = format!("{from:.3}");
        let body = if instant {
            self.get("/api/v1/query", &[("query", expr), ("time", &now)])
                .await
        } else {
            self.get(
                "/api/v1/query_range",
                &[
                    ("query", expr),
                    ("start", &from),
                    ("end", &now),
                    ("step", "5"),
                ],
            )
            .await
        };
        if body["status"] != "success" {
            return Err(format!("{} {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until Prometheus has every job's targets up; panics with their state otherwise.
async fn all_targets_up(prom: &Prometheus) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = prom.get("/api/v1/targets", &[("state", "active")]).await;
        let mut up: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen = Vec::new();
        for target in t["data"]["activeTargets"].as_array().expect("targets") {
            let job = target["labels"]["job"].as_str().unwrap_or_default();
            seen.push(format!(
                "{job} {} {} {}",
                target["labels"]["instance"], target["health"], target["lastError"]
            ));
            if target["health"] == "up" {
                *up.entry(job.to_owned()).or_default() += 1;
            }
        }
        let missing: Vec<_> = JOBS
            .iter()
            .filter(|(job, n)| up.get(*job).copied().unwrap_or(0) < *n)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus does not have these jobs' targets up after 60 s: {missing:?}; targets: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_stack_holds_the_rules_and_alertmanager_receives() {
    let stack = Stack::get();
    let prom = Prometheus {
        url: stack.var("PROMETHEUS_URL").to_owned(),
        http: reqwest::Client::new(),
    };
    all_targets_up(&prom).await;

    // Every alert of the rules file, loaded and healthy.
    let text = std::fs::read_to_string(
        stack
            .root()
            .join("monitoring/prometheus/rules/paystream.rules.yml"),
    )
    .unwrap();
    let in_file: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|a| a.trim().to_owned())
        .collect();
    assert!(in_file.len() >= 10, "alerts in the rules file: {in_file:?}");
    let rules = prom.get("/api/v1/rules", &[("type", "alert")]).await;
    let mut loaded = BTreeSet::new();
    for group in rules["data"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert_eq!(rule["health"], "ok", "rule evaluation failed: {rule}");
            loaded.insert(rule["name"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(loaded, in_file, "alerts Prometheus holds vs the rules file");

    // Prometheus sends to the stack's Alertmanager, which answers.
    let ams = prom.get("/api/v1/alertmanagers", &[]).await;
    let active = ams["data"]["activeAlertmanagers"]
        .as_array()
        .expect("alertmanagers");
    let am = stack.var("ALERTMANAGER_URL");
    assert!(
        active
            .iter()
            .any(|a| a["url"].as_str().is_some_and(|u| u.starts_with(am))),
        "Prometheus's alertmanagers {active:?}, the stack's {am}"
    );
    let status: Value = reqwest::get(format!("{am}/api/v2/status"))
        .await
        .expect("Alertmanager answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(status["cluster"]["status"], "disabled", "{status}");
    assert!(
        status["config"]["original"]
            .as_str()
            .is_some_and(|c| c.contains("on-call")),
        "Alertmanager runs monitoring/alertmanager/alertmanager.yml: {status}"
    );
}

/// A short load through nginx, as clients and Stripe make it: payments paid, declined,
/// canceled and left to the polls, one refund, and one forged webhook.
async fn load(stack: &Stack) {
    let http = reqwest::Client::new();
    let api = stack.var("PAYSTREAM_API_URL");
    let key = stack.var("PAYSTREAM_CLIENT_KEY");
    let mut paid = Vec::new();
    for i in 0..24 {
        let res = http
            .post(format!("{api}/v1/payments"))
            .bearer_auth(key)
            .header("Idempotency-Key", format!("dashboards-{}", Uuid::now_v7()))
            .json(&json!({"amount": 1000 + i, "currency": "usd"}))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(res.status(), 201, "create");
        let p: Value = res.json().await.expect("JSON");
        let id = p["id"].as_str().unwrap().to_owned();
        let intent = p["stripe_payment_intent_id"].as_str().unwrap().to_owned();
        match i % 6 {
            0..=2 => {
                let r = stack.pay(&intent, "pm_card_visa").await;
                assert_eq!(r["status"], "succeeded", "{r}");
                paid.push(id);
            }
            3 => {
                stack.pay(&intent, "pm_card_chargeDeclined").await;
            }
            4 => {
                let res = http
                    .post(format!("{api}/v1/payments/{id}/cancel"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .expect("the API answers");
                assert_eq!(res.status(), 200, "cancel");
            }
            // Left open: the reconciler's polls and sweeps keep it company.
            _ => {}
        }
    }
    // A refund, once its payment is succeeded here.
    let id = &paid[0];
    if let Err(p) = stack
        .await_payment(id, "succeeded", Duration::from_secs(30))
        .await
    {
        panic!("{id} not succeeded: {p}");
    }
    let res = http
        .post(format!("{api}/v1/payments/{id}/refunds"))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("dashboards-refund-{id}"))
        .json(&json!({"amount": 100}))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(res.status(), 201, "refund");
    // A webhook signed with another secret: the rejection panel's data.
    let res = http
        .post(format!("{api}/webhook/stripe"))
        .header("Stripe-Signature", "t=1,v1=00")
        .body(r#"{"id":"evt_forged","type":"payment_intent.succeeded"}"#)
        .send()
        .await
        .expect("the webhook answers");
    assert_eq!(res.status(), 400, "a forged webhook");
}

#[tokio::test]
async fn every_dashboard_query_parses_and_shows_the_stack_under_load() {
    let stack = Stack::get();
    let prom = Prometheus {
        url: stack.var("PROMETHEUS_URL").to_owned(),
        http: reqwest::Client::new(),
    };
    let panels = dashboards(stack);
    for (title, _) in MAY_BE_EMPTY {
        assert!(
            panels.iter().any(|p| p.title == title),
            "MAY_BE_EMPTY names {title:?}, which no dashboard has"
        );
    }
    all_targets_up(&prom).await;
    let from = unix_now();
    load(stack).await;

    // The data needs a few scrapes (5 s apart) after the load: every query that should
    // show something gets up to 90 s to.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut problems = Vec::new();
    let mut empty: Vec<String>;
    loop {
        empty = Vec::new();
        for p in &panels {
            let may_be_empty = MAY_BE_EMPTY.iter().any(|(t, _)| *t == p.title);
            for (expr, instant) in &p.exprs {
                match prom.eval(&as_grafana_sends(expr), from, *instant).await {
                    Err(e) => problems.push(format!(
                        "{} / {}: does not parse ({e}): {expr}",
                        p.dashboard, p.title
                    )),
                    Ok(series) if series.is_empty() && !may_be_empty => empty.push(format!(
                        "{} / {}: no data during the load: {expr}",
                        p.dashboard, p.title
                    )),
                    Ok(_) => {}
                }
            }
        }
        if !problems.is_empty() || empty.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    problems.extend(empty);

    // Metrics Prometheus knows a description of (HELP/TYPE from a scrape), or a series of.
    let mut known: BTreeSet<String> = BTreeSet::new();
    let meta = prom.get("/api/v1/metadata", &[]).await;
    for (name, m) in meta["data"].as_object().expect("metadata") {
        known.insert(name.clone());
        // OpenMetrics names a family without its samples' suffixes.
        let suffixes: &[&str] = match m[0]["type"].as_str() {
            Some("counter") => &["_total"],
            Some("histogram") => &["_bucket", "_sum", "_count"],
            _ => &[],
        };
        for suffix in suffixes {
            known.insert(format!("{name}{suffix}"));
        }
    }
    // Only names scraped during this test: a metric the services no longer expose stays
    // in the TSDB's history for days.
    let names = prom
        .get(
            "/api/v1/label/__name__/values",
            &[("start", &format!("{from:.3}"))],
        )
        .await;
    known.extend(
        names["data"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().unwrap().to_owned()),
    );
    // Made by Prometheus itself for its alerting rules.
    known.insert("ALERTS".into());

    // A counter that never counted has no series, and prometheus-client exposes no
    // description of an empty family: in a panel that may be empty, a name the services'
    // source declares (a typo would not be) is accepted.
    let declared = declared_metric_names(stack);
    for p in &panels {
        let may_be_empty = MAY_BE_EMPTY.iter().any(|(t, _)| *t == p.title);
        for (expr, _) in &p.exprs {
            if may_be_empty {
                problems.extend(
                    unknown_labels(&prom, expr, from)
                        .await
                        .into_iter()
                        .map(|l| format!("{} / {}: {l} ({expr})", p.dashboard, p.title)),
                );
            }
            for name in metric_names(expr) {
                let accepted = known.contains(&name) || (may_be_empty && declared.contains(&name));
                if !accepted {
                    problems.push(format!(
                        "{} / {}: {name} is not a metric Prometheus knows ({expr})",
                        p.dashboard, p.title
                    ));
                }
            }
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let queries: usize = panels.iter().map(|p| p.exprs.len()).sum();
    eprintln!(
        "{} panels, {queries} queries: all parse, all known metrics, all with data but {} allowed empty",
        panels.len(),
        MAY_BE_EMPTY.len()
    );
}
