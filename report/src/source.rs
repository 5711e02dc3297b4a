//! Stripe's side of a report: its intents and refunds from its lists, paginated and
//! rate-limited. Our side comes from a read replica (`paystream_db::replica`), never the
//! primary.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paystream_core::{
    GatewayError, IntentView, RefundStatus, RefundView, StripeGateway, TokenBucket,
};
use paystream_db::Replica;
use paystream_db::replica;
use uuid::Uuid;

use crate::classify::Ours;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Db(#[from] paystream_db::DbError),
    #[error("stripe: {0}")]
    Stripe(#[from] GatewayError),
    #[error(transparent)]
    Bulk(#[from] crate::bulk::BulkError),
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
pub(crate) async fn retrying<T, F, Fut>(mut call: F) -> Result<T, GatewayError>
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

/// Both sides of a report's refunds.
#[derive(Debug, Clone, Default)]
pub struct Refunds {
    pub ours: Vec<paystream_db::replica::RefundRow>,
    pub payments: Vec<paystream_db::replica::RefundedPayment>,
    pub theirs: Vec<RefundView>,
}

/// Stripe's refunds created in the window, then ours that those name or that were made in
/// the window (`replica::refund_books`, with every refund of their payments), then what
/// Stripe has of ours that its list left out: each Stripe refund we hold that it did not
/// list (fetched one by one; one Stripe does not know is simply absent), and the refunds
/// of intents where a pending refund of ours holds no Stripe id yet (the API may have
/// died between Stripe's answer and storing it).
pub async fn refunds<G: StripeGateway>(
    replica: &Replica,
    stripe: &G,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    rate_per_sec: u32,
) -> Result<Refunds, SourceError> {
    let mut paced = Paced {
        bucket: TokenBucket::new(rate_per_sec.max(1), rate_per_sec.max(1), Instant::now()),
    };
    let mut theirs: Vec<RefundView> = Vec::new();
    let mut after: Option<String> = None;
    let created_lt = until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0);
    loop {
        paced.wait().await;
        let page = retrying(|| {
            stripe.list_refunds_created(since.timestamp(), created_lt, after.as_deref())
        })
        .await?;
        theirs.extend(page.data);
        match (page.has_more, theirs.last()) {
            (true, Some(last)) => after = Some(last.id.clone()),
            _ => break,
        }
    }
    let stripe_ids: Vec<String> = theirs.iter().map(|r| r.id.clone()).collect();
    let refund_ids: Vec<Uuid> = theirs
        .iter()
        .filter_map(|r| r.refund_id.as_deref()?.parse().ok())
        .collect();
    let mut intents: Vec<String> = theirs
        .iter()
        .filter_map(|r| r.payment_intent.clone())
        .collect();
    intents.sort_unstable();
    intents.dedup();
    let books =
        replica::refund_books(replica, since, until, &stripe_ids, &refund_ids, &intents).await?;

    let mut listed: HashSet<String> = stripe_ids.into_iter().collect();
    let named: HashSet<String> = theirs.iter().filter_map(|r| r.refund_id.clone()).collect();
    let mut unsent_intents: Vec<&str> = Vec::new();
    for r in &books.refunds {
        match &r.stripe_refund_id {
            Some(id) if !listed.contains(id) => {
                paced.wait().await;
                match retrying(|| stripe.retrieve_refund(id)).await {
                    Ok(found) => {
                        listed.insert(found.id.clone());
                        theirs.push(found);
                    }
                    Err(GatewayError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None if r.status == RefundStatus::Pending && !named.contains(&r.id.to_string()) => {
                if let Some(pi) = r.intent.as_deref() {
                    unsent_intents.push(pi);
                }
            }
            _ => {}
        }
    }
    unsent_intents.sort_unstable();
    unsent_intents.dedup();
    for pi in unsent_intents {
        paced.wait().await;
        for found in retrying(|| stripe.list_refunds(pi)).await? {
            if listed.insert(found.id.clone()) {
                theirs.push(found);
            }
        }
    }
    Ok(Refunds {
        ours: books.refunds,
        payments: books.payments,
        theirs,
    })
}
