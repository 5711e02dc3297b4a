//! Catch-up: reads the PaymentIntent and refund events Stripe did not manage to deliver
//! (`GET /v1/events?delivery_success=false`) and feeds them through the same path as
//! webhooks, so a webhook outage heals without waiting for the reconciler's polls (and a
//! refund that fails after it succeeded, which no poll watches, still reaches us).

use std::time::Duration;

use paystream_db::Primary;
use paystream_db::events::Via;
use paystream_service::runtime::tick;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::events;

pub use paystream_stripe::StripeConfig;

#[derive(Debug, thiserror::Error)]
pub enum CatchupError {
    #[error("stripe: {0}")]
    Stripe(String),
    #[error(transparent)]
    Db(#[from] paystream_db::DbError),
}

#[derive(Deserialize)]
struct EventPage {
    data: Vec<Value>,
    has_more: bool,
}

/// The events that can change a payment or a refund of ours (Stripe's `type` filter
/// takes one wildcard pattern per request).
const KINDS: [&str; 2] = ["payment_intent.*", "refund.*"];

/// One pass over undelivered events created at or after `since` (unix seconds).
/// Returns how many events were new to us.
pub async fn run_once(
    http: &reqwest::Client,
    api: &StripeConfig,
    db: &Primary,
    since: i64,
) -> Result<usize, CatchupError> {
    let mut new = 0;
    for kind in KINDS {
        new += run_kind(http, api, db, since, kind).await?;
    }
    Ok(new)
}

async fn run_kind(
    http: &reqwest::Client,
    api: &StripeConfig,
    db: &Primary,
    since: i64,
    kind: &str,
) -> Result<usize, CatchupError> {
    let mut new = 0;
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![
            ("type".to_owned(), kind.to_owned()),
            ("delivery_success".to_owned(), "false".to_owned()),
            ("created[gte]".to_owned(), since.to_string()),
            ("limit".to_owned(), "100".to_owned()),
        ];
        if let Some(a) = &after {
            query.push(("starting_after".to_owned(), a.clone()));
        }
        let res = http
            .get(format!("{}/v1/events", api.api_base.trim_end_matches('/')))
            .bearer_auth(&api.secret_key)
            .header("Stripe-Version", paystream_stripe::STRIPE_VERSION)
            .query(&query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| CatchupError::Stripe(e.to_string()))?;
        if !res.status().is_success() {
            return Err(CatchupError::Stripe(format!(
                "GET /v1/events answered {}",
                res.status()
            )));
        }
        let page: EventPage = res
            .json()
            .await
            .map_err(|e| CatchupError::Stripe(e.to_string()))?;
        for event in &page.data {
            if events::process(db, event, Via::Catchup).await? != events::Outcome::Duplicate {
                new += 1;
            }
        }
        match (
            page.has_more,
            page.data.last().and_then(|e| e["id"].as_str()),
        ) {
            (true, Some(last)) => after = Some(last.to_owned()),
            _ => return Ok(new),
        }
    }
}

/// On start and then every `every` until shutdown: looks back `lookback` (Stripe retries
/// deliveries for 3 days; its event list keeps 30).
pub async fn run_loop(
    api: StripeConfig,
    db: Primary,
    every: Duration,
    lookback: Duration,
    token: CancellationToken,
) -> Result<(), String> {
    let http = reqwest::Client::new();
    loop {
        let since = crate::now_unix() - lookback.as_secs() as i64;
        match run_once(&http, &api, &db, since).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "catch-up applied undelivered events"),
            Err(e) => tracing::warn!(error = %e, "catch-up failed; retrying later"),
        }
        if !tick(&token, every).await {
            return Ok(());
        }
    }
}
