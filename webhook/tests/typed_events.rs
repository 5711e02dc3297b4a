//! Every payment and refund event stripe-sim emits, listed through the production
//! gateway's event list, reads through async-stripe's models (not the fallback), and the
//! fallback reads the same thing from it: the two readers agree where both apply.

use std::time::Duration;

use paystream_core::gateway::{NewIntent, NewRefund, StripeGateway};
use paystream_core::{CaptureMethod, Currency, Money};
use paystream_stripe::StripeApi;
use paystream_webhook::events::{Reading, read_lenient, read_typed};

const KEY: &str = "sk_test_typed";

#[tokio::test]
async fn every_money_event_stripe_sim_emits_reads_typed_and_agrees_with_the_fallback() {
    let (_sim, base) = stripe_sim::spawn_ephemeral().await.unwrap();
    let gw = StripeApi::new(&base, KEY, Duration::from_secs(5)).unwrap();
    let http = reqwest::Client::new();
    let usd = Currency::parse("usd").unwrap();
    let mut paid = Vec::new();
    for (n, pm) in [
        "pm_card_visa",
        "pm_card_chargeDeclined",
        "pm_card_threeDSecure2Required",
        "pm_sim_processing",
        "pm_card_refundFail",
    ]
    .into_iter()
    .enumerate()
    {
        let payment_id = format!("pay_typed_{n}");
        let key = format!("typed-{n}");
        let intent = gw
            .create_intent(&NewIntent {
                payment_id: &payment_id,
                money: Money::new(2000, usd, 99_999_999).unwrap(),
                description: None,
                receipt_email: None,
                capture_method: CaptureMethod::Automatic,
                idempotency_key: &key,
            })
            .await
            .unwrap();
        // The customer's part, as a browser would do it.
        let confirmed = http
            .post(format!("{base}/v1/payment_intents/{}/confirm", intent.id))
            .bearer_auth(KEY)
            .form(&[("payment_method", pm)])
            .send()
            .await
            .unwrap();
        assert!(confirmed.status().is_success() || pm == "pm_card_chargeDeclined");
        if pm != "pm_card_chargeDeclined" {
            paid.push(intent.id);
        }
    }
    let abandoned = paid.remove(1);
    gw.cancel_intent(&abandoned, Some("abandoned"), "typed-cancel")
        .await
        .unwrap();
    for (n, intent) in [&paid[0], &paid[2]].into_iter().enumerate() {
        let refund_id = format!("ref_typed_{n}");
        let key = format!("typed-refund-{n}");
        gw.create_refund(&NewRefund {
            refund_id: &refund_id,
            payment_intent: intent,
            amount: 500,
            reason: None,
            idempotency_key: &key,
        })
        .await
        .unwrap();
    }

    let mut kinds = std::collections::BTreeSet::new();
    for pattern in ["payment_intent.*", "refund.*"] {
        let page = gw.list_events(pattern, 0, false, None).await.unwrap();
        assert!(!page.data.is_empty(), "{pattern}");
        for event in &page.data {
            let typed = read_typed(event)
                .unwrap_or_else(|e| panic!("{e}: {event}"))
                .unwrap_or_else(|| panic!("a reading: {event}"));
            assert_eq!(Some(typed.clone()), read_lenient(event), "{event}");
            match typed {
                Reading::Intent(r) => assert!(r.intent_id.starts_with("pi_")),
                Reading::Refund(r) => assert!(r.stripe_refund_id.starts_with("re_")),
            }
            kinds.insert(event["type"].as_str().unwrap().to_owned());
        }
    }
    for kind in [
        "payment_intent.created",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
        "payment_intent.processing",
        "payment_intent.canceled",
        "refund.created",
    ] {
        assert!(kinds.contains(kind), "{kind} not among {kinds:?}");
    }
}
