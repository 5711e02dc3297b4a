//! PaymentIntents: their data, the status machine (every status change is a method
//! here), and the store that keeps them in creation order with their timers.

mod render;
mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

pub use status::IntentStatus;

use super::cards::{Card, payment_method_json};
use super::charges::{Charge, NewCharge};
use super::list::paginate;
use super::metadata;
use super::payment_methods::Attached;
use crate::error::StripeError;
use crate::form::Params;

/// What a create request decided; the rest of a new intent starts empty.
pub struct NewIntent {
    pub id: String,
    pub client_secret: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub capture_method: String,
    pub description: Option<String>,
    pub receipt_email: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub payment_method: Option<Attached>,
    pub automatic_payment_methods: bool,
}

#[derive(Debug, Clone)]
pub struct Intent {
    id: String,
    created: i64,
    amount: i64,
    currency: String,
    status: IntentStatus,
    capture_method: String,
    client_secret: String,
    description: Option<String>,
    receipt_email: Option<String>,
    metadata: BTreeMap<String, String>,
    /// The attached payment method's id (`pm_...`), and the test token it was made from,
    /// which decides what confirming and refunding do.
    payment_method: Option<String>,
    card: Option<String>,
    automatic_payment_methods: bool,
    amount_received: i64,
    amount_capturable: i64,
    last_payment_error: Option<Value>,
    latest_charge: Option<String>,
    canceled_at: Option<i64>,
    cancellation_reason: Option<String>,
    next_action: Option<Value>,
    /// Simulated time (ms) at which a `processing` intent succeeds.
    processing_until_ms: Option<i64>,
}

impl Intent {
    pub fn new(n: NewIntent) -> Intent {
        Intent {
            status: if n.payment_method.is_some() {
                IntentStatus::RequiresConfirmation
            } else {
                IntentStatus::RequiresPaymentMethod
            },
            id: n.id,
            created: n.created,
            amount: n.amount,
            currency: n.currency,
            capture_method: n.capture_method,
            client_secret: n.client_secret,
            description: n.description,
            receipt_email: n.receipt_email,
            metadata: n.metadata,
            card: n.payment_method.as_ref().map(|a| a.token.clone()),
            payment_method: n.payment_method.map(|a| a.id),
            automatic_payment_methods: n.automatic_payment_methods,
            amount_received: 0,
            amount_capturable: 0,
            last_payment_error: None,
            latest_charge: None,
            canceled_at: None,
            cancellation_reason: None,
            next_action: None,
            processing_until_ms: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn status(&self) -> IntentStatus {
        self.status
    }

    pub fn latest_charge(&self) -> Option<&str> {
        self.latest_charge.as_deref()
    }

    /// The test token of the attached payment method.
    pub fn card(&self) -> Option<&str> {
        self.card.as_deref()
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn unexpected(&self, message: String) -> StripeError {
        StripeError::unexpected_state(message, self.to_json())
    }

    /// Metadata changes (`""` removes a key, as at Stripe) and a new description.
    pub fn update(
        &mut self,
        metadata: BTreeMap<String, String>,
        p: &Params,
    ) -> Result<(), StripeError> {
        if self.status.settled() && (p.has("amount") || p.has("currency")) {
            return Err(self.unexpected(format!(
                "This PaymentIntent's amount could not be updated because it has a status of {}.",
                self.status
            )));
        }
        metadata::apply(&mut self.metadata, metadata);
        if let Some(d) = p.string("description") {
            self.description = Some(d);
        }
        Ok(())
    }

    /// Checked before a payment method given to confirm is attached: Stripe refuses the
    /// status first.
    pub fn check_confirmable(&self) -> Result<(), StripeError> {
        if self.status.confirmable() {
            return Ok(());
        }
        Err(self.unexpected(format!(
            "You cannot confirm this PaymentIntent because it has a status of {}. Only a PaymentIntent with one of the following statuses may be confirmed: requires_confirmation, requires_payment_method.",
            self.status
        )))
    }

    /// Checks a confirmation and attaches its payment method; the caller then applies what
    /// the returned card (by its token) does.
    pub fn confirm(&mut self, pm: Option<Attached>) -> Result<(String, Card), StripeError> {
        self.check_confirmable()?;
        if let Some(a) = pm {
            self.payment_method = Some(a.id);
            self.card = Some(a.token);
        }
        // The id and its token are attached together.
        let Some(token) = self.card.clone() else {
            return Err(StripeError {
                code: Some("payment_intent_unexpected_state"),
                ..StripeError::invalid(
                    "You cannot confirm this PaymentIntent because it's missing a payment method. Update the PaymentIntent with a payment method and then confirm it again.",
                    Some("payment_method"),
                )
            });
        };
        let Some(card) = Card::of(&token) else {
            return Err(
                StripeError::no_such("PaymentMethod", &token, Some("payment_method")).in_param(),
            );
        };
        self.last_payment_error = None;
        Ok((token, card))
    }

    fn payment_method_json(&self) -> Value {
        payment_method_json(
            self.payment_method.as_deref().unwrap_or(""),
            self.card.as_deref().unwrap_or(""),
            self.created,
        )
    }

    pub fn require_action(&mut self) {
        self.status = IntentStatus::RequiresAction;
        self.next_action = Some(json!({
            "type": "redirect_to_url",
            "redirect_to_url": {"return_url": null, "url": format!("/_sim/payment_intents/{}/authenticate", self.id)},
        }));
    }

    fn start_processing(&mut self, until_ms: i64) {
        self.status = IntentStatus::Processing;
        self.processing_until_ms = Some(until_ms);
    }

    /// The customer's answer to 3D Secure; on success the caller charges the card.
    pub fn authenticate(&mut self, succeed: bool) -> Result<(), StripeError> {
        if self.status != IntentStatus::RequiresAction {
            return Err(self.unexpected(format!(
                "PaymentIntent {} has status {}, not requires_action.",
                self.id, self.status
            )));
        }
        self.next_action = None;
        if !succeed {
            self.status = IntentStatus::RequiresPaymentMethod;
            self.last_payment_error = Some(json!({
                "type": "invalid_request_error",
                "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication.",
                "payment_method": self.payment_method_json(),
            }));
        }
        Ok(())
    }

    pub fn is_manual_capture(&self) -> bool {
        self.capture_method == "manual"
    }

    /// A successful charge: captured at once, or held for a manual capture.
    pub fn charge_succeeded(&mut self, charge_id: &str) {
        self.latest_charge = Some(charge_id.to_owned());
        self.processing_until_ms = None;
        if self.is_manual_capture() {
            self.status = IntentStatus::RequiresCapture;
            self.amount_capturable = self.amount;
        } else {
            self.status = IntentStatus::Succeeded;
            self.amount_received = self.amount;
        }
    }

    /// A declined charge: the intent goes back to `requires_payment_method` carrying the
    /// decline. Returns the customer-facing message.
    pub fn charge_declined(&mut self, charge_id: &str, decline_code: &str) -> &'static str {
        let message = match decline_code {
            "insufficient_funds" => "Your card has insufficient funds.",
            _ => "Your card was declined.",
        };
        self.last_payment_error = Some(json!({
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline_code,
            "message": message,
            "charge": charge_id,
            "payment_method": self.payment_method_json(),
            "payment_method_type": "card",
        }));
        self.status = IntentStatus::RequiresPaymentMethod;
        self.latest_charge = Some(charge_id.to_owned());
        message
    }

    /// `reason` is validated by the caller: Stripe checks parameters before the object.
    pub fn cancel(&mut self, reason: Option<String>, now: i64) -> Result<(), StripeError> {
        if !self.status.cancelable() {
            return Err(self.unexpected(format!(
                "You cannot cancel this PaymentIntent because it has a status of {}. Only a PaymentIntent with one of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, requires_action, processing.",
                self.status
            )));
        }
        self.status = IntentStatus::Canceled;
        self.canceled_at = Some(now);
        self.cancellation_reason = reason;
        self.amount_capturable = 0;
        self.next_action = None;
        Ok(())
    }

    /// An authorization left uncaptured past its expiry: Stripe cancels the intent itself,
    /// with `cancellation_reason: expired` (`automatic` before 2025-03-31.basil).
    /// `false` if it was captured or canceled meanwhile.
    pub fn expire(&mut self, now: i64) -> bool {
        if self.status != IntentStatus::RequiresCapture {
            return false;
        }
        self.cancel(Some("expired".into()), now).is_ok()
    }

    /// Returns the amount captured.
    pub fn capture(&mut self, amount_to_capture: Option<i64>) -> Result<i64, StripeError> {
        if self.status != IntentStatus::RequiresCapture {
            return Err(self.unexpected(format!(
                "This PaymentIntent could not be captured because it has a status of {}. Only a PaymentIntent with one of the following statuses may be captured: requires_capture.",
                self.status
            )));
        }
        let amount = amount_to_capture.unwrap_or(self.amount);
        if amount < 1 || amount > self.amount_capturable {
            return Err(StripeError::invalid(
                "amount_to_capture must be between 1 and the capturable amount",
                Some("amount_to_capture"),
            ));
        }
        self.status = IntentStatus::Succeeded;
        self.amount_received = amount;
        self.amount_capturable = 0;
        Ok(amount)
    }

    /// The Charge a confirmation of this intent makes (`decline`: its decline code).
    pub fn new_charge(&self, id: &str, now: i64, decline: Option<&'static str>) -> Charge {
        Charge::new(NewCharge {
            id: id.to_owned(),
            payment_intent: self.id.clone(),
            created: now,
            amount: self.amount,
            currency: self.currency.clone(),
            description: self.description.clone(),
            metadata: self.metadata.clone(),
            payment_method: self.payment_method.clone(),
            receipt_email: self.receipt_email.clone(),
            manual: self.is_manual_capture(),
            decline,
        })
    }
}

/// Every intent, in creation order, with the timers of those that are `processing` or
/// hold an authorization that will expire.
#[derive(Default)]
pub struct Intents {
    by_id: HashMap<String, Intent>,
    /// Creation order, oldest first (lists are served newest first).
    order: Vec<String>,
    /// By completion time, so that no periodic work scans every intent.
    processing: BTreeSet<(i64, String)>,
    /// Uncaptured authorizations by expiry time.
    expiring: BTreeSet<(i64, String)>,
}

impl Intents {
    pub fn insert(&mut self, intent: Intent) {
        self.order.push(intent.id.clone());
        self.by_id.insert(intent.id.clone(), intent);
    }

    pub fn get(&self, id: &str) -> Result<&Intent, StripeError> {
        self.by_id
            .get(id)
            .ok_or_else(|| StripeError::no_such("payment_intent", id, Some("intent")))
    }

    pub fn get_mut(&mut self, id: &str) -> Result<&mut Intent, StripeError> {
        self.by_id
            .get_mut(id)
            .ok_or_else(|| StripeError::no_such("payment_intent", id, Some("intent")))
    }

    pub fn oldest_first(&self) -> impl DoubleEndedIterator<Item = &Intent> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    pub fn newest_first(&self) -> impl Iterator<Item = &Intent> {
        self.oldest_first().rev()
    }

    pub fn start_processing(&mut self, id: &str, until_ms: i64) -> Result<&Intent, StripeError> {
        let intent = self.get_mut(id)?;
        intent.start_processing(until_ms);
        self.processing.insert((until_ms, id.to_owned()));
        self.get(id)
    }

    /// Intents whose processing time has come, in completion order; their timers are
    /// spent. An intent that left `processing` meanwhile is skipped.
    pub fn take_processed(&mut self, now_ms: i64) -> Vec<String> {
        let mut done = Vec::new();
        while let Some((until, _)) = self.processing.first() {
            if *until > now_ms {
                break;
            }
            let Some((_, id)) = self.processing.pop_first() else {
                break;
            };
            if self
                .by_id
                .get(&id)
                .is_some_and(|i| i.status == IntentStatus::Processing)
            {
                done.push(id);
            }
        }
        done
    }

    /// Starts the clock on an authorization held for a manual capture.
    pub fn expire_at(&mut self, id: &str, at_ms: i64) {
        self.expiring.insert((at_ms, id.to_owned()));
    }

    /// Intents whose authorization expired uncaptured, in expiry order; their timers are
    /// spent. An intent captured or canceled meanwhile is skipped.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<String> {
        let mut done = Vec::new();
        while let Some((at, _)) = self.expiring.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, id)) = self.expiring.pop_first() else {
                break;
            };
            if self
                .by_id
                .get(&id)
                .is_some_and(|i| i.status == IntentStatus::RequiresCapture)
            {
                done.push(id);
            }
        }
        done
    }

    pub fn list(&self, p: &Params) -> Result<Value, StripeError> {
        let created = p.range("created")?;
        let items: Vec<&Intent> = self
            .newest_first()
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
}
