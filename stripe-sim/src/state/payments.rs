//! The PaymentIntent endpoints: each validates its parameters (before looking up the
//! object, as Stripe does), moves the intent through its status machine and emits the
//! events Stripe would.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::cards::{Card, minimum_amount};
use super::intents::{Intent, NewIntent};
use super::{Ctx, State, search};
use crate::error::StripeError;
use crate::form::Params;

impl State {
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
        if let Some(pm) = &payment_method
            && Card::of(pm).is_none()
        {
            return Err(
                StripeError::no_such("PaymentMethod", pm, Some("payment_method")).in_param(),
            );
        }
        let confirm = p.bool("confirm")?.unwrap_or(false);
        let id = self.dice.id("pi");
        let secret_tail = self.dice.id("secret");
        let intent = Intent::new(NewIntent {
            client_secret: format!("{id}_{secret_tail}"),
            id: id.clone(),
            created: ctx.now(),
            amount,
            currency,
            capture_method,
            description: p.string("description"),
            receipt_email: p.string("receipt_email"),
            metadata,
            payment_method,
            // Checked after the ids are drawn, as it always was: moving it would change
            // every id a seeded run produces after such an error.
            automatic_payment_methods: p
                .bool("automatic_payment_methods[enabled]")?
                .unwrap_or(false),
        });
        let snapshot = intent.to_json();
        self.intents.insert(intent);
        self.emit("payment_intent.created", snapshot.clone(), ctx);
        if confirm {
            return self.confirm(&id, p.string("payment_method"), ctx);
        }
        Ok(snapshot)
    }

    pub fn retrieve(&self, id: &str) -> Result<Value, StripeError> {
        Ok(self.intents.get(id)?.to_json())
    }

    pub fn update(&mut self, id: &str, p: &Params) -> Result<Value, StripeError> {
        let changes = p.map("metadata");
        validate_metadata(&changes)?;
        let intent = self.intents.get_mut(id)?;
        intent.update(changes, p)?;
        Ok(intent.to_json())
    }

    pub fn list_intents(&self, p: &Params) -> Result<Value, StripeError> {
        self.intents.list(p)
    }

    pub fn search_intents(&self, p: &Params) -> Result<Value, StripeError> {
        search::search(&self.intents, p)
    }

    pub fn confirm(
        &mut self,
        id: &str,
        pm: Option<String>,
        ctx: &Ctx,
    ) -> Result<Value, StripeError> {
        let (pm, card) = self.intents.get_mut(id)?.confirm(pm)?;
        match self.forced_declines.apply(&pm, card) {
            Card::Succeeds => Ok(self.charge_succeeds(id, ctx)),
            Card::Declines(decline_code) => Err(self.charge_declines(id, decline_code, ctx)),
            Card::RequiresAction => {
                let intent = self.intents.get_mut(id)?;
                intent.require_action();
                let snap = intent.to_json();
                self.emit("payment_intent.requires_action", snap.clone(), ctx);
                Ok(snap)
            }
            Card::Processing => {
                let until = ctx.now_ms + self.world.processing_ms;
                let snap = self.intents.start_processing(id, until)?.to_json();
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
        let intent = self.intents.get_mut(id)?;
        intent.authenticate(succeed)?;
        if succeed {
            return Ok(self.charge_succeeds(id, ctx));
        }
        let snap = intent.to_json();
        self.emit("payment_intent.payment_failed", snap.clone(), ctx);
        Ok(snap)
    }

    pub fn cancel(&mut self, id: &str, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let reason = p.string("cancellation_reason");
        if let Some(r) = &reason
            && ![
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
        let intent = self.intents.get_mut(id)?;
        intent.cancel(reason, ctx.now())?;
        let snap = intent.to_json();
        self.emit("payment_intent.canceled", snap.clone(), ctx);
        Ok(snap)
    }

    pub fn capture(&mut self, id: &str, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let to_capture = p.int("amount_to_capture")?;
        let intent = self.intents.get_mut(id)?;
        intent.capture(to_capture)?;
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
        for id in self.intents.take_processed(now_ms) {
            self.charge_succeeds(&id, &ctx);
        }
    }

    fn charge_succeeds(&mut self, id: &str, ctx: &Ctx) -> Value {
        let ch = self.dice.id("ch");
        let Ok(intent) = self.intents.get_mut(id) else {
            return Value::Null;
        };
        intent.charge_succeeded(&ch);
        let kind = if intent.is_manual_capture() {
            "payment_intent.amount_capturable_updated"
        } else {
            "payment_intent.succeeded"
        };
        let snap = intent.to_json();
        let charge = intent.charge_json(&ch, ctx.now(), None);
        self.intents.record_charge(ch, charge.clone());
        self.emit("charge.succeeded", charge, ctx);
        self.emit(kind, snap.clone(), ctx);
        snap
    }

    fn charge_declines(&mut self, id: &str, decline_code: &'static str, ctx: &Ctx) -> StripeError {
        let ch = self.dice.id("ch");
        let Ok(intent) = self.intents.get_mut(id) else {
            return StripeError::no_such("payment_intent", id, None);
        };
        let message = intent.charge_declined(&ch, decline_code);
        let snap = intent.to_json();
        let charge = intent.charge_json(&ch, ctx.now(), Some(decline_code));
        self.intents.record_charge(ch.clone(), charge.clone());
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

#[cfg(test)]
mod tests {
    use super::super::World;
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
}
