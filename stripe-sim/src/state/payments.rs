//! The PaymentIntent endpoints: each validates its parameters (before looking up the
//! object, as Stripe does), moves the intent (and its charge) through its status machine
//! and emits the events Stripe would.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::cards::{Card, minimum_amount};
use super::events::previous_attributes;
use super::intents::{Intent, NewIntent};
use super::{Ctx, State, metadata, search};
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
        metadata::validate(&metadata)?;
        let payment_method = p.string("payment_method");
        if let Some(pm) = &payment_method
            && !self.payment_methods.knows(pm)
        {
            return Err(
                StripeError::no_such("PaymentMethod", pm, Some("payment_method")).in_param(),
            );
        }
        let confirm = p.bool("confirm")?.unwrap_or(false);
        let id = self.dice.id("pi");
        let secret_tail = self.dice.id("secret");
        let payment_method = match payment_method {
            Some(pm) => Some(self.payment_methods.attach(&pm, &mut self.dice)?),
            None => None,
        };
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
            // The payment method, if any, is attached already.
            return self.confirm(&id, None, ctx);
        }
        Ok(snapshot)
    }

    pub fn retrieve(&self, id: &str) -> Result<Value, StripeError> {
        Ok(self.intents.get(id)?.to_json())
    }

    pub fn update(&mut self, id: &str, p: &Params) -> Result<Value, StripeError> {
        let changes = p.map("metadata");
        metadata::validate(&changes)?;
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
        self.intents.get(id)?.check_confirmable()?;
        let attached = match pm {
            Some(pm) => Some(self.payment_methods.attach(&pm, &mut self.dice)?),
            None => None,
        };
        let (token, card) = self.intents.get_mut(id)?.confirm(attached)?;
        match self.forced_declines.apply(&token, card) {
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
        // Canceling a held authorization releases it. Since 2025-03-31.basil Stripe makes
        // no Refund for that and leaves the charge alone (`amount_captured` 0,
        // `amount_refunded` 0, `refunded` false): no `charge.refunded`, only this event.
        self.emit("payment_intent.canceled", snap.clone(), ctx);
        Ok(snap)
    }

    /// A partial capture releases the rest of the authorization. Since 2025-03-31.basil
    /// the charge keeps its `amount`, shows the part captured in `amount_captured` and
    /// nothing in `amount_refunded`: no Refund is made for the rest, no `charge.refunded`.
    pub fn capture(&mut self, id: &str, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let to_capture = p.int("amount_to_capture")?;
        let intent = self.intents.get_mut(id)?;
        let captured = intent.capture(to_capture)?;
        let snap = intent.to_json();
        if let Some(ch) = intent.latest_charge().map(str::to_owned)
            && let Ok(charge) = self.charges.get_mut(&ch)
        {
            let before = charge.to_json(None);
            charge.capture(captured);
            self.book_charge(&ch, ctx);
            if let Ok(charge) = self.charges.get(&ch) {
                let after = charge.to_json(None);
                let previous = previous_attributes(&before, &after);
                self.emit_change("charge.captured", after, Some(previous), ctx);
            }
        }
        self.emit("payment_intent.succeeded", snap.clone(), ctx);
        Ok(snap)
    }

    /// Moves simulated time on to `now_ms`: completes `processing` intents, expires
    /// uncaptured authorizations and settles (or fails) refunds whose time has come.
    pub fn tick(&mut self, now_ms: i64) {
        let ctx = Ctx {
            now_ms,
            ..Ctx::default()
        };
        for id in self.intents.take_processed(now_ms) {
            self.charge_succeeds(&id, &ctx);
        }
        for id in self.intents.take_expired(now_ms) {
            self.expire_authorization(&id, &ctx);
        }
        self.settle_refunds(&ctx);
    }

    /// Stripe cancels an intent whose authorization went uncaptured for 7 days (the
    /// world's `uncaptured_expiry_ms`) with `cancellation_reason: expired`; its charge
    /// expires. Since 2025-03-31.basil that makes no Refund and leaves the charge's
    /// `amount_refunded` and `refunded` alone.
    fn expire_authorization(&mut self, id: &str, ctx: &Ctx) {
        let Ok(intent) = self.intents.get_mut(id) else {
            return;
        };
        if !intent.expire(ctx.now()) {
            return;
        }
        let snap = intent.to_json();
        let charge = intent
            .latest_charge()
            .and_then(|ch| self.charges.get(ch).ok())
            .map(|c| c.to_json(None));
        if let Some(charge) = charge {
            self.emit("charge.expired", charge, ctx);
        }
        self.emit("payment_intent.canceled", snap, ctx);
    }

    fn charge_succeeds(&mut self, id: &str, ctx: &Ctx) -> Value {
        let ch = self.dice.id("ch");
        let Ok(intent) = self.intents.get_mut(id) else {
            return Value::Null;
        };
        intent.charge_succeeded(&ch);
        let manual = intent.is_manual_capture();
        let kind = if manual {
            "payment_intent.amount_capturable_updated"
        } else {
            "payment_intent.succeeded"
        };
        let snap = intent.to_json();
        let charge = intent.new_charge(&ch, ctx.now(), None);
        self.charges.insert(charge);
        if !manual {
            self.book_charge(&ch, ctx);
        }
        let charge_json = self
            .charges
            .get(&ch)
            .map(|c| c.to_json(None))
            .unwrap_or_default();
        if manual {
            let at = ctx.now_ms.saturating_add(self.world.uncaptured_expiry_ms);
            self.intents.expire_at(id, at);
        }
        self.emit("charge.succeeded", charge_json, ctx);
        self.emit(kind, snap.clone(), ctx);
        snap
    }

    /// `expand[]=latest_charge` (and `latest_charge.refunds`) on an intent's answer.
    pub fn expand_intent(&self, mut v: Value, p: &Params) -> Value {
        let expand = p.list("expand");
        let refunds = expand.iter().any(|e| e == "latest_charge.refunds");
        if !refunds && !expand.iter().any(|e| e == "latest_charge") {
            return v;
        }
        if let Some(charge) = v["latest_charge"]
            .as_str()
            .and_then(|ch| self.charges.get(ch).ok())
        {
            v["latest_charge"] = charge.to_json(refunds.then_some(&self.refunds));
        }
        v
    }

    /// `GET /v1/charges/{id}`, with `expand[]=refunds`.
    pub fn retrieve_charge(&self, id: &str, p: &Params) -> Result<Value, StripeError> {
        let refunds = p.list("expand").iter().any(|e| e == "refunds");
        Ok(self
            .charges
            .get(id)?
            .to_json(refunds.then_some(&self.refunds)))
    }

    fn charge_declines(&mut self, id: &str, decline_code: &'static str, ctx: &Ctx) -> StripeError {
        let ch = self.dice.id("ch");
        let Ok(intent) = self.intents.get_mut(id) else {
            return StripeError::no_such("payment_intent", id, None);
        };
        let message = intent.charge_declined(&ch, decline_code);
        let snap = intent.to_json();
        let charge = intent.new_charge(&ch, ctx.now(), Some(decline_code));
        let charge_json = charge.to_json(None);
        self.charges.insert(charge);
        self.emit("charge.failed", charge_json, ctx);
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

#[cfg(test)]
mod tests {
    use super::super::World;
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_700_000_000_000;

    fn ctx(now_ms: i64) -> Ctx {
        Ctx {
            now_ms,
            ..Ctx::default()
        }
    }

    /// A manual-capture intent confirmed with a card: it holds `amount`. Its id and charge.
    fn held(st: &mut State, amount: i64) -> (String, String) {
        let form = format!(
            "amount={amount}&currency=usd&capture_method=manual&payment_method=pm_card_visa&confirm=true"
        );
        let pi = st.create_intent(&Params::parse(&form), &ctx(T0)).unwrap();
        assert_eq!(pi["status"], "requires_capture");
        (
            pi["id"].as_str().unwrap().to_owned(),
            pi["latest_charge"].as_str().unwrap().to_owned(),
        )
    }

    fn charge(st: &State, ch: &str) -> Value {
        st.retrieve_charge(ch, &Params::parse("expand[]=refunds"))
            .unwrap()
    }

    fn refunds_of(st: &State, pi: &str) -> Vec<Value> {
        let listed = st
            .list_refunds(&Params::parse(&format!("payment_intent={pi}")))
            .unwrap();
        listed["data"].as_array().unwrap().clone()
    }

    /// What a canceled or expired authorization leaves since 2025-03-31.basil: nothing
    /// captured, nothing refunded, and no Refund object.
    fn released_without_a_refund(st: &State, pi: &str, ch: &str) {
        let c = charge(st, ch);
        assert_eq!(
            (
                &c["amount_captured"],
                &c["amount_refunded"],
                &c["captured"],
                &c["refunded"]
            ),
            (&json!(0), &json!(0), &json!(false), &json!(false))
        );
        assert!(refunds_of(st, pi).is_empty());
    }

    fn event_types(st: &State) -> Vec<String> {
        let listed = st.list_events(&Params::parse("limit=100")).unwrap();
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Since 2025-03-31.basil, a partial capture makes no Refund for the rest: the charge
    /// shows what was captured and nothing refunded.
    #[test]
    fn a_partial_capture_makes_no_refund() {
        let mut st = State::new(1, World::default());
        let (pi, ch) = held(&mut st, 3000);
        let captured = st
            .capture(&pi, &Params::parse("amount_to_capture=2000"), &ctx(T0))
            .unwrap();
        assert_eq!(captured["amount_received"], 2000);
        let c = charge(&st, &ch);
        assert_eq!(
            (
                &c["amount"],
                &c["amount_captured"],
                &c["amount_refunded"],
                &c["captured"],
                &c["refunded"]
            ),
            (
                &json!(3000),
                &json!(2000),
                &json!(0),
                &json!(true),
                &json!(false)
            )
        );
        assert_eq!(c["refunds"]["data"], json!([]));
        assert!(refunds_of(&st, &pi).is_empty());
        let types = event_types(&st);
        assert!(types.contains(&"charge.captured".to_owned()), "{types:?}");
        assert!(
            !types.iter().any(|t| t.starts_with("charge.refund")),
            "{types:?}"
        );
        // What can be refunded is what was captured.
        let too_much = st
            .create_refund(
                &Params::parse(&format!("payment_intent={pi}&amount=2001")),
                &ctx(T0),
            )
            .unwrap_err();
        assert_eq!(too_much.code, Some("amount_too_large"));
        let all = st
            .create_refund(&Params::parse(&format!("payment_intent={pi}")), &ctx(T0))
            .unwrap();
        assert_eq!(all["amount"], 2000);
        let c = charge(&st, &ch);
        assert_eq!(
            (&c["amount_refunded"], &c["refunded"]),
            (&json!(2000), &json!(true))
        );
    }

    #[test]
    fn canceling_a_held_authorization_makes_no_refund() {
        let mut st = State::new(1, World::default());
        let (pi, ch) = held(&mut st, 800);
        let canceled = st
            .cancel(
                &pi,
                &Params::parse("cancellation_reason=requested_by_customer"),
                &ctx(T0),
            )
            .unwrap();
        assert_eq!(
            (&canceled["status"], &canceled["cancellation_reason"]),
            (&json!("canceled"), &json!("requested_by_customer"))
        );
        released_without_a_refund(&st, &pi, &ch);
        let types = event_types(&st);
        assert_eq!(types[0], "payment_intent.canceled");
        assert!(
            !types.iter().any(|t| t.starts_with("charge.refund")),
            "{types:?}"
        );
    }

    #[test]
    fn an_expired_authorization_is_canceled_as_expired_without_a_refund() {
        let mut st = State::new(1, World::default());
        let (pi, ch) = held(&mut st, 2500);
        st.tick(T0 + World::default().uncaptured_expiry_ms - 1);
        assert_eq!(st.retrieve(&pi).unwrap()["status"], "requires_capture");
        st.tick(T0 + World::default().uncaptured_expiry_ms);
        let v = st.retrieve(&pi).unwrap();
        assert_eq!(
            (&v["status"], &v["cancellation_reason"]),
            (&json!("canceled"), &json!("expired"))
        );
        released_without_a_refund(&st, &pi, &ch);
        let types = event_types(&st);
        assert_eq!(types[..2], ["payment_intent.canceled", "charge.expired"]);
        assert!(
            !types.iter().any(|t| t.starts_with("charge.refund")),
            "{types:?}"
        );
    }

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
            let refund = st.create_refund(&p, &ctx);
            let re = refund.as_ref().ok().and_then(|v| v["id"].as_str()).unwrap_or("re_x").to_owned();
            let _ = st.update_refund(&re, &p, &ctx);
            let _ = st.cancel_refund(&re);
            let _ = st.list_refunds(&p);
            let _ = st.retrieve_charge("ch_x", &p);
            let _ = st.expand_intent(serde_json::json!({"latest_charge": "ch_x"}), &p);
            let _ = st.update_endpoint("we_x", &p);
            let _ = st.delete_endpoint("we_x");
            st.tick(i64::MAX);
            let _ = st.list_intents(&p);
            let _ = st.search_intents(&p);
            let _ = st.list_events(&p);
            let _ = st.create_endpoint(&p, &ctx, None);
            let _ = st.create_report_run(&p, &ctx);
            let _ = st.list_report_runs(&p);
            let _ = st.list_balance_transactions(&p, 0);
            if let Err(e) = created {
                prop_assert!(e.status.is_client_error(), "{}", e.status);
            }
        }
    }
}
