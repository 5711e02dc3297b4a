//! Stripe's side of a report: its intents from its list, paginated and rate-limited. Our
//! side comes from a read replica (`paystream_db::replica`), never the primary.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paystream_core::{GatewayError, IntentView, StripeGateway, TokenBucket};

use crate::classify::Ours;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Db(#[from] paystream_db::DbError),
    #[error("stripe: {0}")]
    Stripe(#[from] GatewayError),
}

/// Calls to Stripe, paced by a token bucket (`rate` per second).
struct Paced {
    bucket: TokenBucket,
}

impl Paced {
    async fn wait(&mut self) {
        while let Err(wait) = self.bucket.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Stripe's intents created in the window, plus those of `ours` that fell outside it
/// (fetched one by one; an intent Stripe does not know is simply absent). `progress`
/// hears the count fetched so far.
pub async fn stripe_intents<G: StripeGateway>(
    stripe: &G,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    ours: &[Ours],
    rate_per_sec: u32,
    mut progress: impl FnMut(usize),
) -> Result<Vec<IntentView>, SourceError> {
    let mut paced = Paced {
        bucket: TokenBucket::new(rate_per_sec.max(1), rate_per_sec.max(1), Instant::now()),
    };
    let mut out: Vec<IntentView> = Vec::new();
    let mut after: Option<String> = None;
    // Stripe's `created` is in whole seconds: the window's end rounds up, or an intent
    // made in the last second (e.g. "until now") would be left out.
    let created_lt = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
    loop {
        paced.wait().await;
        let page =
            retrying(|| stripe.list_intents(since.timestamp(), created_lt, after.as_deref()))
                .await?;
        out.extend(page.data);
        progress(out.len());
        match (page.has_more, out.last()) {
            (true, Some(last)) => after = Some(last.id.clone()),
            _ => break,
        }
    }
    let listed: HashSet<String> = out.iter().map(|i| i.id.clone()).collect();
    for pi in ours.iter().filter_map(|o| o.intent.as_deref()) {
        if listed.contains(pi) {
            continue;
        }
        paced.wait().await;
        match retrying(|| stripe.retrieve_intent(pi)).await {
            Ok(i) => out.push(i),
            Err(GatewayError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        progress(out.len());
    }
    Ok(out)
}

/// Retries what Stripe says is worth retrying (429, 409, 5xx), with backoff.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, GatewayError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    let mut backoff = Duration::from_millis(250);
    for _ in 0..6 {
        match call().await {
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            other => return other,
        }
    }
    call().await
}
