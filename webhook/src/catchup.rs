//! Catch-up: reads the PaymentIntent and refund events Stripe did not manage to deliver
//! (`GET /v1/events?delivery_success=false`) and feeds them through the same path as
//! webhooks, so a webhook outage heals without waiting for the reconciler's polls (and a
//! refund that fails after it succeeded, which no poll watches, still reaches us).

use std::time::Duration;

use paystream_core::gateway::GatewayError;
use paystream_db::Primary;
use paystream_db::events::Via;
use paystream_service::runtime::tick;
use paystream_stripe::StripeApi;
use tokio_util::sync::CancellationToken;

use crate::events;

pub use paystream_stripe::StripeConfig;

#[derive(Debug, thiserror::Error)]
pub enum CatchupError {
    #[error("stripe: {0}")]
    Stripe(#[from] GatewayError),
    #[error(transparent)]
    Db(#[from] paystream_db::DbError),
}

/// The events that can change a payment or a refund of ours (Stripe's `type` filter
/// takes one wildcard pattern per request).
const KINDS: [&str; 2] = ["payment_intent.*", "refund.*"];

/// One pass over undelivered events created at or after `since` (unix seconds), through
/// the same gateway as every other Stripe call (its timeout; a 429 is `RateLimited`, and
/// the pass is tried again at the next tick). Returns how many events were new to us
/// (not counting those that could change nothing).
pub async fn run_once(stripe: &StripeApi, db: &Primary, since: i64) -> Result<usize, CatchupError> {
    let mut new = 0;
    for kind in KINDS {
        let mut after: Option<String> = None;
        loop {
            let page = stripe
                .list_events(kind, since, true, after.as_deref())
                .await?;
            let ids: Vec<&str> = page.data.iter().filter_map(|e| e["id"].as_str()).collect();
            let stored = paystream_db::events::stored(db, &ids).await?;
            for event in &page.data {
                if event["id"].as_str().is_some_and(|id| stored.contains(id)) {
                    continue;
                }
                let outcome = events::process(db, event, Via::Catchup).await?;
                if !matches!(
                    outcome,
                    events::Outcome::Duplicate | events::Outcome::Ignored
                ) {
                    new += 1;
                }
            }
            match (
                page.has_more,
                page.data.last().and_then(|e| e["id"].as_str()),
            ) {
                (true, Some(last)) => after = Some(last.to_owned()),
                _ => break,
            }
        }
    }
    Ok(new)
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
    let stripe = api.gateway().map_err(|e| e.to_string())?;
    loop {
        let since = crate::now_unix() - lookback.as_secs() as i64;
        match run_once(&stripe, &db, since).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "catch-up applied undelivered events"),
            Err(e) => tracing::warn!(error = %e, "catch-up failed; retrying later"),
        }
        if !tick(&token, every).await {
            return Ok(());
        }
    }
}
