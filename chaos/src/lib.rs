//! The adversarial suite: a seeded model of clients, customers, Stripe and process faults
//! thrown at a whole stack of its own, then every invariant of docs/invariants.md checked
//! for every payment and refund against stripe-sim's own state and the output topics.
//!
//! - `plan`: what a run does, from its seed (pure);
//! - `stack`: the run's own stack, through the project's scripts;
//! - `client`: clients and customers running the payments' scripts;
//! - `faults`: processes killed and restarted, the slot lost, Stripe failing;
//! - `check`: the invariants, over what the run left behind (pure).

pub mod check;
pub mod client;
pub mod faults;
pub mod plan;
pub mod stack;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::check::{Evidence, HistoryRow, OurRefund, Ours, TheirRefund, Theirs, Told, Violation};
use crate::client::Client;
use crate::plan::{FaultKind, Plan, Settings};
use crate::stack::{ChaosStack, StackError};

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A URL the database settings refuse (a bad sslmode, an unreadable CA file).
    #[error("database: {0}")]
    DbConfig(#[from] paystream_db::DbError),
    #[error("stripe-sim: {0}")]
    Sim(#[from] reqwest::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Stuck(String),
}

#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    pub seed: u64,
    pub settings: Settings,
    /// Payments whose scripts run at once.
    pub concurrency: usize,
    /// How long every payment may take to reach a final status (or an operator) once the
    /// load and the faults are over.
    pub settle_limit: Duration,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub seed: u64,
    pub payments: usize,
    pub faults: BTreeMap<FaultKind, usize>,
    /// Our final statuses (and `flagged:<reason>` for payments left to an operator).
    pub outcomes: BTreeMap<String, usize>,
    pub answers: BTreeMap<u16, usize>,
    pub intents_at_stripe: usize,
    pub published: usize,
    /// Manual-capture payments by how they ended (`captured in full`, `captured in part`,
    /// or their status).
    pub captures: BTreeMap<String, usize>,
    /// Our refunds' final statuses (and `flagged <reason>`).
    pub refunds: BTreeMap<String, usize>,
    /// Refund and capture answers, by `<status> <code>`.
    pub money_answers: BTreeMap<String, usize>,
    /// Stripe refunds carrying one of ours (any other is an R2 violation).
    pub refunds_at_stripe: usize,
    pub refunds_published: usize,
    pub violations: Vec<Violation>,
    pub took: Duration,
    pub settled_in: Duration,
}

impl Summary {
    pub fn render(&self) -> String {
        let mut out = format!(
            "chaos seed {}: {} payments in {:.0?} (settled {:.0?} after the load)\n",
            self.seed, self.payments, self.took, self.settled_in
        );
        out.push_str("faults injected:\n");
        for (k, n) in &self.faults {
            out.push_str(&format!("  {:<26} {n}\n", k.as_str()));
        }
        out.push_str("outcomes:\n");
        for (k, n) in &self.outcomes {
            out.push_str(&format!("  {k:<26} {n}\n"));
        }
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(s, n)| {
                format!(
                    "{}: {n}",
                    if *s == 0 {
                        "no answer".into()
                    } else {
                        s.to_string()
                    }
                )
            })
            .collect();
        out.push_str(&format!("API answers: {}\n", answers.join(", ")));
        out.push_str(&format!(
            "Stripe intents: {}, status updates published: {}\n",
            self.intents_at_stripe, self.published
        ));
        out.push_str("manual captures:\n");
        for (k, n) in &self.captures {
            out.push_str(&format!("  {k:<26} {n}\n"));
        }
        out.push_str("refunds:\n");
        for (k, n) in &self.refunds {
            out.push_str(&format!("  {k:<26} {n}\n"));
        }
        out.push_str("refund and capture answers:\n");
        for (k, n) in &self.money_answers {
            out.push_str(&format!("  {k:<40} {n}\n"));
        }
        out.push_str(&format!(
            "Stripe refunds of ours: {}; refund status updates published: {}\n",
            self.refunds_at_stripe, self.refunds_published
        ));
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &self.violations {
            *by.entry(v.invariant).or_default() += 1;
        }
        let by: Vec<String> = by.iter().map(|(i, n)| format!("{i}: {n}")).collect();
        out.push_str(&format!(
            "violations: {}{}\n",
            self.violations.len(),
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            }
        ));
        for v in self.violations.iter().take(50) {
            out.push_str(&format!("  {v}\n"));
        }
        out
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
}

/// One whole run: a fresh stack, the load and the faults, the settling, the checks.
pub async fn run(cfg: RunConfig) -> Result<Summary, ChaosError> {
    let t_start = Instant::now();
    let plan = Plan::generate(cfg.seed, cfg.settings);
    tracing::info!(
        seed = cfg.seed,
        payments = plan.payments.len(),
        "starting a chaos stack"
    );
    let seed = cfg.seed;
    let stack = Arc::new(
        tokio::task::spawn_blocking(move || ChaosStack::start(root(), seed))
            .await
            .map_err(|e| ChaosError::Stuck(e.to_string()))??,
    );
    let result = drive(&stack, &plan, cfg, t_start).await;
    let stopped = {
        let stack = stack.clone();
        tokio::task::spawn_blocking(move || stack.stop()).await
    };
    if let Ok(Err(e)) = stopped {
        tracing::warn!(error = %e, "stopping the chaos stack");
    }
    result
}

async fn drive(
    stack: &Arc<ChaosStack>,
    plan: &Plan,
    cfg: RunConfig,
    t_start: Instant,
) -> Result<Summary, ChaosError> {
    let sim = stack.var("STRIPE_SIM_URL")?.to_owned();
    let client = Arc::new(Client::new(
        stack.var("PAYSTREAM_API_URL")?,
        stack.var("PAYSTREAM_CLIENT_KEY")?,
        &sim,
        stack.var("STRIPE_SECRET_KEY")?,
    ));
    let http = client.http.clone();
    // The account's rate limits are lifted (429s come from the fault plan instead).
    let mut world: Value = http
        .get(format!("{sim}/_sim/world"))
        .send()
        .await?
        .json()
        .await?;
    world["per_endpoint_rate"] = json!(0);
    world["global_rate"] = json!(0);
    http.put(format!("{sim}/_sim/world"))
        .json(&world)
        .send()
        .await?
        .error_for_status()?;
    faults::set_stripe_faults(&http, &sim, None).await?;
    wait_for_reconciler(&http, stack.var("RECONCILER_URL")?).await?;

    let t0 = client.started;
    let process = tokio::spawn(faults::run_process_faults(
        stack.clone(),
        stack.var("DATABASE_ADMIN_URL")?.to_owned(),
        plan.process_faults.clone(),
        t0,
    ));
    let stripe = tokio::spawn(faults::run_stripe_faults(
        http.clone(),
        sim.clone(),
        plan.stripe_faults.clone(),
        t0,
    ));
    let gate = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let mut scripts = tokio::task::JoinSet::new();
    for s in plan.payments.clone() {
        let (client, gate) = (client.clone(), gate.clone());
        let seed = plan.seed;
        scripts.spawn(async move {
            let wait = Duration::from_millis(s.start_ms).saturating_sub(t0.elapsed());
            tokio::time::sleep(wait).await;
            let _permit = gate.acquire().await;
            let told = client.run(seed, &s).await;
            (s, told)
        });
    }
    let mut told: Vec<(plan::PaymentScript, Told)> = Vec::new();
    while let Some(done) = scripts.join_next().await {
        told.push(done.map_err(|e| ChaosError::Stuck(e.to_string()))?);
    }
    let injected = process
        .await
        .map_err(|e| ChaosError::Stuck(e.to_string()))??;
    let stripe_counts = stripe
        .await
        .map_err(|e| ChaosError::Stuck(e.to_string()))??;
    faults::set_stripe_faults(&http, &sim, None).await?;
    tracing::info!(
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "load and faults over"
    );

    // Stripe's clock moves past its 24-hour idempotency key lifetime, and some clients
    // retry their creates: nothing new may be created for a payment that went final.
    advance(&http, &sim, 25 * 3600).await?;
    for (s, t) in told.iter_mut().filter(|(s, _)| s.late_retry) {
        client.late_retry(s, t).await;
    }
    // Past Stripe's 3 days of webhook retries: what never got through is `failed` at
    // Stripe, for the catch-up to find. `pm_card_refundFail` refunds fail on the way
    // (2 days after they succeeded).
    advance(&http, &sim, 73 * 3600).await?;
    // Past the 7 days Stripe holds an authorization: the uncaptured ones are canceled.
    advance(&http, &sim, 72 * 3600).await?;

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(paystream_db::tls::connect_options(
            stack.var("DATABASE_URL")?,
        )?)
        .await?;
    let settled_at = Instant::now();
    let prefix = format!("chaos-{}-%", plan.seed);
    let settled = wait_settled(&db, &client, &prefix, cfg.settle_limit).await?;
    let settled_in = settled_at.elapsed();
    if !settled {
        tracing::warn!("not every payment settled in time; the checks will say which");
    }

    let ours = load_ours(&db, &prefix).await?;
    let refunds = load_refunds(&db, &ours).await?;
    let (theirs, their_refunds) = load_theirs(&http, &sim).await?;
    let finals: HashMap<Uuid, String> = ours
        .iter()
        .filter(|o| o.status != "pending")
        .map(|o| (o.id, o.status.clone()))
        .collect();
    let brokers = stack.var("KAFKA_BROKERS")?;
    let published = read_published(brokers, stack.var("STATUS_TOPIC")?, &finals, |p| {
        paystream_reconciler::output::decode(p)
            .ok()
            .map(|u| (u.payment_id, u.status.as_str().to_owned()))
    })
    .await?;
    let refund_finals: HashMap<Uuid, String> = refunds
        .iter()
        .filter(|r| r.status != "pending")
        .map(|r| (r.id, r.status.clone()))
        .collect();
    let refunds_published = read_published(
        brokers,
        stack
            .var("REFUND_STATUS_TOPIC")
            .unwrap_or("refund-status-update"),
        &refund_finals,
        |p| {
            paystream_reconciler::refunds::output::decode(p)
                .ok()
                .map(|u| (u.refund_id, u.status.as_str().to_owned()))
        },
    )
    .await?;
    let mut counts = injected.counts.clone();
    counts.extend(stripe_counts);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for o in &ours {
        let k = match &o.attention {
            Some(a) => format!("{} (flagged {a})", o.status),
            None => o.status.clone(),
        };
        *outcomes.entry(k).or_default() += 1;
    }
    let expired: HashSet<&str> = theirs
        .iter()
        .filter(|t| t.cancellation_reason.as_deref() == Some("expired"))
        .map(|t| t.id.as_str())
        .collect();
    let mut captures: BTreeMap<String, usize> = BTreeMap::new();
    for o in ours.iter().filter(|o| o.capture_method == "manual") {
        let k = match o.status.as_str() {
            "succeeded" if o.captured() < o.amount => "captured in part".to_owned(),
            "succeeded" => "captured in full".to_owned(),
            "canceled" if o.intent.as_deref().is_some_and(|i| expired.contains(i)) => {
                "expired uncaptured".to_owned()
            }
            s => s.to_owned(),
        };
        *captures.entry(k).or_default() += 1;
    }
    let mut refund_outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for r in &refunds {
        let k = match &r.attention {
            Some(a) => format!("{} (flagged {a})", r.status),
            None => r.status.clone(),
        };
        *refund_outcomes.entry(k).or_default() += 1;
    }
    let all_answers = client.answers();
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    let mut money_answers: BTreeMap<String, usize> = BTreeMap::new();
    for a in &all_answers {
        *answers.entry(a.status).or_default() += 1;
        if matches!(a.what, "refund" | "capture") {
            let k = format!(
                "{} {} {}",
                a.what,
                a.status,
                a.code.as_deref().unwrap_or("")
            );
            *money_answers.entry(k.trim_end().to_owned()).or_default() += 1;
        }
    }
    let evidence = Evidence {
        theirs,
        published: published.clone(),
        told: told.into_iter().map(|(_, t)| t).collect(),
        answers: all_answers,
        fault_windows: injected.windows.clone(),
        ours,
        refunds,
        their_refunds,
        refunds_published: refunds_published.clone(),
    };
    let violations = check::check(&evidence);
    Ok(Summary {
        seed: plan.seed,
        payments: evidence.ours.len(),
        faults: counts,
        outcomes,
        answers,
        intents_at_stripe: evidence.theirs.len(),
        published: published.values().map(Vec::len).sum(),
        captures,
        refunds: refund_outcomes,
        money_answers,
        refunds_at_stripe: evidence
            .their_refunds
            .iter()
            .filter(|r| r.refund_id.is_some())
            .count(),
        refunds_published: refunds_published.values().map(Vec::len).sum(),
        violations,
        took: t_start.elapsed(),
        settled_in,
    })
}

async fn advance(http: &reqwest::Client, sim: &str, seconds: i64) -> Result<(), ChaosError> {
    http.post(format!("{sim}/_sim/clock/advance"))
        .json(&json!({"seconds": seconds}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn wait_for_reconciler(http: &reqwest::Client, url: &str) -> Result<(), ChaosError> {
    for _ in 0..300 {
        if let Ok(res) = http.get(format!("{url}/metrics")).send().await
            && let Ok(text) = res.text().await
            && text
                .lines()
                .any(|l| l.starts_with("reconciler_partitions ") && !l.ends_with(" 0"))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ChaosError::Stuck(
        "the reconciler took no partition in 60 s".into(),
    ))
}

/// Until every payment and refund of the run is final or flagged for an operator, and
/// every Stripe refund's status has reached ours (true), or the limit passes (false).
async fn wait_settled(
    db: &PgPool,
    client: &Client,
    prefix: &str,
    limit: Duration,
) -> Result<bool, ChaosError> {
    let started = Instant::now();
    loop {
        let open: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT
                (SELECT count(*) FROM payments WHERE idempotency_key LIKE $1 AND status = 'pending' AND attention IS NULL),
                (SELECT count(*) FROM refunds r JOIN payments p ON p.id = r.payment_id
                  WHERE p.idempotency_key LIKE $1 AND r.status = 'pending' AND r.attention IS NULL)",
        )
        .bind(prefix)
        .fetch_one(db)
        .await;
        match open {
            Ok((0, 0)) => match refunds_behind(db, client, prefix).await {
                Ok(0) => return Ok(true),
                Ok(n) => tracing::info!(
                    refunds = n,
                    "waiting for Stripe's refund statuses to reach ours"
                ),
                Err(e) => tracing::warn!(error = %e, "refund settle check failed"),
            },
            Ok((p, r)) => tracing::info!(
                payments = p,
                refunds = r,
                "waiting for payments and refunds to settle"
            ),
            Err(e) => tracing::warn!(error = %e, "settle check failed"),
        }
        if started.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// How many of Stripe's refunds carrying one of the run's refunds say another status
/// than ours, unflagged (a failure two days after success, on its way to us).
async fn refunds_behind(db: &PgPool, client: &Client, prefix: &str) -> Result<usize, ChaosError> {
    let mut at_stripe: HashMap<Uuid, String> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = client
            .http
            .get(format!("{}/v1/refunds", client.sim))
            .bearer_auth(&client.sim_key)
            .query(&[("limit", "100")]);
        if let Some(a) = &after {
            req = req.query(&[("starting_after", a.as_str())]);
        }
        let page: Value = req.send().await?.error_for_status()?.json().await?;
        let data = page["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for r in data {
            if let Some(id) = r["metadata"]["refund_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                at_stripe.insert(id, r["status"].as_str().unwrap_or_default().to_owned());
            }
        }
        after = data
            .last()
            .and_then(|r| r["id"].as_str())
            .map(str::to_owned);
        if page["has_more"] != true || after.is_none() {
            break;
        }
    }
    let ours: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT r.id, r.status, r.attention FROM refunds r JOIN payments p ON p.id = r.payment_id
         WHERE p.idempotency_key LIKE $1",
    )
    .bind(prefix)
    .fetch_all(db)
    .await?;
    Ok(ours
        .iter()
        .filter(|(id, status, attention)| {
            attention.is_none() && at_stripe.get(id).is_some_and(|s| s != status)
        })
        .count())
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    idempotency_key: String,
    status: String,
    stripe_payment_intent_id: Option<String>,
    attention: Option<String>,
    amount: i64,
    capture_method: String,
    amount_captured: Option<i64>,
    amount_refunded: i64,
}

async fn load_ours(db: &PgPool, prefix: &str) -> Result<Vec<Ours>, ChaosError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, idempotency_key, status, stripe_payment_intent_id, attention, amount,
                capture_method, amount_captured, amount_refunded
         FROM payments WHERE idempotency_key LIKE $1 ORDER BY id",
    )
    .bind(prefix)
    .fetch_all(db)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let history: Vec<(Uuid, Option<String>, String, Option<Value>)> = sqlx::query_as(
        "SELECT payment_id, from_status, to_status, detail FROM payment_status_history
         WHERE payment_id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let mut by: HashMap<Uuid, Vec<HistoryRow>> = HashMap::new();
    for (id, from, to, detail) in history {
        by.entry(id)
            .or_default()
            .push(HistoryRow { from, to, detail });
    }
    Ok(rows
        .into_iter()
        .map(|r| Ours {
            history: by.remove(&r.id).unwrap_or_default(),
            id: r.id,
            key: r.idempotency_key,
            status: r.status,
            intent: r.stripe_payment_intent_id,
            attention: r.attention,
            amount: r.amount,
            capture_method: r.capture_method,
            amount_captured: r.amount_captured,
            amount_refunded: r.amount_refunded,
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct RefundRow {
    id: Uuid,
    payment_id: Uuid,
    idempotency_key: String,
    amount: i64,
    status: String,
    stripe_refund_id: Option<String>,
    attention: Option<String>,
}

async fn load_refunds(db: &PgPool, ours: &[Ours]) -> Result<Vec<OurRefund>, ChaosError> {
    let payments: Vec<Uuid> = ours.iter().map(|o| o.id).collect();
    let rows: Vec<RefundRow> = sqlx::query_as(
        "SELECT id, payment_id, idempotency_key, amount, status, stripe_refund_id, attention
         FROM refunds WHERE payment_id = ANY($1) ORDER BY id",
    )
    .bind(&payments)
    .fetch_all(db)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let history: Vec<(Uuid, Option<String>, String, Option<Value>)> = sqlx::query_as(
        "SELECT refund_id, from_status, to_status, detail FROM refund_status_history
         WHERE refund_id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let mut by: HashMap<Uuid, Vec<HistoryRow>> = HashMap::new();
    for (id, from, to, detail) in history {
        by.entry(id)
            .or_default()
            .push(HistoryRow { from, to, detail });
    }
    Ok(rows
        .into_iter()
        .map(|r| OurRefund {
            history: by.remove(&r.id).unwrap_or_default(),
            id: r.id,
            payment_id: r.payment_id,
            key: r.idempotency_key,
            amount: r.amount,
            status: r.status,
            stripe_refund_id: r.stripe_refund_id,
            attention: r.attention,
        })
        .collect())
}

async fn load_theirs(
    http: &reqwest::Client,
    sim: &str,
) -> Result<(Vec<Theirs>, Vec<TheirRefund>), ChaosError> {
    let state: Value = http
        .get(format!("{sim}/_sim/state"))
        .send()
        .await?
        .json()
        .await?;
    let list = |k: &str| {
        state[k]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .to_vec()
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let intents = list("payment_intents")
        .iter()
        .map(|i| Theirs {
            id: text(&i["id"]).unwrap_or_default(),
            status: text(&i["status"]).unwrap_or_default(),
            payment_id: text(&i["metadata"]["payment_id"]),
            amount: i["amount"].as_i64().unwrap_or_default(),
            amount_received: i["amount_received"].as_i64().unwrap_or_default(),
            cancellation_reason: text(&i["cancellation_reason"]),
        })
        .collect();
    let refunds = list("refunds")
        .iter()
        .map(|r| TheirRefund {
            id: text(&r["id"]).unwrap_or_default(),
            payment_intent: text(&r["payment_intent"]),
            amount: r["amount"].as_i64().unwrap_or_default(),
            status: text(&r["status"]).unwrap_or_default(),
            refund_id: text(&r["metadata"]["refund_id"]),
        })
        .collect();
    Ok((intents, refunds))
}

/// Every status update on `topic` of the run's payments (or refunds), read from the start
/// until each final one's current status is among them, or nothing new comes for 30 s
/// (what is missing then is an I3 or R3 violation).
async fn read_published(
    brokers: &str,
    topic: &str,
    expect: &HashMap<Uuid, String>,
    decode: impl Fn(&[u8]) -> Option<(Uuid, String)>,
) -> Result<HashMap<Uuid, Vec<String>>, ChaosError> {
    let mut out: HashMap<Uuid, Vec<String>> = HashMap::new();
    if expect.is_empty() {
        return Ok(out);
    }
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("chaos-check-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut missing = expect.len();
    let started = Instant::now();
    while missing > 0 && started.elapsed() < Duration::from_secs(300) {
        let m = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => break,
        };
        let Some((id, status)) = m.payload().and_then(&decode) else {
            continue;
        };
        let Some(want) = expect.get(&id) else {
            continue;
        };
        let seen = out.entry(id).or_default();
        if status == *want && !seen.contains(want) {
            missing -= 1;
        }
        seen.push(status);
    }
    Ok(out)
}
