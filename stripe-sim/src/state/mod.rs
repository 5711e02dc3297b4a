//! The simulator's in-memory model, one module per resource (intents, charges, refunds,
//! payment methods, events, webhook endpoints, deliveries, search), composed by `State`. Every mutation happens under
//! the one lock around `State`, so cross-resource steps (a charge emits events, which
//! queue deliveries) are atomic.

mod booking;
mod cards;
mod charges;
mod deliveries;
mod endpoints;
mod events;
mod intents;
mod ledger;
mod list;
mod metadata;
mod payment_methods;
mod payments;
mod refunding;
mod refunds;
mod reporting;
mod search;
mod seeded;
mod seeding;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use deliveries::{
    Attempt, Deliveries, Delivery, DeliveryError, DeliveryFault, DeliveryId, DeliveryStatus,
    Recorded,
};
pub use events::API_VERSION;
pub use reporting::ReportJob;
pub use seeding::LedgerSeed;

use crate::error::StripeError;
use crate::faults::Faults;
use crate::form::Params;
use cards::ForcedDeclines;
use charges::Charges;
use endpoints::{Change, Endpoints, Fields};
use events::Events;
use intents::Intents;
use ledger::Ledger;
use payment_methods::PaymentMethods;
use refunds::Refunds;
use reporting::Reporting;
use seeded::Seeded;

/// Tunables of the simulated world (not faults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct World {
    pub processing_ms: i64,
    /// How long an ordinary card refund stays `pending` (0: `succeeded` at once, as in
    /// Stripe's test mode).
    pub refund_ms: i64,
    /// How long after its creation a `pm_card_refundFail` refund turns `failed`.
    pub refund_fail_ms: i64,
    /// How long a manual-capture authorization waits for its capture before Stripe
    /// cancels the intent (7 days for cards).
    pub uncaptured_expiry_ms: i64,
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
    pub retry_horizon_ms: i64,
    pub delivery_timeout_ms: u64,
    /// Rate limits (requests per second): per endpoint (method + path shape) and global.
    pub per_endpoint_rate: u32,
    pub global_rate: u32,
}

impl Default for World {
    fn default() -> Self {
        World {
            processing_ms: 5_000,
            refund_ms: 2_000,
            refund_fail_ms: 2 * 24 * 3_600_000,
            uncaptured_expiry_ms: 7 * 24 * 3_600_000,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
            retry_horizon_ms: 3 * 24 * 3_600_000,
            delivery_timeout_ms: 10_000,
            per_endpoint_rate: 25,
            global_rate: 100,
        }
    }
}

/// Who asked: recorded on the events a request causes.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub now_ms: i64,
}

impl Ctx {
    fn now(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }
}

/// An API fault drawn for one request, before its endpoint runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    RateLimited,
    Error,
}

/// A due delivery, ready to be signed and sent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: DeliveryId,
    pub url: String,
    pub payload: String,
    /// The endpoint's live secrets: more than one during a roll.
    pub secrets: Vec<String>,
    pub fault: Option<DeliveryFault>,
}

pub struct State {
    dice: Seeded,
    faults: Faults,
    world: World,
    intents: Intents,
    charges: Charges,
    refunds: Refunds,
    payment_methods: PaymentMethods,
    forced_declines: ForcedDeclines,
    events: Events,
    endpoints: Endpoints,
    deliveries: Deliveries,
    ledger: Ledger,
    reporting: Reporting,
    /// The ids of balance transactions, report runs and files: a stream of their own, so
    /// that the ids of everything else stay what they were before these existed.
    books: Seeded,
    instance: u64,
}

impl State {
    pub fn new(seed: u64, world: World) -> State {
        State {
            dice: Seeded::new(seed),
            faults: Faults::default(),
            world,
            intents: Intents::default(),
            charges: Charges::default(),
            refunds: Refunds::default(),
            payment_methods: PaymentMethods::default(),
            forced_declines: ForcedDeclines::default(),
            events: Events::default(),
            endpoints: Endpoints::default(),
            deliveries: Deliveries::default(),
            ledger: Ledger::default(),
            reporting: Reporting::default(),
            books: Seeded::new(seed ^ 0xB00C_5EED_B00C_5EED),
            instance: reporting::next_instance(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.dice.seed()
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn set_world(&mut self, world: World) {
        self.world = world;
    }

    pub fn decline_next(&mut self, pm: &str, count: u32) {
        self.forced_declines.set(pm, count);
    }

    /// Draws the API faults for one request, in a fixed order so seeded runs replay.
    pub fn roll_api_fault(&mut self) -> Option<ApiFault> {
        if self.dice.roll(self.faults.api_rate_limit_rate) {
            Some(ApiFault::RateLimited)
        } else if self.dice.roll(self.faults.api_error_rate) {
            Some(ApiFault::Error)
        } else {
            None
        }
    }

    /// Records an event and queues its deliveries to every endpoint that wants it.
    fn emit(&mut self, kind: &str, object: Value, ctx: &Ctx) {
        self.emit_change(kind, object, None, ctx);
    }

    /// An event that reports a change carries the changed fields' old values.
    fn emit_change(&mut self, kind: &str, object: Value, previous: Option<Value>, ctx: &Ctx) {
        let id = self.dice.id("evt");
        let endpoints = self.endpoints.wanting(kind);
        self.events
            .record(id.clone(), kind, (object, previous), ctx, endpoints.len());
        for endpoint_id in endpoints {
            self.deliveries
                .queue(&id, &endpoint_id, ctx.now_ms, &self.faults, &mut self.dice);
        }
    }

    pub fn list_balance_transactions(&self, p: &Params, now: i64) -> Result<Value, StripeError> {
        self.ledger.list(p, now)
    }

    pub fn retrieve_balance_transaction(&self, id: &str, now: i64) -> Result<Value, StripeError> {
        self.ledger.retrieve(id, now)
    }

    pub fn list_events(&self, p: &Params) -> Result<Value, StripeError> {
        self.events.list(p)
    }

    pub fn event(&self, id: &str) -> Result<Value, StripeError> {
        self.events.retrieve(id)
    }

    pub fn create_endpoint(
        &mut self,
        p: &Params,
        ctx: &Ctx,
        secret: Option<String>,
    ) -> Result<Value, StripeError> {
        let fields = Fields::create(p)?;
        let id = self.dice.id("we");
        let secret = secret.unwrap_or_else(|| self.dice.webhook_secret());
        Ok(self.endpoints.add(id, fields, secret, ctx.now()))
    }

    pub fn retrieve_endpoint(&self, id: &str) -> Result<Value, StripeError> {
        self.endpoints.retrieve(id)
    }

    /// Disabling stops the endpoint's pending deliveries and retries, as deleting does.
    pub fn update_endpoint(&mut self, id: &str, p: &Params) -> Result<Value, StripeError> {
        let fields = Fields::update(p)?;
        let (v, change) = self.endpoints.update(id, fields)?;
        if change == Change::Stopped {
            self.deliveries.cancel_for_endpoint(id);
        }
        Ok(v)
    }

    pub fn delete_endpoint(&mut self, id: &str) -> Result<Value, StripeError> {
        let v = self.endpoints.delete(id)?;
        self.deliveries.cancel_for_endpoint(id);
        Ok(v)
    }

    pub fn list_endpoints(&self) -> Value {
        json!({
            "object": "list",
            "data": self.endpoints.to_json(),
            "has_more": false,
            "url": "/v1/webhook_endpoints",
        })
    }

    /// Rolls an endpoint's secret; the old ones expire `old_expires_in_ms` from now.
    pub fn roll_secret(
        &mut self,
        endpoint_id: &str,
        old_expires_in_ms: i64,
        new_secret: Option<String>,
        now_ms: i64,
    ) -> Result<Value, StripeError> {
        let fresh = new_secret.unwrap_or_else(|| self.dice.webhook_secret());
        self.endpoints
            .roll_secret(endpoint_id, fresh, now_ms.saturating_add(old_expires_in_ms))
    }

    pub fn deliveries(&self) -> &[Delivery] {
        self.deliveries.all()
    }

    /// Takes the deliveries due at `now_ms` and marks them as being sent.
    pub fn take_due_deliveries(&mut self, now_ms: i64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for id in self.deliveries.take_due(now_ms) {
            let Some(d) = self.deliveries.get(id) else {
                continue;
            };
            let (Some(endpoint), Some(event)) = (
                self.endpoints.get(d.endpoint_id()).filter(|e| e.enabled()),
                self.events.get(d.event_id()),
            ) else {
                // A retry that came due after its endpoint was disabled or deleted.
                let _ = self.deliveries.cancel(id);
                continue;
            };
            let outgoing = Outgoing {
                id,
                url: endpoint.url().to_owned(),
                payload: event.to_json().to_string(),
                secrets: endpoint
                    .live_secrets(now_ms)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                fault: d.fault(),
            };
            // Just taken from the pending queue, so it is pending and this succeeds.
            if self.deliveries.start_sending(id).is_ok() {
                out.push(outgoing);
            }
        }
        out
    }

    pub fn record_delivery(
        &mut self,
        id: DeliveryId,
        attempt: Attempt,
        now_ms: i64,
    ) -> Result<Recorded, DeliveryError> {
        let recorded = self.deliveries.record(id, attempt, now_ms, &self.world)?;
        if let Recorded::FirstDelivery { event_id } = &recorded {
            self.events.delivered_to_one(event_id);
        }
        Ok(recorded)
    }

    pub fn dump(&self) -> Value {
        json!({
            "seed": self.dice.seed(),
            "faults": self.faults,
            "world": self.world,
            "payment_intents": self.intents.oldest_first().map(|i| i.to_json()).collect::<Vec<_>>(),
            "charges": self.charges.oldest_first().map(|c| c.to_json(None)).collect::<Vec<_>>(),
            "refunds": self.refunds.oldest_first().map(|r| r.to_json()).collect::<Vec<_>>(),
            "payment_methods": self.payment_methods,
            "events": self.events.all().iter().map(|e| e.to_json()).collect::<Vec<_>>(),
            "webhook_endpoints": self.endpoints.to_json(),
            "deliveries": self.deliveries.all(),
            "forced_declines": self.forced_declines,
        })
    }
}
