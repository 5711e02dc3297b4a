//! Fidelity: Stripe's own typed client (async-stripe) drives the simulator, and every
//! object the simulator returns or sends deserialises into async-stripe's models; webhook
//! signatures are checked by async-stripe's independent implementation.

mod common;

use std::collections::HashMap;

use common::{KEY, Receiver};
use serde_json::{Value, json};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::charge::RetrieveCharge;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CancelPaymentIntentCancellationReason, CapturePaymentIntent,
    ConfirmPaymentIntent, CreatePaymentIntent, ListPaymentIntent, RetrievePaymentIntent,
    SearchPaymentIntent,
};
use stripe_core::refund::{
    CancelRefund, CreateRefund, CreateRefundReason, ListRefund, RetrieveRefund, UpdateRefund,
};
use stripe_shared::{
    Charge, PaymentIntent, PaymentIntentCancellationReason, PaymentIntentCaptureMethod,
    PaymentIntentStatus, Refund, RefundReason,
};
use stripe_types::Expandable;
use stripe_webhook::{EventObject, Webhook};

fn client(base: &str) -> Client {
    ClientBuilder::new(KEY)
        .url(format!("{base}/"))
        .build()
        .expect("client")
}

fn typed_intent(v: &Value) -> PaymentIntent {
    miniserde::json::from_str(&v.to_string())
        .unwrap_or_else(|_| panic!("not a valid typed PaymentIntent: {v}"))
}

#[tokio::test]
async fn the_typed_client_runs_every_payment_intent_call() {
    let t = common::start().await;
    let c = client(&t.base);

    let meta = HashMap::from([("payment_id".to_owned(), "pay_1".to_owned())]);
    let pi = CreatePaymentIntent::new(1250, stripe_types::Currency::USD)
        .metadata(meta)
        .customize()
        .request_strategy(RequestStrategy::Idempotent(
            IdempotencyKey::new("fidelity-1").unwrap(),
        ))
        .send(&c)
        .await
        .expect("create");
    assert_eq!(pi.status, PaymentIntentStatus::RequiresPaymentMethod);
    assert_eq!(pi.amount, 1250);
    assert!(
        pi.client_secret
            .as_deref()
            .is_some_and(|s| s.starts_with(pi.id.as_str()))
    );

    let got = RetrievePaymentIntent::new(pi.id.clone())
        .send(&c)
        .await
        .expect("retrieve");
    assert_eq!(got.id, pi.id);
    assert_eq!(got.metadata["payment_id"], "pay_1");

    let done = ConfirmPaymentIntent::new(pi.id.clone())
        .payment_method("pm_card_visa")
        .send(&c)
        .await
        .expect("confirm");
    assert_eq!(done.status, PaymentIntentStatus::Succeeded);
    assert_eq!(done.amount_received, 1250);

    // A decline is Stripe's 402 card_error, which the typed client surfaces as such.
    let declined = CreatePaymentIntent::new(900, stripe_types::Currency::EUR)
        .payment_method("pm_card_chargeDeclinedInsufficientFunds")
        .confirm(true)
        .send(&c)
        .await
        .expect_err("decline");
    match declined {
        StripeError::Stripe(err, status) => {
            assert_eq!(status, 402);
            assert_eq!(err.decline_code.as_deref(), Some("insufficient_funds"));
        }
        other => panic!("expected a Stripe card error, got {other:?}"),
    }

    let three_ds = CreatePaymentIntent::new(700, stripe_types::Currency::GBP)
        .payment_method("pm_card_threeDSecure2Required")
        .confirm(true)
        .send(&c)
        .await
        .expect("3ds");
    assert_eq!(three_ds.status, PaymentIntentStatus::RequiresAction);
    assert!(three_ds.next_action.is_some());
    let canceled = CancelPaymentIntent::new(three_ds.id.clone())
        .cancellation_reason(CancelPaymentIntentCancellationReason::Abandoned)
        .send(&c)
        .await
        .expect("cancel");
    assert_eq!(canceled.status, PaymentIntentStatus::Canceled);

    let manual = CreatePaymentIntent::new(5000, stripe_types::Currency::USD)
        .capture_method(PaymentIntentCaptureMethod::Manual)
        .payment_method("pm_card_visa")
        .confirm(true)
        .send(&c)
        .await
        .expect("manual");
    assert_eq!(manual.status, PaymentIntentStatus::RequiresCapture);
    assert_eq!(manual.amount_capturable, 5000);
    let captured = CapturePaymentIntent::new(manual.id.clone())
        .send(&c)
        .await
        .expect("capture");
    assert_eq!(captured.status, PaymentIntentStatus::Succeeded);

    let list = ListPaymentIntent::new()
        .limit(2)
        .send(&c)
        .await
        .expect("list");
    assert_eq!(list.data.len(), 2);
    assert!(list.has_more);
    assert_eq!(list.data[0].id, manual.id, "lists are newest first");

    let found = SearchPaymentIntent::new("metadata['payment_id']:'pay_1'")
        .send(&c)
        .await
        .expect("search");
    assert_eq!(
        found.data.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        [pi.id]
    );
}

#[tokio::test]
async fn webhooks_verify_and_parse_with_async_stripe_and_events_list_parses() {
    let t = common::start().await;
    let (rx, url) = Receiver::start(0).await;
    let secret = "whsec_fidelity";
    t.control(
        reqwest::Method::POST,
        "/_sim/webhook_endpoints",
        json!({"url": url, "secret": secret}),
    )
    .await;

    let pi = t.create("2000", Some("pm_card_visa")).await;
    let id = pi["id"].as_str().unwrap();
    t.post(&format!("/v1/payment_intents/{id}/confirm"), &[], None)
        .await;
    // created, charge.succeeded, payment_intent.succeeded
    let got = rx.wait_for(3).await;
    assert_eq!(got.len(), 3);
    let mut kinds = Vec::new();
    for (sig, body) in &got {
        let event = Webhook::construct_event(body, sig, secret)
            .expect("async-stripe accepts the signature and the event");
        kinds.push(event.type_.to_string());
        match event.data.object {
            EventObject::PaymentIntentCreated(p) | EventObject::PaymentIntentSucceeded(p) => {
                assert_eq!(p.id.as_str(), id)
            }
            EventObject::ChargeSucceeded(c) => assert_eq!(c.amount, 2000),
            other => panic!("unexpected object {other:?}"),
        }
        assert!(
            Webhook::construct_event(body, sig, "whsec_other").is_err(),
            "a wrong secret must not verify"
        );
        assert!(
            Webhook::construct_event(&body.replace("2000", "2001"), sig, secret).is_err(),
            "a tampered body must not verify"
        );
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "charge.succeeded",
            "payment_intent.created",
            "payment_intent.succeeded"
        ]
    );

    // Every other event type the simulator emits, then all of them through the typed parser.
    for pm in [
        "pm_card_chargeDeclined",
        "pm_card_threeDSecure2Required",
        "pm_sim_processing",
    ] {
        let pi = t.create("2000", Some(pm)).await;
        t.post(
            &format!("/v1/payment_intents/{}/confirm", pi["id"].as_str().unwrap()),
            &[],
            None,
        )
        .await;
    }
    let pi = t.create("2000", None).await;
    t.post(
        &format!("/v1/payment_intents/{}/cancel", pi["id"].as_str().unwrap()),
        &[],
        None,
    )
    .await;
    let manual = [
        ("amount", "2000"),
        ("currency", "usd"),
        ("capture_method", "manual"),
        ("payment_method", "pm_card_visa"),
        ("confirm", "true"),
    ];
    t.post("/v1/payment_intents", &manual, None).await;

    let (status, events) = t.get("/v1/events?limit=100").await;
    assert_eq!(status, 200);
    let mut types = std::collections::BTreeSet::new();
    for e in events["data"].as_array().unwrap() {
        let typed = Webhook::insecure(&e.to_string())
            .unwrap_or_else(|err| panic!("event does not parse: {err:?}: {e}"));
        assert!(
            !matches!(typed.data.object, EventObject::Unknown(_)),
            "parsed as an unknown object: {e}"
        );
        types.insert(typed.type_.to_string());
    }
    let expected = [
        "charge.failed",
        "charge.succeeded",
        "payment_intent.amount_capturable_updated",
        "payment_intent.canceled",
        "payment_intent.created",
        "payment_intent.payment_failed",
        "payment_intent.processing",
        "payment_intent.requires_action",
        "payment_intent.succeeded",
    ];
    assert_eq!(
        types.iter().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    let (_, listed) = t.get("/v1/payment_intents?limit=100").await;
    for p in listed["data"].as_array().unwrap() {
        typed_intent(p);
    }
}

fn typed<T: miniserde::Deserialize>(v: &Value, what: &str) -> T {
    miniserde::json::from_str(&v.to_string())
        .unwrap_or_else(|_| panic!("not a valid typed {what}: {v}"))
}

#[tokio::test]
async fn the_typed_client_runs_every_refund_call() {
    let t = common::start().await;
    let c = client(&t.base);

    let pi = CreatePaymentIntent::new(2000, stripe_types::Currency::USD)
        .payment_method("pm_card_visa")
        .confirm(true)
        .send(&c)
        .await
        .expect("paid");
    match &pi.payment_method {
        Some(Expandable::Id(pm)) => {
            assert!(
                pm.as_str().starts_with("pm_") && pm.as_str() != "pm_card_visa",
                "{pm}"
            )
        }
        other => panic!("expected a payment method id, got {other:?}"),
    }

    let refund = CreateRefund::new()
        .payment_intent(pi.id.as_str())
        .amount(500)
        .reason(CreateRefundReason::RequestedByCustomer)
        .metadata(HashMap::from([("ticket".to_owned(), "42".to_owned())]))
        .customize()
        .request_strategy(RequestStrategy::Idempotent(
            IdempotencyKey::new("fidelity-refund-1").unwrap(),
        ))
        .send(&c)
        .await
        .expect("create refund");
    assert_eq!(refund.amount, 500);
    assert_eq!(refund.status.as_deref(), Some("pending"));
    assert_eq!(refund.reason, Some(RefundReason::RequestedByCustomer));
    assert!(matches!(&refund.payment_intent, Some(Expandable::Id(id)) if *id == pi.id));

    let got = RetrieveRefund::new(refund.id.clone())
        .send(&c)
        .await
        .expect("retrieve refund");
    assert_eq!(got.id, refund.id);
    let updated = UpdateRefund::new(refund.id.clone())
        .metadata(HashMap::from([("ticket".to_owned(), "43".to_owned())]))
        .send(&c)
        .await
        .expect("update refund");
    assert_eq!(
        updated.metadata.as_ref().map(|m| m["ticket"].as_str()),
        Some("43")
    );
    let listed = ListRefund::new()
        .payment_intent(pi.id.as_str())
        .send(&c)
        .await
        .expect("list refunds");
    assert_eq!(listed.data.len(), 1);
    match CancelRefund::new(refund.id.clone()).send(&c).await {
        Err(StripeError::Stripe(_, status)) => assert_eq!(status, 400),
        other => panic!("a card refund cannot be canceled, got {other:?}"),
    }

    let with_charge = RetrievePaymentIntent::new(pi.id.clone())
        .expand(["latest_charge".to_owned()])
        .send(&c)
        .await
        .expect("expanded");
    let Some(Expandable::Object(charge)) = with_charge.latest_charge else {
        panic!("latest_charge was not expanded")
    };
    assert_eq!((charge.amount_refunded, charge.refunded), (500, false));
    let charge = RetrieveCharge::new(charge.id.clone())
        .expand(["refunds".to_owned()])
        .send(&c)
        .await
        .expect("charge");
    let refunds = charge.refunds.expect("refunds expanded");
    assert_eq!(refunds.data.len(), 1);
    assert_eq!(refunds.data[0].id, refund.id);
}

/// Every new object and event type the simulator emits parses into async-stripe's models,
/// and refund webhooks verify with async-stripe's signature check.
#[tokio::test]
async fn refund_and_capture_objects_and_events_parse() {
    let t = common::start().await;
    let (rx, url) = Receiver::start(0).await;
    let secret = "whsec_refunds";
    t.control(
        reqwest::Method::POST,
        "/_sim/webhook_endpoints",
        json!({"url": url, "secret": secret, "enabled_events": ["refund.*", "charge.refund.updated"]}),
    )
    .await;
    let refund = |pi: Value| {
        let t = &t;
        async move {
            let (s, _, v) = t
                .post(
                    "/v1/refunds",
                    &[
                        ("payment_intent", pi["id"].as_str().unwrap()),
                        ("amount", "700"),
                    ],
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };
    // Settles; fails later; a partial capture; an authorization canceled; one expired.
    // The last three make no refunds (API version 2025-03-31.basil and later).
    refund(t.paid("1000", "pm_card_visa", false).await).await;
    refund(t.paid("1000", "pm_card_refundFail", false).await).await;
    let manual = t.paid("1000", "pm_card_visa", true).await;
    t.post(
        &format!(
            "/v1/payment_intents/{}/capture",
            manual["id"].as_str().unwrap()
        ),
        &[("amount_to_capture", "800")],
        None,
    )
    .await;
    let held = t.paid("1000", "pm_card_visa", true).await;
    t.post(
        &format!(
            "/v1/payment_intents/{}/cancel",
            held["id"].as_str().unwrap()
        ),
        &[],
        None,
    )
    .await;
    let expiring = t.paid("1000", "pm_card_visa", true).await;
    t.advance(7 * 24 * 3600 + 60).await;
    let pending = t
        .get_until("/v1/events?type=charge.expired", |v| {
            v["data"].as_array().is_some_and(|d| !d.is_empty())
        })
        .await;
    assert_eq!(pending["data"].as_array().map(Vec::len), Some(1));
    // The typed model knows `expired`, the reason since 2025-03-31.basil.
    let expired = typed_intent(
        &t.get(&format!(
            "/v1/payment_intents/{}",
            expiring["id"].as_str().unwrap()
        ))
        .await
        .1,
    );
    assert_eq!(
        expired.cancellation_reason,
        Some(PaymentIntentCancellationReason::Expired)
    );
    let capture_charge = manual["latest_charge"].as_str().unwrap();
    let (_, charge) = t
        .get(&format!("/v1/charges/{capture_charge}?expand[]=refunds"))
        .await;
    let typed_charge: Charge = typed(&charge, "Charge");
    assert_eq!(
        (
            typed_charge.amount_captured,
            typed_charge.amount_refunded,
            typed_charge.refunded
        ),
        (800, 0, false)
    );
    assert!(typed_charge.refunds.is_some_and(|r| r.data.is_empty()));

    let (_, events) = t.get("/v1/events?limit=100").await;
    let mut types = std::collections::BTreeSet::new();
    for e in events["data"].as_array().unwrap() {
        let typed = Webhook::insecure(&e.to_string())
            .unwrap_or_else(|err| panic!("event does not parse: {err:?}: {e}"));
        assert!(
            !matches!(typed.data.object, EventObject::Unknown(_)),
            "parsed as an unknown object: {e}"
        );
        let kind = typed.type_.to_string();
        if [
            "refund.updated",
            "charge.refund.updated",
            "charge.refunded",
            "charge.captured",
        ]
        .contains(&kind.as_str())
        {
            assert!(
                typed.data.previous_attributes.is_some(),
                "{kind} without previous_attributes"
            );
        }
        types.insert(kind);
    }
    let charge_refunded = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "charge.refunded")
        .count();
    assert_eq!(
        charge_refunded, 2,
        "one per refund made, none for the released authorizations"
    );
    for kind in [
        "charge.captured",
        "charge.expired",
        "charge.refund.updated",
        "charge.refunded",
        "refund.created",
        "refund.failed",
        "refund.updated",
    ] {
        assert!(types.contains(kind), "no {kind} in {types:?}");
    }

    let (_, refunds) = t.get("/v1/refunds?limit=100").await;
    let refunds = refunds["data"].as_array().unwrap();
    assert_eq!(
        refunds.len(),
        2,
        "the two refunds made; released authorizations make none"
    );
    let mut statuses = std::collections::BTreeSet::new();
    for r in refunds {
        let parsed: Refund = typed(r, "Refund");
        statuses.insert(parsed.status.unwrap_or_default());
        let charge_id = r["charge"].as_str().unwrap();
        let (_, charge) = t
            .get(&format!("/v1/charges/{charge_id}?expand[]=refunds"))
            .await;
        let _: Charge = typed(&charge, "Charge");
    }
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        ["failed", "succeeded"],
        "the settled one, the failed one"
    );
    let (_, listed) = t.get("/v1/payment_intents?limit=100").await;
    for p in listed["data"].as_array().unwrap() {
        typed_intent(p);
    }

    // The wildcard endpoint got exactly the refund events, signed as Stripe signs.
    let got = rx.wait_for(7).await;
    let mut kinds = Vec::new();
    for (sig, body) in &got {
        let event = Webhook::construct_event(body, sig, secret).expect("verifies and parses");
        kinds.push(event.type_.to_string());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "charge.refund.updated",
            "charge.refund.updated",
            "refund.created",
            "refund.created",
            "refund.failed",
            "refund.updated",
            "refund.updated",
        ]
    );
}
