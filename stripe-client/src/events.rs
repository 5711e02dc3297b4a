//! Stripe's event list, for the webhook catch-up: the request is async-stripe's
//! `ListEvent`; each event comes back as its JSON, because it is stored as received and
//! read by the same code as a webhook's body.

use paystream_core::gateway::GatewayError;
use stripe_client_core::StripeRequest;
use stripe_core::event::ListEvent;
use stripe_types::{List, RangeBoundsTs, RangeQueryTs};

use crate::StripeApi;
use crate::transport::CallError;

/// A page of events, newest first.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub data: Vec<serde_json::Value>,
    pub has_more: bool,
}

impl StripeApi {
    /// One page (up to 100) of the events of `kind` (one of Stripe's type patterns, such
    /// as `payment_intent.*`) created at or after `since` (unix seconds), after
    /// `starting_after`; only those Stripe has not managed to deliver when `undelivered`.
    pub async fn list_events(
        &self,
        kind: &str,
        since: i64,
        undelivered: bool,
        starting_after: Option<&str>,
    ) -> Result<EventPage, GatewayError> {
        let mut list = ListEvent::new()
            .type_(kind)
            .created(RangeQueryTs::Bounds(RangeBoundsTs {
                gte: Some(since),
                ..Default::default()
            }))
            .limit(100);
        if undelivered {
            list = list.delivery_success(false);
        }
        if let Some(after) = starting_after {
            list = list.starting_after(after);
        }
        let page: List<miniserde::json::Value> = list
            .build()
            .customize()
            .send(&self.client)
            .await
            .map_err(|CallError(e)| e)?;
        let data = page
            .data
            .iter()
            .map(|e| serde_json::from_str(&miniserde::json::to_string(e)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| GatewayError::Unavailable(format!("unreadable event: {e}")))?;
        Ok(EventPage {
            data,
            has_more: page.has_more,
        })
    }
}
