//! The simulator's in-memory model: PaymentIntents, their status machine, Events and the
//! webhook deliveries they cause. Every mutation happens under one lock, in `State`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::StripeError;
use crate::faults::Faults;
use crate::form::Params;

pub const API_VERSION: &str = "2026-09-30.endive";

/// Test payment methods and what confirming with each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Succeeds,
    Declines(&'static str),
    RequiresAction,
    /// Stays `processing` for `processing_ms` of simulated time, then succeeds
    /// (like real asynchronous methods such as bank debits).
    Processing,
}

fn card(pm: &str) -> Option<Card> {
    Some(match pm {
        "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" => Card::Succeeds,
        "pm_card_chargeDeclined" => Card::Declines("generic_decline"),
        "pm_card_chargeDeclinedInsufficientFunds" => Card::Declines("insufficient_funds"),
        "pm_card_threeDSecure2Required" => Card::RequiresAction,
        "pm_sim_processing" => Card::Processing,
        _ => return None,
    })
}

/// Stripe's minimum charge amounts (in minor units) for the currencies the sim knows.
fn minimum_amount(currency: &str) -> Option<i64> {
    Some(match currency {
        "usd" | "eur" | "chf" | "cad" | "aud" => 50,
        "gbp" => 30,
        "jpy" => 50,
        "krw" => 100,
        "sek" | "nok" | "dkk" => 300,
        "pln" => 200,
        _ => return None,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Intent {
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub status: &'static str,
    pub capture_method: String,
    pub client_secret: String,
    pub description: Option<String>,
    pub receipt_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub payment_method: Option<String>,
    pub automatic_payment_methods: bool,
    pub amount_received: i64,
    pub amount_capturable: i64,
    pub last_payment_error: Option<Value>,
    pub latest_charge: Option<String>,
    pub canceled_at: Option<i64>,
    pub cancellation_reason: Option<String>,
    pub next_action: Option<Value>,
    /// Simulated time (ms) at which a `processing` intent succeeds.
    pub processing_until_ms: Option<i64>,
}

impl Intent {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": self.amount_capturable,
            "amount_details": {"tip": {}},
            "amount_received": self.amount_received,
            "application": null,
            "application_fee_amount": null,
            "automatic_payment_methods": if self.automatic_payment_methods {
                json!({"allow_redirects": "always", "enabled": true})
            } else { Value::Null },
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": self.capture_method,
            "client_secret": self.client_secret,
            "confirmation_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "customer": null,
            "description": self.description,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": false,
            "metadata": self.metadata,
            "next_action": self.next_action,
            "on_behalf_of": null,
            "payment_method": self.payment_method,
            "payment_method_configuration_details": null,
            "payment_method_options": {"card": {"installments": null, "mandate_options": null, "network": null, "request_three_d_secure": "automatic"}},
            "payment_method_types": ["card"],
            "processing": null,
            "receipt_email": self.receipt_email,
            "review": null,
            "setup_future_usage": null,
            "shipping": null,
            "source": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": self.status,
            "transfer_data": null,
            "transfer_group": null,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    pub created: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub object: Value,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub pending_webhooks: i64,
}

impl Event {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "event",
            "account": null,
            "api_version": API_VERSION,
            "created": self.created,
            "data": {"object": self.object},
            "livemode": false,
            "pending_webhooks": self.pending_webhooks,
            "request": {"id": self.request_id, "idempotency_key": self.idempotency_key},
            "type": self.kind,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub enabled_events: Vec<String>,
    /// Newest first. During a roll, the old secret stays until `expires_at_ms`.
    pub secrets: Vec<(String, Option<i64>)>,
    pub created: i64,
}

impl Endpoint {
    fn wants(&self, kind: &str) -> bool {
        self.enabled_events.iter().any(|e| e == "*" || e == kind)
    }

    pub fn to_json(&self, with_secret: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "webhook_endpoint",
            "api_version": API_VERSION,
            "application": null,
            "created": self.created,
            "description": null,
            "enabled_events": self.enabled_events,
            "livemode": false,
            "metadata": {},
            "status": "enabled",
            "url": self.url,
        });
        if with_secret {
            v["secret"] = json!(self.secrets[0].0);
        }
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryFault {
    StaleTimestamp,
    BadSignature,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: u64,
    pub event_id: String,
    pub endpoint_id: String,
    pub attempt: u32,
    pub first_due_ms: i64,
    pub due_ms: i64,
    pub fault: Option<DeliveryFault>,
    /// `pending`, `sending`, `delivered`, `failed` (gave up), `dropped` (fault: never sent).
    pub state: &'static str,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// A duplicate is a second copy: its success does not count towards pending_webhooks.
    pub duplicate: bool,
}

/// Tunables of the simulated world (not faults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct World {
    pub processing_ms: i64,
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

pub struct State {
    pub seed: u64,
    pub rng: StdRng,
    pub faults: Faults,
    pub world: World,
    pub intents: HashMap<String, Intent>,
    /// Creation order, oldest first (lists are served newest first).
    pub intent_order: Vec<String>,
    pub events: Vec<Event>,
    pub event_index: HashMap<String, usize>,
    pub endpoints: Vec<Endpoint>,
    pub deliveries: Vec<Delivery>,
    pub forced_declines: HashMap<String, u32>,
    /// Timers, so that no periodic work scans all state: processing intents by the time
    /// they complete, and pending deliveries by their due time.
    processing: BTreeSet<(i64, String)>,
    delivery_queue: BinaryHeap<Reverse<(i64, usize)>>,
    /// (event, endpoint) pairs delivered at least once: what `pending_webhooks` counts down.
    pub delivered: HashSet<(String, String)>,
    charges: HashMap<String, Value>,
}

impl State {
    pub fn new(seed: u64, world: World) -> State {
        State {
            seed,
            rng: StdRng::seed_from_u64(seed),
            faults: Faults::default(),
            world,
            intents: HashMap::new(),
            intent_order: Vec::new(),
            events: Vec::new(),
            event_index: HashMap::new(),
            endpoints: Vec::new(),
            deliveries: Vec::new(),
            forced_declines: HashMap::new(),
            processing: BTreeSet::new(),
            delivery_queue: BinaryHeap::new(),
            delivered: HashSet::new(),
            charges: HashMap::new(),
        }
    }

    /// Stripe-shaped ids (`pi_3Q...`), drawn from the seeded generator.
    pub fn new_id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let tail: String = (0..24)
            .map(|_| ALPHABET[self.rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        format!("{prefix}_{tail}")
    }

    fn intent(&mut self, id: &str) -> Result<&mut Intent, StripeError> {
        self.intents
            .get_mut(id)
            .ok_or_else(|| StripeError::no_such("payment_intent", id, Some("intent")))
    }

    pub fn create_intent(&mut self, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let amount = p
            .int("amount")?
            .ok_or_else(|| StripeError::missing("amount"))?;
        let currency = p
            .string("currency")
            .ok_or_else(|| StripeError::missing("currency"))?;
        let Some(min) = minimum_amount(&currency) else {
            return Err(StripeError::invalid(
                format!(
                    "Invalid currency: {currency}. Stripe currently supports these currencies: usd, eur, gbp, jpy, ..."
                ),
                Some("currency"),
            ));
        };
        if amount < 1 {
            return Err(StripeError::invalid(
                "This value must be greater than or equal to 1.",
                Some("amount"),
            ));
        }
        if amount < min {
            return Err(StripeError::invalid(
                format!("Amount must be at least {min} {currency} minor units"),
                Some("amount"),
            )
            .with_code("amount_too_small"));
        }
        if amount > 99_999_999 {
            return Err(StripeError::invalid(
                "Amount must be no more than 99,999,999",
                Some("amount"),
            )
            .with_code("amount_too_large"));
        }
        let capture_method = p
            .string("capture_method")
            .unwrap_or_else(|| "automatic_async".into());
        if !["automatic", "automatic_async", "manual"].contains(&capture_method.as_str()) {
            return Err(StripeError::invalid(
                format!("Invalid capture_method: {capture_method}"),
                Some("capture_method"),
            ));
        }
        let metadata = p.map("metadata");
        validate_metadata(&metadata)?;
        let payment_method = p.string("payment_method");
        if let Some(pm) = &payment_method {
            if card(pm).is_none() {
                return Err(
                    StripeError::no_such("PaymentMethod", pm, Some("payment_method")).in_param(),
                );
            }
        }
        let confirm = p.bool("confirm")?.unwrap_or(false);
        let id = self.new_id("pi");
        let secret_tail = self.new_id("secret");
        let intent = Intent {
            client_secret: format!("{id}_{secret_tail}"),
            id: id.clone(),
            created: ctx.now(),
            amount,
            currency,
            status: if payment_method.is_some() {
                "requires_confirmation"
            } else {
                "requires_payment_method"
            },
            capture_method,
            description: p.string("description"),
            receipt_email: p.string("receipt_email"),
            metadata,
            payment_method,
            automatic_payment_methods: p
                .bool("automatic_payment_methods[enabled]")?
                .unwrap_or(false),
            amount_received: 0,
            amount_capturable: 0,
            last_payment_error: None,
            latest_charge: None,
            canceled_at: None,
            cancellation_reason: None,
            next_action: None,
            processing_until_ms: None,
        };
        let snapshot = intent.to_json();
        self.intents.insert(id.clone(), intent);
        self.intent_order.push(id.clone());
        self.emit("payment_intent.created", snapshot.clone(), ctx);
        if confirm {
            return self.confirm(&id, p.string("payment_method"), ctx);
        }
        Ok(snapshot)
    }

    pub fn retrieve(&mut self, id: &str) -> Result<Value, StripeError> {
        Ok(self.intent(id)?.to_json())
    }

    pub fn update(&mut self, id: &str, p: &Params) -> Result<Value, StripeError> {
        let changes = p.map("metadata");
        validate_metadata(&changes)?;
        let intent = self.intent(id)?;
        if ["succeeded", "canceled"].contains(&intent.status)
            && (p.has("amount") || p.has("currency"))
        {
            let msg = format!(
                "This PaymentIntent's amount could not be updated because it has a status of {}.",
                intent.status
            );
            return Err(StripeError::unexpected_state(msg, intent.to_json()));
        }
        for (k, v) in changes {
            // Stripe: setting a key to "" removes it.
            if v.is_empty() {
                intent.metadata.remove(&k);
            } else {
                intent.metadata.insert(k, v);
            }
        }
        if let Some(d) = p.string("description") {
            intent.description = Some(d);
        }
        Ok(intent.to_json())
    }

    pub fn confirm(
        &mut self,
        id: &str,
        pm: Option<String>,
        ctx: &Ctx,
    ) -> Result<Value, StripeError> {
        let intent = self.intent(id)?;
        if !["requires_payment_method", "requires_confirmation"].contains(&intent.status) {
            let msg = format!(
                "You cannot confirm this PaymentIntent because it has a status of {}. Only a PaymentIntent with one of the following statuses may be confirmed: requires_confirmation, requires_payment_method.",
                intent.status
            );
            return Err(StripeError::unexpected_state(msg, intent.to_json()));
        }
        let Some(pm) = pm.or_else(|| intent.payment_method.clone()) else {
            return Err(StripeError {
                code: Some("payment_intent_unexpected_state"),
                ..StripeError::invalid(
                    "You cannot confirm this PaymentIntent because it's missing a payment method. Update the PaymentIntent with a payment method and then confirm it again.",
                    Some("payment_method"),
                )
            });
        };
        let Some(mut behaviour) = card(&pm) else {
            return Err(
                StripeError::no_such("PaymentMethod", &pm, Some("payment_method")).in_param(),
            );
        };
        intent.payment_method = Some(pm.clone());
        intent.last_payment_error = None;
        if let Some(n) = self.forced_declines.get_mut(&pm).filter(|n| **n > 0) {
            *n -= 1;
            behaviour = Card::Declines("generic_decline");
        }
        match behaviour {
            Card::Succeeds => Ok(self.charge_succeeds(id, ctx)),
            Card::Declines(decline_code) => Err(self.charge_declines(id, decline_code, ctx)),
            Card::RequiresAction => {
                let intent = self.intent(id)?;
                intent.status = "requires_action";
                intent.next_action = Some(json!({
                    "type": "redirect_to_url",
                    "redirect_to_url": {"return_url": null, "url": format!("/_sim/payment_intents/{id}/authenticate")},
                }));
                let snap = intent.to_json();
                self.emit("payment_intent.requires_action", snap.clone(), ctx);
                Ok(snap)
            }
            Card::Processing => {
                let until = ctx.now_ms + self.world.processing_ms;
                let intent = self.intent(id)?;
                intent.status = "processing";
                intent.processing_until_ms = Some(until);
                let snap = intent.to_json();
                self.processing.insert((until, id.to_owned()));
                self.emit("payment_intent.processing", snap.clone(), ctx);
                Ok(snap)
            }
        }
    }

    /// The sim-only end of 3D Secure: the customer passes or fails the challenge.
    pub fn authenticate(
        &mut self,
        id: &str,
        succeed: bool,
        ctx: &Ctx,
    ) -> Result<Value, StripeError> {
        let intent = self.intent(id)?;
        if intent.status != "requires_action" {
            let msg = format!(
                "PaymentIntent {id} has status {}, not requires_action.",
                intent.status
            );
            return Err(StripeError::unexpected_state(msg, intent.to_json()));
        }
        intent.next_action = None;
        if succeed {
            return Ok(self.charge_succeeds(id, ctx));
        }
        intent.status = "requires_payment_method";
        intent.last_payment_error = Some(json!({
            "type": "invalid_request_error",
            "code": "payment_intent_authentication_failure",
            "message": "The provided PaymentMethod has failed authentication.",
            "payment_method": payment_method_json(intent.payment_method.as_deref().unwrap_or(""), intent.created),
        }));
        let snap = intent.to_json();
        self.emit("payment_intent.payment_failed", snap.clone(), ctx);
        Ok(snap)
    }

    fn charge_succeeds(&mut self, id: &str, ctx: &Ctx) -> Value {
        let ch = self.new_id("ch");
        let Some(intent) = self.intents.get_mut(id) else {
            return Value::Null;
        };
        let manual = intent.capture_method == "manual";
        intent.latest_charge = Some(ch.clone());
        intent.processing_until_ms = None;
        if manual {
            intent.status = "requires_capture";
            intent.amount_capturable = intent.amount;
        } else {
            intent.status = "succeeded";
            intent.amount_received = intent.amount;
        }
        let snap = intent.to_json();
        let charge = charge_json(&ch, intent, ctx.now(), None);
        self.charges.insert(ch, charge.clone());
        self.emit("charge.succeeded", charge, ctx);
        let kind = if manual {
            "payment_intent.amount_capturable_updated"
        } else {
            "payment_intent.succeeded"
        };
        self.emit(kind, snap.clone(), ctx);
        snap
    }

    fn charge_declines(&mut self, id: &str, decline_code: &'static str, ctx: &Ctx) -> StripeError {
        let ch = self.new_id("ch");
        let Some(intent) = self.intents.get_mut(id) else {
            return StripeError::no_such("payment_intent", id, None);
        };
        let message = match decline_code {
            "insufficient_funds" => "Your card has insufficient funds.",
            _ => "Your card was declined.",
        };
        let error = json!({
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": message,
            "charge": ch,
            "payment_method": payment_method_json(intent.payment_method.as_deref().unwrap_or(""), intent.created),
            "payment_method_type": "card",
        });
        intent.status = "requires_payment_method";
        intent.latest_charge = Some(ch.clone());
        intent.last_payment_error = Some(error.clone());
        let snap = intent.to_json();
        let charge = charge_json(&ch, intent, ctx.now(), Some(decline_code));
        self.charges.insert(ch.clone(), charge.clone());
        self.emit("charge.failed", charge, ctx);
        self.emit("payment_intent.payment_failed", snap.clone(), ctx);
        StripeError {
            status: StatusCode::PAYMENT_REQUIRED,
            kind: "card_error",
            code: Some("card_declined"),
            message: message.into(),
            param: None,
            extra: json!({"decline_code": decline_code, "charge": ch, "payment_intent": snap}),
            executed: true,
            should_retry: None,
        }
    }

    pub fn cancel(&mut self, id: &str, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let reason = p.string("cancellation_reason");
        if let Some(r) = &reason {
            if ![
                "duplicate",
                "fraudulent",
                "requested_by_customer",
                "abandoned",
            ]
            .contains(&r.as_str())
            {
                return Err(StripeError::invalid(
                    format!("Invalid cancellation_reason: {r}"),
                    Some("cancellation_reason"),
                ));
            }
        }
        let intent = self.intent(id)?;
        if ![
            "requires_payment_method",
            "requires_capture",
            "requires_confirmation",
            "requires_action",
        ]
        .contains(&intent.status)
        {
            let msg = format!(
                "You cannot cancel this PaymentIntent because it has a status of {}. Only a PaymentIntent with one of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, requires_action, processing.",
                intent.status
            );
            return Err(StripeError::unexpected_state(msg, intent.to_json()));
        }
        intent.status = "canceled";
        intent.canceled_at = Some(ctx.now());
        intent.cancellation_reason = reason;
        intent.amount_capturable = 0;
        intent.next_action = None;
        let snap = intent.to_json();
        self.emit("payment_intent.canceled", snap.clone(), ctx);
        Ok(snap)
    }

    pub fn capture(&mut self, id: &str, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let to_capture = p.int("amount_to_capture")?;
        let intent = self.intent(id)?;
        if intent.status != "requires_capture" {
            let msg = format!(
                "This PaymentIntent could not be captured because it has a status of {}. Only a PaymentIntent with one of the following statuses may be captured: requires_capture.",
                intent.status
            );
            return Err(StripeError::unexpected_state(msg, intent.to_json()));
        }
        let amount = to_capture.unwrap_or(intent.amount);
        if amount < 1 || amount > intent.amount_capturable {
            return Err(StripeError::invalid(
                "amount_to_capture must be between 1 and the capturable amount",
                Some("amount_to_capture"),
            ));
        }
        intent.status = "succeeded";
        intent.amount_received = amount;
        intent.amount_capturable = 0;
        let snap = intent.to_json();
        self.emit("payment_intent.succeeded", snap.clone(), ctx);
        Ok(snap)
    }

    /// Completes `processing` intents whose time has come (simulated clock).
    pub fn tick(&mut self, now_ms: i64) {
        let ctx = Ctx {
            now_ms,
            ..Ctx::default()
        };
        while let Some((until, id)) = self.processing.first().cloned() {
            if until > now_ms {
                break;
            }
            self.processing.pop_first();
            if self
                .intents
                .get(&id)
                .is_some_and(|i| i.status == "processing")
            {
                self.charge_succeeds(&id, &ctx);
            }
        }
    }

    /// Deliveries whose time has come, in due order: popped from the queue, so the
    /// caller must send them (and `reschedule` the ones that fail).
    pub fn take_due_deliveries(&mut self, now_ms: i64) -> Vec<usize> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, index))) = self.delivery_queue.peek() {
            if at > now_ms {
                break;
            }
            self.delivery_queue.pop();
            if self.deliveries[index].state == "pending" {
                due.push(index);
            }
        }
        due
    }

    pub fn reschedule(&mut self, index: usize, due_ms: i64) {
        self.deliveries[index].state = "pending";
        self.deliveries[index].due_ms = due_ms;
        self.delivery_queue.push(Reverse((due_ms, index)));
    }

    pub fn list_intents(&self, p: &Params) -> Result<Value, StripeError> {
        let created = p.range("created")?;
        let items: Vec<&Intent> = self
            .intent_order
            .iter()
            .rev()
            .map(|id| &self.intents[id])
            .filter(|i| created.contains(i.created))
            .collect();
        paginate(
            p,
            &items,
            |i| i.id.as_str(),
            Intent::to_json,
            "/v1/payment_intents",
        )
    }

    pub fn search_intents(&self, p: &Params) -> Result<Value, StripeError> {
        let query = p
            .get("query")
            .ok_or_else(|| StripeError::missing("query"))?;
        let clauses = parse_query(query)?;
        let limit = limit(p)?;
        let matches: Vec<&Intent> = self
            .intent_order
            .iter()
            .rev()
            .map(|id| &self.intents[id])
            .filter(|i| {
                clauses.iter().all(|(field, value)| match field {
                    Field::Metadata(k) => i.metadata.get(k) == Some(value),
                    Field::Status => i.status == value,
                    Field::Currency => &i.currency == value,
                })
            })
            .collect();
        // Pages are offsets, opaque to clients as in Stripe.
        let start: usize = match p.get("page") {
            None => 0,
            Some(page) => page
                .parse()
                .map_err(|_| StripeError::invalid("Invalid page", Some("page")))?,
        };
        let page: Vec<Value> = matches
            .iter()
            .skip(start)
            .take(limit)
            .map(|i| i.to_json())
            .collect();
        let has_more = start + page.len() < matches.len();
        Ok(json!({
            "object": "search_result",
            "data": page,
            "has_more": has_more,
            "next_page": if has_more { json!((start + limit).to_string()) } else { Value::Null },
            "url": "/v1/payment_intents/search",
        }))
    }

    /// Records an event and queues its deliveries to every endpoint that wants it.
    pub fn emit(&mut self, kind: &str, object: Value, ctx: &Ctx) {
        let id = self.new_id("evt");
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .filter(|e| e.wants(kind))
            .map(|e| e.id.clone())
            .collect();
        self.event_index.insert(id.clone(), self.events.len());
        self.events.push(Event {
            id: id.clone(),
            created: ctx.now(),
            kind: kind.to_owned(),
            object,
            request_id: ctx.request_id.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            pending_webhooks: endpoints.len() as i64,
        });
        for endpoint_id in endpoints {
            self.queue_delivery(&id, &endpoint_id, ctx.now_ms);
        }
    }

    fn queue_delivery(&mut self, event_id: &str, endpoint_id: &str, now_ms: i64) {
        let f = self.faults.clone();
        let dropped = f.roll(&mut self.rng, f.webhook_drop_rate);
        let copies = if f.roll(&mut self.rng, f.webhook_duplicate_rate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let jitter = if f.webhook_reorder_window_ms > 0 {
                self.rng.gen_range(0..=f.webhook_reorder_window_ms)
            } else {
                0
            };
            let fault = if f.roll(&mut self.rng, f.webhook_stale_rate) {
                Some(DeliveryFault::StaleTimestamp)
            } else if f.roll(&mut self.rng, f.webhook_bad_signature_rate) {
                Some(DeliveryFault::BadSignature)
            } else {
                None
            };
            let due = now_ms + f.webhook_delay_ms as i64 + jitter as i64;
            let id = self.deliveries.len() as u64 + 1;
            if !dropped {
                self.delivery_queue
                    .push(Reverse((due, self.deliveries.len())));
            }
            self.deliveries.push(Delivery {
                id,
                event_id: event_id.to_owned(),
                endpoint_id: endpoint_id.to_owned(),
                attempt: 0,
                first_due_ms: due,
                due_ms: due,
                fault,
                state: if dropped { "dropped" } else { "pending" },
                last_status: None,
                last_error: None,
                duplicate: copy > 0,
            });
        }
    }

    pub fn list_events(&self, p: &Params) -> Result<Value, StripeError> {
        let created = p.range("created")?;
        let mut types = p.list("types");
        if let Some(t) = p.string("type") {
            types.push(t);
        }
        let delivery_success = p.bool("delivery_success")?;
        let items: Vec<&Event> = self
            .events
            .iter()
            .rev()
            .filter(|e| created.contains(e.created))
            .filter(|e| types.is_empty() || types.iter().any(|t| type_matches(t, &e.kind)))
            .filter(|e| delivery_success.is_none_or(|ok| (e.pending_webhooks == 0) == ok))
            .collect();
        paginate(p, &items, |e| e.id.as_str(), Event::to_json, "/v1/events")
    }

    pub fn event(&self, id: &str) -> Result<Value, StripeError> {
        self.event_index
            .get(id)
            .map(|&i| self.events[i].to_json())
            .ok_or_else(|| StripeError::no_such("event", id, Some("id")))
    }

    pub fn create_endpoint(
        &mut self,
        p: &Params,
        ctx: &Ctx,
        secret: Option<String>,
    ) -> Result<Value, StripeError> {
        let url = p.string("url").ok_or_else(|| StripeError::missing("url"))?;
        let parsed =
            url::Url::parse(&url).map_err(|_| StripeError::invalid("Invalid URL", Some("url")))?;
        if !["http", "https"].contains(&parsed.scheme()) {
            return Err(StripeError::invalid(
                "Invalid URL: must be http or https",
                Some("url"),
            ));
        }
        let enabled_events = p.list("enabled_events");
        if enabled_events.is_empty() {
            return Err(StripeError::missing("enabled_events"));
        }
        let id = self.new_id("we");
        let secret = match secret {
            Some(s) => s,
            None => format!("whsec_{}", &self.new_id("x")[2..]),
        };
        let endpoint = Endpoint {
            id,
            url,
            enabled_events,
            secrets: vec![(secret, None)],
            created: ctx.now(),
        };
        let v = endpoint.to_json(true);
        self.endpoints.push(endpoint);
        Ok(v)
    }

    /// Rolls an endpoint's secret: deliveries carry a `v1` for the new and the old one
    /// until the old one expires, as during a real Stripe secret roll.
    pub fn roll_secret(
        &mut self,
        endpoint_id: &str,
        old_expires_in_ms: i64,
        new_secret: Option<String>,
        now_ms: i64,
    ) -> Result<Value, StripeError> {
        let fresh = match new_secret {
            Some(s) => s,
            None => format!("whsec_{}", &self.new_id("x")[2..]),
        };
        let ep = self
            .endpoints
            .iter_mut()
            .find(|e| e.id == endpoint_id)
            .ok_or_else(|| StripeError::no_such("webhook_endpoint", endpoint_id, None))?;
        for s in &mut ep.secrets {
            s.1.get_or_insert(now_ms + old_expires_in_ms);
        }
        ep.secrets.insert(0, (fresh, None));
        Ok(ep.to_json(true))
    }

    pub fn dump(&self) -> Value {
        json!({
            "seed": self.seed,
            "faults": self.faults,
            "world": self.world,
            "payment_intents": self.intent_order.iter().map(|id| self.intents[id].to_json()).collect::<Vec<_>>(),
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
            "webhook_endpoints": self.endpoints.iter().map(|e| e.to_json(false)).collect::<Vec<_>>(),
            "deliveries": self.deliveries,
            "forced_declines": self.forced_declines,
        })
    }
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            kind.starts_with(prefix) && kind.as_bytes().get(prefix.len()) == Some(&b'.')
        }
        None => pattern == kind,
    }
}

fn validate_metadata(m: &BTreeMap<String, String>) -> Result<(), StripeError> {
    // Stripe's limits: 50 keys, keys up to 40 characters, values up to 500.
    if m.len() > 50 {
        return Err(StripeError::invalid(
            "Metadata can have up to 50 keys",
            Some("metadata"),
        ));
    }
    for (k, v) in m {
        if k.chars().count() > 40 {
            return Err(StripeError::invalid(
                format!("Metadata key {k} exceeds 40 characters"),
                Some("metadata"),
            ));
        }
        if v.chars().count() > 500 {
            return Err(StripeError::invalid(
                format!("Metadata value for {k} exceeds 500 characters"),
                Some("metadata"),
            ));
        }
    }
    Ok(())
}

/// The PaymentMethod object Stripe embeds in errors (complete, as typed clients need).
fn payment_method_json(pm: &str, created: i64) -> Value {
    let (brand, last4) = match pm {
        "pm_card_mastercard" => ("mastercard", "4444"),
        "pm_card_amex" => ("amex", "8431"),
        "pm_card_chargeDeclined" => ("visa", "0002"),
        "pm_card_chargeDeclinedInsufficientFunds" => ("visa", "9995"),
        "pm_card_threeDSecure2Required" => ("visa", "3220"),
        _ => ("visa", "4242"),
    };
    json!({
        "id": pm,
        "object": "payment_method",
        "billing_details": {"address": null, "email": null, "name": null, "phone": null},
        "card": {"brand": brand, "country": "US", "exp_month": 12, "exp_year": 2034, "funding": "credit", "last4": last4},
        "created": created,
        "customer": null,
        "livemode": false,
        "metadata": {},
        "type": "card",
    })
}

fn charge_json(id: &str, intent: &Intent, now: i64, decline: Option<&str>) -> Value {
    let ok = decline.is_none();
    let captured = ok && intent.capture_method != "manual";
    json!({
        "id": id,
        "object": "charge",
        "amount": intent.amount,
        "amount_captured": if captured { intent.amount } else { 0 },
        "amount_refunded": 0,
        "application": null,
        "application_fee": null,
        "application_fee_amount": null,
        "balance_transaction": null,
        "billing_details": {"address": null, "email": null, "name": null, "phone": null},
        "calculated_statement_descriptor": "PAYSTREAM",
        "captured": captured,
        "created": now,
        "currency": intent.currency,
        "customer": null,
        "description": intent.description,
        "disputed": false,
        "failure_code": decline.map(|_| "card_declined"),
        "failure_message": decline.map(|_| "Your card was declined."),
        "fraud_details": {},
        "livemode": false,
        "metadata": intent.metadata,
        "outcome": {
            "network_status": if ok { "approved_by_network" } else { "declined_by_network" },
            "reason": decline,
            "risk_level": "normal",
            "seller_message": if ok { "Payment complete." } else { "The bank did not return any further details with this decline." },
            "type": if ok { "authorized" } else { "issuer_declined" },
        },
        "paid": ok,
        "payment_intent": intent.id,
        "payment_method": intent.payment_method,
        "receipt_email": intent.receipt_email,
        "refunded": false,
        "status": if ok { "succeeded" } else { "failed" },
    })
}

fn limit(p: &Params) -> Result<usize, StripeError> {
    match p.int("limit")? {
        None => Ok(10),
        Some(n) if (1..=100).contains(&n) => Ok(n as usize),
        Some(_) => Err(StripeError::invalid(
            "limit must be between 1 and 100",
            Some("limit"),
        )),
    }
}

/// Stripe's cursor pagination over a newest-first list.
fn paginate<T>(
    p: &Params,
    items: &[&T],
    id: impl Fn(&T) -> &str,
    render: impl Fn(&T) -> Value,
    url: &str,
) -> Result<Value, StripeError> {
    let limit = limit(p)?;
    let position = |cursor: &str, param: &str| {
        items
            .iter()
            .position(|i| id(i) == cursor)
            .ok_or_else(|| StripeError::no_such("object", cursor, Some(param)))
    };
    let (page, has_more): (&[&T], bool) = if let Some(after) = p.get("starting_after") {
        let rest = &items[position(after, "starting_after")? + 1..];
        (&rest[..rest.len().min(limit)], rest.len() > limit)
    } else if let Some(before) = p.get("ending_before") {
        let head = &items[..position(before, "ending_before")?];
        let from = head.len().saturating_sub(limit);
        (&head[from..], from > 0)
    } else {
        (&items[..items.len().min(limit)], items.len() > limit)
    };
    Ok(json!({
        "object": "list",
        "data": page.iter().map(|i| render(i)).collect::<Vec<_>>(),
        "has_more": has_more,
        "url": url,
    }))
}

enum Field {
    Metadata(String),
    Status,
    Currency,
}

/// The subset of Stripe's search language the sim understands:
/// `metadata['k']:'v'`, `status:'succeeded'`, `currency:'usd'`, joined by ` AND `.
fn parse_query(q: &str) -> Result<Vec<(Field, String)>, StripeError> {
    let bad = || StripeError::invalid(format!("Invalid search query: {q}"), Some("query"));
    q.split(" AND ")
        .map(|clause| {
            let (field, value) = clause.trim().split_once(':').ok_or_else(bad)?;
            let value = value
                .trim()
                .strip_prefix(['\'', '"'])
                .and_then(|v| v.strip_suffix(['\'', '"']))
                .ok_or_else(bad)?;
            let field = match field.trim() {
                "status" => Field::Status,
                "currency" => Field::Currency,
                f => {
                    let key = f
                        .strip_prefix("metadata[")
                        .and_then(|k| k.strip_suffix(']'))
                        .and_then(|k| k.strip_prefix(['\'', '"']))
                        .and_then(|k| k.strip_suffix(['\'', '"']))
                        .ok_or_else(bad)?;
                    Field::Metadata(key.to_owned())
                }
            };
            Ok((field, value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the form body, every endpoint answers Ok or a Stripe error: no panic.
        #[test]
        fn no_form_body_makes_an_endpoint_panic(body in "[a-z_\\[\\]=&%0-9.-]{0,80}") {
            let mut st = State::new(1, World::default());
            let ctx = Ctx { now_ms: 1_700_000_000_000, ..Ctx::default() };
            let p = Params::parse(&body);
            let created = st.create_intent(&p, &ctx);
            let id = created.as_ref().ok().and_then(|v| v["id"].as_str()).unwrap_or("pi_x").to_owned();
            let _ = st.update(&id, &p);
            let _ = st.confirm(&id, p.string("payment_method"), &ctx);
            let _ = st.capture(&id, &p, &ctx);
            let _ = st.cancel(&id, &p, &ctx);
            let _ = st.list_intents(&p);
            let _ = st.search_intents(&p);
            let _ = st.list_events(&p);
            let _ = st.create_endpoint(&p, &ctx, None);
            if let Err(e) = created {
                prop_assert!(e.status.is_client_error(), "{}", e.status);
            }
        }
    }

    #[test]
    fn search_queries_parse() {
        let q = parse_query("metadata['payment_id']:'p1' AND status:'succeeded'").unwrap();
        assert!(matches!(&q[0], (Field::Metadata(k), v) if k == "payment_id" && v == "p1"));
        assert!(matches!(&q[1], (Field::Status, v) if v == "succeeded"));
        assert!(parse_query("amount>5").is_err());
        assert!(parse_query("metadata[x]:'1'").is_err());
    }

    #[test]
    fn event_type_wildcards() {
        assert!(type_matches("payment_intent.*", "payment_intent.succeeded"));
        assert!(!type_matches(
            "payment_intent.*",
            "payment_intent_x.succeeded"
        ));
        assert!(type_matches("charge.failed", "charge.failed"));
        assert!(!type_matches("charge.failed", "charge.succeeded"));
    }
}
