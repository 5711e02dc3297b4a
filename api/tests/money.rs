//! The API's side of the money-safety invariants (docs/invariants.md), each attacked the
//! way a real client, Stripe or a crash would: retries after a cancel, retries after
//! Stripe forgot its key, a cancel racing a create, a lease taken over, a flood of bad
//! keys, Stripe refusing our own key.

mod common;

use std::time::Duration;

use common::{STRIPE_KEY, TestApp, idem, serve_api_gated, spawn_app};
use paystream_api::config::RateLimitConfig;
use paystream_core::{ClientId, Currency, Money, PaymentId, PaymentStatus};
use paystream_db::idempotency::{self, Begin};
use paystream_db::keys::Role;
use paystream_db::payments::{self, NewPayment, Observation, Source};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn live(intents: &[Value]) -> Vec<&Value> {
    intents
        .iter()
        .filter(|i| i["status"] != "canceled")
        .collect()
}

/// I1, the issue's own road: Stripe down, the client cancels, then retries its key as the
/// 202 told it to. The retry must not bring a chargeable intent to life.
#[tokio::test]
async fn a_canceled_payment_gets_no_new_intent_from_a_retry() {
    let app = spawn_app().await;
    let key = idem();
    let body = json!({"amount": 1500, "currency": "usd"});
    app.faults(json!({"api_error_rate": 1.0})).await;
    let (status, _, first) = app.create(&key, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["payment"]["id"].as_str().unwrap().to_owned();
    app.faults(json!({})).await;

    let (status, canceled) = app.cancel(&id).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    // The cancel found (or made) the payment's one intent through the create key and
    // canceled it at Stripe first.
    assert_eq!(canceled["stripe_status"], "canceled");

    let (status, headers, retry) = app.create(&key, &body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a final payment is answered, not resumed: {retry}"
    );
    assert_eq!(retry["status"], "canceled");
    assert_eq!(retry["client_secret"], Value::Null);
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = app.create(&key, &body).await;
    assert_eq!(
        (status, &again),
        (StatusCode::OK, &retry),
        "stored and replayed"
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    let intents = app.intents_of(&id).await;
    assert!(
        live(&intents).is_empty(),
        "nothing chargeable at Stripe: {intents:?}"
    );
}

/// I1/I2 after 24 hours: Stripe has forgotten the create key. A payment that expired gets
/// nothing new; a pending one whose intent was made but never recorded gets that intent
/// back (found by search), not a second one.
#[tokio::test]
async fn a_retry_after_stripe_forgot_its_key_never_makes_a_second_intent() {
    let app = spawn_app().await;
    let body = json!({"amount": 2500, "currency": "eur"});

    // Expired: Stripe was down at creation, nobody retried, the reconciler expired it
    // (the very observation its expiry applies when no intent exists anywhere).
    let expired_key = idem();
    app.faults(json!({"api_error_rate": 1.0})).await;
    let (_, _, first) = app.create(&expired_key, &body).await;
    let expired: PaymentId = first["payment"]["id"].as_str().unwrap().parse().unwrap();
    let obs = Observation {
        status: PaymentStatus::Canceled,
        intent: None,
        stripe_status: None,
        error: Some("expired before any PaymentIntent existed"),
        source: Source::Expiry,
        detail: None,
        amount_received: None,
    };
    payments::apply_status(&app.primary, expired, &obs)
        .await
        .unwrap();

    // Orphaned: the API made the intent at Stripe, then died before recording it.
    let orphan_key = idem();
    let (_, _, first) = app.create(&orphan_key, &body).await;
    let orphan = first["payment"]["id"].as_str().unwrap().to_owned();
    app.faults(json!({})).await;
    let made = app
        .http
        .post(format!("{}/v1/payment_intents", app.stripe_base))
        .bearer_auth(STRIPE_KEY)
        .header("Idempotency-Key", format!("paystream-create-{orphan}"))
        .form(&[
            ("amount", "2500"),
            ("currency", "eur"),
            ("metadata[payment_id]", orphan.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();

    app.advance_stripe_clock(25 * 3600).await;

    let (status, _, res) = app.create(&expired_key, &body).await;
    assert_eq!(
        (status, res["status"].as_str()),
        (StatusCode::OK, Some("canceled")),
        "{res}"
    );
    assert_eq!(res["client_secret"], Value::Null);
    assert!(
        app.intents_of(&expired.to_string()).await.is_empty(),
        "no intent made for it"
    );

    let (status, _, res) = app.create(&orphan_key, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(
        res["stripe_payment_intent_id"], made["id"],
        "the intent made before, found"
    );
    assert!(
        res["client_secret"]
            .as_str()
            .unwrap()
            .starts_with(made["id"].as_str().unwrap())
    );
    assert_eq!(app.intents_for(&orphan).await, 1, "and no second one");
}

/// I1: a cancel never runs beside a create of the same payment; once the create is done,
/// the cancel cancels the very intent whose secret the client got.
#[tokio::test]
async fn a_cancel_waits_for_a_running_create_of_its_payment() {
    let app = spawn_app().await;
    let key = idem();
    let body = json!({"amount": 900, "currency": "usd"});
    app.faults(json!({"api_error_rate": 1.0})).await;
    let (_, _, first) = app.create(&key, &body).await;
    let id = first["payment"]["id"].as_str().unwrap().to_owned();
    app.faults(json!({"api_latency_ms": 1500})).await;

    let retry = app.create(&key, &body);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.cancel(&id).await
    };
    let ((status, _, created), (cancel_status, busy)) = tokio::join!(retry, cancel);
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(cancel_status, StatusCode::CONFLICT, "{busy}");
    assert_eq!(busy["error"]["code"], "payment_in_progress");

    app.faults(json!({})).await;
    let (status, canceled) = app.cancel(&id).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(
        canceled["stripe_payment_intent_id"],
        created["stripe_payment_intent_id"]
    );
    let intents = app.intents_of(&id).await;
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["status"], "canceled");
    // The customer who holds the secret can no longer pay.
    let pi = created["stripe_payment_intent_id"].as_str().unwrap();
    assert_eq!(app.confirm(pi, "pm_card_visa").await, 400);
}

/// I1: Stripe took the money after we said canceled (a race no protocol closes): the
/// payment becomes succeeded, says why, and waits for an operator.
#[tokio::test]
async fn money_taken_after_a_cancel_overturns_it_and_flags_it() {
    let app = spawn_app().await;
    let (_, _, p) = app
        .create(&idem(), &json!({"amount": 700, "currency": "usd"}))
        .await;
    let id: PaymentId = p["id"].as_str().unwrap().parse().unwrap();
    let pi = p["stripe_payment_intent_id"].as_str().unwrap().to_owned();
    // Our side says canceled (say, an expiry whose cancel at Stripe was lost)...
    let canceled = Observation {
        status: PaymentStatus::Canceled,
        intent: None,
        stripe_status: None,
        error: None,
        source: Source::Expiry,
        detail: None,
        amount_received: None,
    };
    payments::apply_status(&app.primary, id, &canceled)
        .await
        .unwrap();
    // ...while the customer paid.
    assert_eq!(app.confirm(&pi, "pm_card_visa").await, 200);
    let paid = Observation {
        status: PaymentStatus::Succeeded,
        intent: None,
        stripe_status: Some("succeeded"),
        error: None,
        source: Source::Webhook,
        detail: Some(json!({"event": "evt_test"})),
        amount_received: None,
    };
    let after = payments::apply_status(&app.primary, id, &paid)
        .await
        .unwrap();
    assert!(
        matches!(after, payments::Applied::Overturned(_)),
        "{after:?}"
    );
    let row = payments::by_id(&app.primary, id).await.unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.attention.map(|a| a.as_str())),
        ("succeeded", Some("charged_after_cancel"))
    );
    let (_, events) = app.get(&format!("/v1/payments/{id}/events")).await;
    let last = events["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["from_status"].as_str(), last["to_status"].as_str()),
        (Some("canceled"), Some("succeeded"))
    );
    assert_eq!(last["detail"]["overturned"], "canceled");
    // A second delivery of the same news changes nothing.
    let again = payments::apply_status(&app.primary, id, &paid)
        .await
        .unwrap();
    assert!(matches!(again, payments::Applied::Unchanged(_)));
    assert_eq!(
        payments::clear_attention(&app.primary, id).await.unwrap(),
        Some(payments::Attention::ChargedAfterCancel)
    );
    assert_eq!(
        payments::clear_attention(&app.primary, id).await.unwrap(),
        None
    );
}

/// The change stream's consumers drop a change whose version is not newer than what they
/// hold; the database, not each statement, keeps that true.
#[tokio::test]
async fn every_update_of_a_payment_bumps_its_version() {
    let app = spawn_app().await;
    let (_, _, p) = app
        .create(&idem(), &json!({"amount": 700, "currency": "usd"}))
        .await;
    let id: PaymentId = p["id"].as_str().unwrap().parse().unwrap();
    let before = payments::by_id(&app.primary, id).await.unwrap().unwrap();
    // An UPDATE that forgets the version, and one that tries to set it back.
    sqlx::query("UPDATE payments SET description = 'edited' WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE payments SET version = 1, updated_at = '2000-01-01' WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&app.db)
        .await
        .unwrap();
    let after = payments::by_id(&app.primary, id).await.unwrap().unwrap();
    assert_eq!(after.version, before.version + 2);
    assert!(after.updated_at > before.updated_at);
}

/// A pending payment of `sibling`'s client that holds no intent yet, made in `tx`.
async fn pending_without_intent(tx: &mut sqlx::PgConnection, sibling: PaymentId) -> PaymentId {
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency)
         SELECT gen_random_uuid(), client_id, 'intent-test-' || gen_random_uuid(), 700, 'usd'
           FROM payments WHERE id = $1
         RETURNING id",
    )
    .bind(sibling.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    PaymentId::from_uuid(id)
}

/// The payment an event about `intent` would lock.
async fn locked_for(conn: &mut sqlx::PgConnection, intent: &str) -> Option<PaymentId> {
    payments::lock_for_intent(conn, intent, None)
        .await
        .unwrap()
        .map(|l| l.payment().id)
}

/// A PaymentIntent belongs to one payment: the database refuses it on a second one, as the
/// UNIQUE index on `payments` did before `payment_intents` took over (migration 0014).
/// Attaching it is a HOT update, so no index of `payments` may cover a column the attach
/// changes (the intent, `stripe_status`, and the trigger's `version` and `updated_at`).
#[tokio::test]
async fn an_intent_is_one_payments_and_attaching_it_touches_no_index() {
    let app = spawn_app().await;
    let (_, _, p) = app
        .create(&idem(), &json!({"amount": 700, "currency": "usd"}))
        .await;
    let held = p["stripe_payment_intent_id"].as_str().unwrap().to_owned();
    let held_by: PaymentId = p["id"].as_str().unwrap().parse().unwrap();

    let mut tx = app.db.begin().await.unwrap();
    let other = pending_without_intent(&mut tx, held_by).await;
    let intent = format!("pi_hot_{}", other.as_uuid().simple());
    let attached = payments::attach_intent_in(&mut tx, other, &intent, "requires_payment_method")
        .await
        .unwrap();
    assert!(matches!(attached, payments::Attached::Attached(_)));
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('payments'::regclass),
                pg_stat_get_xact_tuples_hot_updated('payments'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((updated, hot), (1, 1), "the attach must be a HOT update");
    assert_eq!(locked_for(&mut tx, &intent).await, Some(other));

    // The held intent on a second payment: refused by the database.
    let other_without = pending_without_intent(&mut tx, held_by).await;
    let e = payments::attach_intent_in(&mut tx, other_without, &held, "requires_payment_method")
        .await
        .expect_err("a second payment took a held intent");
    assert!(e.to_string().contains("payment_intents_pkey"), "{e}");
    tx.rollback().await.unwrap();

    let mut conn = app.db.acquire().await.unwrap();
    assert_eq!(locked_for(&mut conn, &held).await, Some(held_by));
}

/// Whatever statement tries, the database refuses what the code relies on never
/// happening: a final payment going anywhere but the overturn to `succeeded`, a
/// PaymentIntent replaced, an owner changed, a final payment without its resolver, a
/// history row that is no change (migration 0008).
#[tokio::test]
async fn the_database_refuses_what_no_path_may_do() {
    let app = spawn_app().await;
    let (_, _, p) = app
        .create(&idem(), &json!({"amount": 700, "currency": "usd"}))
        .await;
    let id: PaymentId = p["id"].as_str().unwrap().parse().unwrap();
    let refused = |sql: &'static str| {
        let db = app.db.clone();
        async move {
            let e = sqlx::query(sql)
                .bind(id.as_uuid())
                .execute(&db)
                .await
                .expect_err(sql);
            let code = e
                .as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.into_owned());
            assert_eq!(code.as_deref(), Some("23514"), "{sql}: {e}");
        }
    };
    refused("UPDATE payments SET status = 'succeeded', resolved_at = now() WHERE id = $1").await;
    refused("UPDATE payments SET stripe_payment_intent_id = 'pi_other' WHERE id = $1").await;
    refused("UPDATE payments SET client_id = gen_random_uuid() WHERE id = $1").await;
    refused(
        "INSERT INTO payment_status_history (payment_id, from_status, to_status, source)
         VALUES ($1, 'pending', 'pending', 'api')",
    )
    .await;
    refused(
        "INSERT INTO payment_status_history (payment_id, from_status, to_status, source)
         VALUES ($1, 'pending', 'paid', 'api')",
    )
    .await;

    // Canceled through the guarded path: only the overturn leaves it.
    let canceled = Observation::without_intent(PaymentStatus::Canceled, None, Source::Expiry);
    payments::apply_status(&app.primary, id, &canceled)
        .await
        .unwrap();
    refused("UPDATE payments SET status = 'pending', resolved_at = NULL, resolution_source = NULL WHERE id = $1").await;
    refused("UPDATE payments SET status = 'failed' WHERE id = $1").await;
    let row = payments::by_id(&app.primary, id).await.unwrap().unwrap();
    assert_eq!(row.status, PaymentStatus::Canceled);
    assert_eq!(row.resolution_source, Some(Source::Expiry));
}

/// A webhook may name a payment whose intent id was never stored (the API died first):
/// the guarded path links it under the row's lock, whatever the transition says, and
/// never replaces an intent a payment holds.
#[tokio::test]
async fn an_intent_is_linked_only_to_a_payment_that_holds_none() {
    let app = spawn_app().await;
    let (_, _, p) = app
        .create(&idem(), &json!({"amount": 700, "currency": "usd"}))
        .await;
    let id: PaymentId = p["id"].as_str().unwrap().parse().unwrap();
    let held = p["stripe_payment_intent_id"].as_str().unwrap().to_owned();
    let other = Observation {
        status: PaymentStatus::Pending,
        intent: Some("pi_someone_else"),
        stripe_status: Some("processing"),
        error: None,
        source: Source::Webhook,
        detail: None,
        amount_received: None,
    };
    let applied = payments::apply_status(&app.primary, id, &other)
        .await
        .unwrap();
    assert!(
        matches!(applied, payments::Applied::ForeignIntent(_)),
        "{applied:?}"
    );
    let row = payments::by_id(&app.primary, id).await.unwrap().unwrap();
    assert_eq!(row.stripe_payment_intent_id.as_deref(), Some(held.as_str()));
    assert_ne!(row.stripe_status.as_deref(), Some("processing"));

    // A payment canceled before any intent existed, then Stripe's word on one.
    let client_id = ClientId::generate();
    let lone = PaymentId::generate();
    let key = format!("lone-{lone}");
    payments::create_pending(
        &app.primary,
        lone,
        &NewPayment {
            client_id,
            idempotency_key: &key,
            money: Money::new(500, Currency::parse("usd").unwrap(), i64::MAX).unwrap(),
            description: None,
            customer_email: None,
            metadata: &json!({}),
            capture_method: paystream_core::CaptureMethod::Automatic,
        },
    )
    .await
    .unwrap();
    let canceled = Observation::without_intent(PaymentStatus::Canceled, None, Source::Expiry);
    payments::apply_status(&app.primary, lone, &canceled)
        .await
        .unwrap();
    let late_intent = format!("pi_lone_{}", lone.as_uuid().simple());
    let late = Observation {
        status: PaymentStatus::Canceled,
        intent: Some(&late_intent),
        stripe_status: Some("canceled"),
        error: None,
        source: Source::Webhook,
        detail: None,
        amount_received: None,
    };
    let applied = payments::apply_status(&app.primary, lone, &late)
        .await
        .unwrap();
    assert!(
        matches!(applied, payments::Applied::Unchanged(_)),
        "{applied:?}"
    );
    let row = payments::by_id(&app.primary, lone).await.unwrap().unwrap();
    assert_eq!(
        row.stripe_payment_intent_id.as_deref(),
        Some(late_intent.as_str())
    );
}

/// A 1.00 USD payment of `client_id` with idempotency key `key`, as `begin` takes it.
fn one_dollar<'a>(client_id: ClientId, key: &'a str, metadata: &'a Value) -> NewPayment<'a> {
    NewPayment {
        client_id,
        idempotency_key: key,
        money: Money::new(100, Currency::parse("usd").unwrap(), 1_000).unwrap(),
        description: None,
        customer_email: None,
        metadata,
        capture_method: paystream_core::CaptureMethod::Automatic,
    }
}

/// I2: a request whose lease ran out (and was taken over by a retry) can neither store
/// nor release the key; the holder's answer stands.
#[tokio::test]
async fn a_lease_taken_over_cannot_overwrite_the_holders_answer() {
    let app = spawn_app().await;
    let (client_id, _) = app.new_key("lease", Role::Client).await;
    let (key, metadata) = (idem(), json!({}));
    let new = one_dollar(client_id, &key, &metadata);
    // Long enough that the second `begin` below always runs within it on a loaded
    // machine (50 ms once did not, in CI).
    let lease = Duration::from_secs(2);
    let Begin::Created(p, first) = idempotency::begin(&app.primary, &new, b"h", lease)
        .await
        .unwrap()
    else {
        panic!("a new key")
    };
    assert!(matches!(
        idempotency::begin(&app.primary, &new, b"h", lease)
            .await
            .unwrap(),
        Begin::InFlight
    ));
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let Begin::Resume(q, second) = idempotency::begin(&app.primary, &new, b"h", lease)
        .await
        .unwrap()
    else {
        panic!("the lease ran out: resumed")
    };
    assert_eq!(p.id, q.id);
    assert!(!idempotency::release(&app.primary, &first).await.unwrap());
    assert!(
        !idempotency::complete(&app.primary, &first, 500, &json!({"stale": true}))
            .await
            .unwrap()
    );
    // Nor can it store one with the intent it links (the link itself is harmless: the
    // payment's one intent, which the holder would find by its create key).
    let intent = format!("pi_lease_{}", Uuid::now_v7().simple());
    let (attached, _) = idempotency::attach_and_complete(
        &app.primary,
        &first,
        &p,
        &intent,
        "requires_payment_method",
        |_| Some((201, json!({"stale": true}))),
    )
    .await
    .unwrap();
    assert!(matches!(attached, payments::Attached::Attached(_)));
    assert!(
        idempotency::complete(&app.primary, &second, 201, &json!({"holder": true}))
            .await
            .unwrap()
    );
    match idempotency::begin(&app.primary, &new, b"h", lease)
        .await
        .unwrap()
    {
        Begin::Replay { status, body } => {
            assert_eq!((status, body), (201, json!({"holder": true})))
        }
        other => panic!("{other:?}"),
    }
}

/// I2, the replay half: a create's answer is stored by the statement that links its
/// intent, made in advance from the row that statement will make. Whatever came between
/// the key's record and the link, the answer stored (and replayed) is the linked row's:
/// its version and `updated_at` are the row's as it is after the link.
#[tokio::test]
async fn the_stored_answer_is_the_linked_row_even_when_a_write_came_between() {
    let app = spawn_app().await;
    let (client_id, _) = app.new_key("link", Role::Client).await;
    let answer = |p: &payments::Payment| {
        Some((
            201,
            json!({"version": p.version, "updated_at": p.updated_at, "intent": p.stripe_payment_intent_id}),
        ))
    };
    for write_between in [false, true] {
        let (key, metadata) = (idem(), json!({}));
        let new = one_dollar(client_id, &key, &metadata);
        let Begin::Created(p, lease) =
            idempotency::begin(&app.primary, &new, b"h", Duration::from_secs(30))
                .await
                .unwrap()
        else {
            panic!("a new key")
        };
        if write_between {
            // Any update bumps the version: here an operator's flag, as a webhook's
            // status or another process's link would.
            assert!(
                payments::flag_attention(&app.primary, p.id, payments::Attention::UnknownAtStripe)
                    .await
                    .unwrap()
            );
        }
        let intent = format!("pi_link_{}", Uuid::now_v7().simple());
        let (attached, answered) = idempotency::attach_and_complete(
            &app.primary,
            &lease,
            &p,
            &intent,
            "requires_payment_method",
            answer,
        )
        .await
        .unwrap();
        let payments::Attached::Attached(linked) = attached else {
            panic!("{attached:?}")
        };
        let row = payments::get(&app.primary, client_id, p.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(linked, row, "the row returned is the row stored");
        assert_eq!(row.version, p.version + if write_between { 2 } else { 1 });
        let expected = answer(&row);
        assert_eq!(answered, expected, "write between: {write_between}");
        match idempotency::begin(&app.primary, &new, b"h", Duration::from_secs(30))
            .await
            .unwrap()
        {
            Begin::Replay { status, body } => {
                assert_eq!(Some((status, body)), expected, "replayed as answered")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The database writes the `updated_at` of a stored answer itself; it must write it as
/// the API's JSON does (chrono's serde), or a replay would differ from a read of the same
/// row. Whole seconds, whole milliseconds and microseconds each take their own form.
#[tokio::test]
async fn stored_answers_write_timestamps_as_the_api_does() {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    let app = spawn_app().await;
    let micros = prop_oneof![
        Just(0u32),
        (0..1_000u32).prop_map(|ms| ms * 1_000),
        0..1_000_000u32
    ];
    // 1970 to the end of 9999: the years RFC 3339 writes with four digits.
    let at = (0..253_402_300_800i64, micros)
        .prop_map(|(s, us)| DateTime::<Utc>::from_timestamp(s, us * 1_000).unwrap());
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut times: Vec<DateTime<Utc>> = (0..2_000)
        .map(|_| at.new_tree(&mut runner).unwrap().current())
        .collect();
    times.extend(
        [
            "1970-01-01T00:00:00Z",
            "2026-12-04T05:20:50.100Z",
            "2026-12-04T05:20:50.000100Z",
            "2026-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59.999Z",
        ]
        .map(|s| s.parse::<DateTime<Utc>>().unwrap()),
    );
    let written = idempotency::json_times(&app.primary, &times).await.unwrap();
    assert_eq!(written.len(), times.len());
    for (at, sql) in times.iter().zip(&written) {
        assert_eq!(json!(sql), json!(at), "{at:?}");
    }
}

/// I5: a flood of made-up bearer tokens gets 401s and 429s, never a 5xx, while a genuine
/// client keeps creating payments.
#[tokio::test]
async fn a_flood_of_unknown_keys_does_not_starve_genuine_clients() {
    let app = spawn_app().await;
    let flood = (0..400).map(|i| {
        let (http, base) = (app.http.clone(), app.base.clone());
        tokio::spawn(async move {
            http.get(format!("{base}/v1/payments"))
                .bearer_auth(format!("psk_client_flood{i}{}", Uuid::now_v7().simple()))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    });
    let flood: Vec<_> = flood.collect();
    for _ in 0..20 {
        let (status, _, p) = app
            .create(&idem(), &json!({"amount": 1000, "currency": "usd"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
    }
    let mut answers = std::collections::BTreeMap::new();
    for f in flood {
        *answers.entry(f.await.unwrap()).or_insert(0) += 1;
    }
    assert!(
        answers.keys().all(|s| *s == 401 || *s == 429),
        "{answers:?}"
    );
    assert!(answers.contains_key(&401), "{answers:?}");
}

/// I5: Stripe refusing our own secret key is a configuration fault: the payment stays
/// pending, the client gets a retryable 202 without Stripe's words, nothing is stored,
/// and once the key is right a retry completes the payment.
#[tokio::test]
async fn stripe_refusing_our_key_is_never_the_customers_fault() {
    let app = spawn_app().await;
    // A fresh seed: intent ids must not collide with earlier runs' in the shared database.
    let seed = Uuid::now_v7().as_u128() as u64;
    let (_sim, strict) = stripe_sim::spawn(stripe_sim::SimConfig {
        seed,
        api_key: Some(STRIPE_KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let limit = RateLimitConfig {
        per_second: 100,
        burst: 100,
    };
    let wrong = serve_api_gated(app.db.clone(), &strict, limit, "sk_test_revoked").await;
    let right = serve_api_gated(app.db.clone(), &strict, limit, STRIPE_KEY).await;
    let key = idem();
    let body = json!({"amount": 1000, "currency": "usd"});
    let as_app = |(base, gate)| TestApp {
        base,
        key: app.key.clone(),
        db: app.db.clone(),
        primary: app.primary.clone(),
        stripe_base: strict.clone(),
        http: app.http.clone(),
        gate,
    };
    let (status, _, res) = as_app(wrong).create(&key, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["error"]["code"], "processor_unavailable");
    assert_eq!(res["payment"]["status"], "pending", "not failed");
    assert!(
        !res.to_string().contains("API Key"),
        "Stripe's words stay out: {res}"
    );
    let (status, _, res) = as_app(right).create(&key, &body).await;
    assert_eq!(status, StatusCode::CREATED, "resumed, not replayed: {res}");
}

/// I5: a NUL character is the client's 400 (PostgreSQL would refuse it), and writes nothing.
#[tokio::test]
async fn a_nul_character_is_a_400_not_a_database_outage() {
    let app = spawn_app().await;
    for body in [
        json!({"amount": 1000, "currency": "usd", "description": "a\u{0}b"}),
        json!({"amount": 1000, "currency": "usd", "metadata": {"k\u{0}": "v"}}),
    ] {
        let key = idem();
        let (status, _, res) = app.create(&key, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{res}");
        assert_eq!(res["error"]["code"], "invalid_body");
        assert_eq!(app.rows_for_key(&key).await, 0);
    }
}
