//! Stripe's event list: for the webhook catch-up, each event as its JSON (it is stored as
//! received and read by the same code as a webhook's body); for the reconciler's sweep,
//! PaymentIntent events read through async-stripe's model. The request is async-stripe's
//! `ListEvent` either way.

use paystream_core::gateway::{GatewayError, IntentEvent, IntentEventPage};
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
        let mut list = since_list(since, starting_after).type_(kind);
        if undelivered {
            list = list.delivery_success(false);
        }
        let page = self.event_page(list).await?;
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

/// Events created at or after `since`, 100 a page, after `starting_after`.
fn since_list(since: i64, starting_after: Option<&str>) -> ListEvent {
    let list = ListEvent::new()
        .created(RangeQueryTs::Bounds(RangeBoundsTs {
            gte: Some(since),
            ..Default::default()
        }))
        .limit(100);
    match starting_after {
        Some(after) => list.starting_after(after),
        None => list,
    }
}

impl StripeApi {
    async fn event_page(
        &self,
        list: ListEvent,
    ) -> Result<List<miniserde::json::Value>, GatewayError> {
        list.build()
            .customize()
            .send(&self.client)
            .await
            .map_err(|CallError(e)| e)
    }

    /// See `StripeGateway::intent_events`. An event whose object async-stripe cannot read
    /// is skipped with a warning: the sweep only speeds up what polls would find anyway.
    pub(crate) async fn intent_event_page(
        &self,
        types: &[&str],
        since: i64,
        starting_after: Option<&str>,
    ) -> Result<IntentEventPage, GatewayError> {
        let list = since_list(since, starting_after)
            .types(types.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>());
        let page = self.event_page(list).await?;
        let mut data = Vec::with_capacity(page.data.len());
        let mut last = None;
        for raw in &page.data {
            let event: serde_json::Value =
                serde_json::from_str(&miniserde::json::to_string(raw))
                    .map_err(|e| GatewayError::Unavailable(format!("unreadable event: {e}")))?;
            let (Some(id), Some(created)) = (event["id"].as_str(), event["created"].as_i64())
            else {
                return Err(GatewayError::Unavailable(
                    "an event without id or created".into(),
                ));
            };
            last = Some(id.to_owned());
            match crate::intent_from_json(&event["data"]["object"].to_string()) {
                Ok(intent) => data.push(IntentEvent {
                    id: id.to_owned(),
                    created,
                    intent,
                }),
                Err(e) => tracing::warn!(event = id, error = %e, "event skipped by the sweep"),
            }
        }
        Ok(IntentEventPage {
            data,
            has_more: page.has_more,
            last,
        })
    }
}
