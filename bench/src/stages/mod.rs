//! The stages of `make bench`, one module each, run in the table's order by [`run`]. Each
//! measures its figure and, where it has one, its pgbench floor in the same run: a ratio
//! against a floor from another run would compare two machines or two moments.

mod cdc;
mod initiation;
mod poller;
mod replay;
mod stripe;
mod sweep;
mod webhook;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paystream_db::keys::{self, Role};
use paystream_testkit::Stack;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::metrics::at_rest;
use crate::report::Report;
use crate::{load, pgbench, procs};

pub use initiation::load_only;

/// Every stage in turn: the table's rows, and resource use at idle and at peak.
pub async fn run(stack: &Stack, http: &reqwest::Client, s: &Settings) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(stack, http, s).await;
    let keys = Keys::create(&ctx.primary, 32).await?;
    if s.wants("idle") {
        idle(&mut ctx).await;
    }
    if s.wants("stripe") {
        stripe::capacity(&mut ctx).await;
    }
    if s.wants("initiation") {
        initiation::measure(&mut ctx, &keys).await?;
    }
    if s.wants("replay") {
        replay::measure(&mut ctx, &keys).await?;
    }
    if s.wants("webhook") {
        webhook::measure(&mut ctx, keys.client).await?;
    }
    if s.wants("cdc") {
        cdc::measure(&mut ctx, keys.client).await?;
    }
    if s.wants("poller") {
        poller::measure(&mut ctx, keys.client).await?;
    }
    if s.wants("sweep") {
        sweep::measure(&mut ctx, &keys).await?;
    }
    Ok(ctx.report)
}

/// How long each load runs and how many runs a figure is the median of.
pub struct Settings {
    pub runs: usize,
    pub length: Duration,
    /// `--only STAGE`: that stage alone (idle, stripe, initiation, replay, webhook, cdc,
    /// poller, sweep).
    pub only: Option<String>,
}

impl Settings {
    /// `--quick` is a smoke test: one short run each.
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                runs: 1,
                length: Duration::from_secs(2),
                only: None,
            }
        } else {
            Settings {
                runs: 3,
                length: Duration::from_secs(5),
                only: None,
            }
        }
    }

    fn wants(&self, stage: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == stage)
    }
}

/// What every stage reads, and the table they fill.
pub struct Ctx<'a> {
    pub stack: &'a Stack,
    pub http: reqwest::Client,
    pub s: &'a Settings,
    pub api: String,
    pub db_url: String,
    pub reconciler: String,
    pub primary: PgPool,
    pub report: Report,
}

impl<'a> Ctx<'a> {
    async fn new(stack: &'a Stack, http: &reqwest::Client, s: &'a Settings) -> Ctx<'a> {
        Ctx {
            stack,
            http: http.clone(),
            s,
            api: stack.var("PAYSTREAM_API_URL").to_owned(),
            db_url: stack.var("DATABASE_URL").to_owned(),
            reconciler: stack.var("RECONCILER_URL").to_owned(),
            primary: stack.pool("DATABASE_URL").await,
            report: Report::default(),
        }
    }

    /// The run with the median rate of `s.runs` closed-loop runs of `request` at `clients`.
    pub async fn median_load<F, Fut>(&self, clients: usize, request: F) -> load::Run
    where
        F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let mut runs = Vec::new();
        for _ in 0..self.s.runs {
            runs.push(load::closed_loop(clients, self.s.length, request.clone()).await);
        }
        load::median(runs)
    }

    /// Brings the stack to rest before a measured batch of runs. The tables the loads
    /// write are vacuumed, as pgbench vacuums its own tables before a run: an autovacuum
    /// that earlier runs set off is seconds of CPU on a table of a million payments, and
    /// would land in one side's runs and not the other's. Then the change stream applies
    /// what earlier runs wrote (`metrics::at_rest`).
    pub async fn quiet(&self) -> anyhow::Result<()> {
        sqlx::query(
            "VACUUM (ANALYZE) payments, payment_intents, payment_status_history, stripe_events, idempotency_keys",
        )
        .execute(&self.primary)
        .await?;
        at_rest(&self.http, &self.reconciler).await
    }

    /// The median tps of `s.runs` pgbench runs of `bench/sql/<script>` at `clients`, from
    /// a quiet stack.
    pub async fn floor(
        &self,
        script: &str,
        clients: usize,
        vars: &[(&str, String)],
    ) -> anyhow::Result<f64> {
        self.quiet().await?;
        let mut v = Vec::new();
        for _ in 0..self.s.runs {
            v.push(self.floor_once(script, clients, vars).await?);
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    }

    /// The tps of one pgbench run of `bench/sql/<script>` at `clients`.
    pub async fn floor_once(
        &self,
        script: &str,
        clients: usize,
        vars: &[(&str, String)],
    ) -> anyhow::Result<f64> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("sql")
            .join(script);
        pgbench::tps(&self.db_url, &script, clients, self.s.length, vars).await
    }
}

/// Resource use with nothing sent: the table's baseline for the peak column.
async fn idle(ctx: &mut Ctx<'_>) {
    println!("resource use at idle (5 s) ...");
    let before = procs::sample();
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctx.report.idle = procs::between(&before, &procs::sample());
}

/// The run's API clients' keys.
pub struct Keys {
    /// The client of the first key; the fixtures the stages insert belong to it.
    pub client: Uuid,
    pub all: Arc<Vec<String>>,
}

impl Keys {
    /// `n` client keys, spread so no key nears its rate limit (100/s per instance).
    pub async fn create(primary: &PgPool, n: usize) -> anyhow::Result<Keys> {
        let mut all = Vec::new();
        let mut first = None;
        let run = Uuid::now_v7();
        for i in 0..n {
            let (client, key) = keys::create(
                &primary.clone().into(),
                &format!("bench-{run}-{i}"),
                Role::Client,
            )
            .await?;
            first.get_or_insert(client);
            all.push(key);
        }
        Ok(Keys {
            client: first.context("no keys")?.as_uuid(),
            all: Arc::new(all),
        })
    }
}

/// POST /v1/payments as a client sends it.
fn post_payment(
    http: &reqwest::Client,
    api: &str,
    key: &str,
    idempotency_key: String,
) -> reqwest::RequestBuilder {
    http.post(format!("{api}/v1/payments"))
        .bearer_auth(key)
        .header("Idempotency-Key", idempotency_key)
        .json(&json!({"amount": 1250, "currency": "usd", "description": "bench"}))
}

/// One new payment through the API, with key number `k` (mod the keys): whether it was
/// created (201).
fn create_payment(
    http: &reqwest::Client,
    api: &str,
    keys: &[String],
    k: usize,
) -> impl Future<Output = bool> + Send + use<> {
    let request = post_payment(http, api, &keys[k % keys.len()], Uuid::now_v7().to_string());
    async move {
        request
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED)
    }
}
