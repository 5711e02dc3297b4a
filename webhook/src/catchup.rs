//! Catch-up: reads the PaymentIntent and refund events Stripe did not manage to deliver
//! (`GET /v1/events?delivery_success=false`) and feeds them through the same path as
//! webhooks, so a webhook outage heals without waiting for the reconciler's polls (and a
//! refund that fails after it succeeded, which no poll watches, still reaches us).

use std::time::{Duration, Instant};

use paystream_core::gateway::GatewayError;
use paystream_core::ratelimit::TokenBucket;
use paystream_db::Primary;
use paystream_db::events::Via;
use paystream_service::runtime::tick;
use paystream_stripe::{EventPage, StripeApi};
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

/// The catch-up's share of Stripe's rate limit, which is the account's (the API's creates
/// spend the same budget): list requests a second, two at once.
pub const PAGES_PER_SEC: u32 = 1;

/// A pass waits out this many 429s in a row, 1 s, 2 s, 4 s... apart, before it gives up.
const RATE_LIMITED_RETRIES: u32 = 5;

/// Paces a pass's list requests, and waits out a 429 instead of ending the pass. A pass
/// ended by a 429 starts again from the newest page at the next tick: behind more
/// undelivered events than fit under the limit, it would never complete, and would spend
/// the account's budget trying (seen after the benchmarks dropped 5,000 payments'
/// webhooks: 100-page passes failing back to back, 3.5 requests a second).
#[derive(Debug)]
pub struct Pace {
    bucket: TokenBucket,
}

impl Pace {
    pub fn new(pages_per_sec: u32) -> Pace {
        Pace {
            bucket: TokenBucket::new(pages_per_sec, 2, Instant::now()),
        }
    }

    async fn page(
        &mut self,
        stripe: &StripeApi,
        kind: &str,
        since: i64,
        after: Option<&str>,
    ) -> Result<EventPage, GatewayError> {
        let mut backoff = Duration::from_secs(1);
        let mut retries = 0;
        loop {
            while let Err(wait) = self.bucket.take(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            match stripe.list_events(kind, since, true, after).await {
                Err(GatewayError::RateLimited) if retries < RATE_LIMITED_RETRIES => {
                    tracing::debug!(
                        kind,
                        retry_in_ms = backoff.as_millis() as u64,
                        "catch-up rate limited"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    retries += 1;
                }
                answered => return answered,
            }
        }
    }
}

/// One pass over undelivered events created at or after `since` (unix seconds), through
/// the same gateway as every other Stripe call (its timeout), paced by `pace`; a pass that
/// fails is tried again at the next tick.
pub async fn run_once(
    stripe: &StripeApi,
    db: &Primary,
    since: i64,
    pace: &mut Pace,
) -> Result<Pass, CatchupError> {
    let mut pass = Pass::default();
    for kind in KINDS {
        let mut after: Option<String> = None;
        loop {
            let page = pace.page(stripe, kind, since, after.as_deref()).await?;
            pass.listed += page.data.len();
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
                    pass.new += 1;
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
    Ok(pass)
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Undelivered events Stripe listed.
    pub listed: usize,
    /// Of them, those new to us (not counting those that could change nothing).
    pub new: usize,
}

/// Where each pass starts looking. A pass that completed listed every event that was
/// undelivered then (Stripe lists an event whose delivery is still pending as
/// undelivered), and fed each through the same path as a webhook: the next pass needs only
/// the events created since it started, less `overlap` for the clocks (ours gives the
/// start, Stripe's an event's `created`). Re-listing all of the lookback's undelivered
/// events every pass cost the webhook service and Stripe work in proportion to every event
/// ever dropped (on a busy stack, 2.7 pages a second without a pause, idle or not); now
/// that is the first pass's work only, after each start.
#[derive(Debug)]
pub struct Catchup {
    lookback: Duration,
    overlap: Duration,
    /// Unix seconds: every event created since was seen by a completed pass.
    covered: Option<i64>,
    pace: Pace,
}

/// A pass rereads the 5 minutes before the previous one started: for the clocks (ours
/// gives a pass's start, Stripe's an event's `created`) and for the event list's own lag,
/// both seconds at most. Each second of it is rereading: after a burst of undelivered
/// events, passes list them again, paced, for this long.
pub const OVERLAP: Duration = Duration::from_secs(300);

impl Catchup {
    pub fn new(lookback: Duration, overlap: Duration) -> Catchup {
        Catchup {
            lookback,
            overlap,
            covered: None,
            pace: Pace::new(PAGES_PER_SEC),
        }
    }

    /// The `created` a pass starting at `now` lists from.
    pub fn since(&self, now: i64) -> i64 {
        let oldest = now.saturating_sub(secs(self.lookback));
        self.covered.map_or(oldest, |covered| covered.max(oldest))
    }

    /// One pass ([`run_once`]); a failed one leaves the cursor where it was.
    pub async fn pass(&mut self, stripe: &StripeApi, db: &Primary) -> Result<Pass, CatchupError> {
        let started = crate::now_unix();
        let pass = run_once(stripe, db, self.since(started), &mut self.pace).await?;
        self.covered = Some(started.saturating_sub(secs(self.overlap)));
        Ok(pass)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// On start and then every `every` until shutdown: looks back `lookback` on the first
/// pass (Stripe retries deliveries for 3 days; its event list keeps 30), then from where
/// the previous pass started ([`Catchup`]).
pub async fn run_loop(
    api: StripeConfig,
    db: Primary,
    every: Duration,
    lookback: Duration,
    token: CancellationToken,
) -> Result<(), String> {
    let stripe = api.gateway().map_err(|e| e.to_string())?;
    let mut catchup = Catchup::new(lookback, OVERLAP);
    loop {
        match catchup.pass(&stripe, &db).await {
            Ok(Pass { new: 0, .. }) => {}
            Ok(Pass { new, listed }) => {
                tracing::info!(events = new, listed, "catch-up applied undelivered events");
            }
            Err(e) => tracing::warn!(error = %e, "catch-up failed; retrying later"),
        }
        if !tick(&token, every).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pass_looks_back_the_whole_lookback_and_the_next_from_the_last_start() {
        let day = Duration::from_secs(86_400);
        let mut c = Catchup::new(day, Duration::from_secs(600));
        assert_eq!(c.since(1_000_000), 1_000_000 - 86_400);
        c.covered = Some(1_000_000 - 600);
        assert_eq!(c.since(1_000_060), 1_000_000 - 600);
        // Never further back than the lookback, however long ago the last pass was.
        assert_eq!(c.since(2_000_000), 2_000_000 - 86_400);
        let unbounded = Catchup::new(Duration::MAX, Duration::MAX);
        assert_eq!(unbounded.since(5), 5 - i64::MAX);
    }
}
