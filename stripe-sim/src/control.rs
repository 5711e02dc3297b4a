//! The `/_sim` namespace: what tests use to make Stripe misbehave and to look inside.
//! Documented in the crate's README.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Sim;
use crate::error::StripeError;
use crate::faults::Faults;
use crate::form::Params;
use crate::state::{Ctx, LedgerSeed, World};

pub fn routes() -> axum::Router<Sim> {
    axum::Router::new()
        .route(
            "/_sim/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route("/_sim/reset", post(reset))
        .route("/_sim/state", get(dump))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/world", get(get_world).put(put_world))
        .route("/_sim/clock", get(clock))
        .route("/_sim/clock/advance", post(advance))
        .route(
            "/_sim/payment_methods/{pm}/decline_next",
            post(decline_next),
        )
        .route(
            "/_sim/payment_intents/{id}/authenticate",
            post(authenticate),
        )
        .route("/_sim/webhook_endpoints", post(create_endpoint))
        .route(
            "/_sim/webhook_endpoints/{id}/roll_secret",
            post(roll_secret),
        )
        .route("/_sim/deliveries", get(deliveries))
        .route(
            "/_sim/ledger",
            // 20,000 entries are ~3 MB of JSON, over axum's 2 MB default; past this
            // limit (413) the request is far over the entry limit anyway.
            post(seed_ledger).layer(DefaultBodyLimit::max(SEED_BODY_LIMIT)),
        )
}

const SEED_BODY_LIMIT: usize = 64 << 20;

fn bad(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"type": "invalid_request_error", "message": msg.into()}})),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    seed: Option<u64>,
}

async fn reset(State(sim): State<Sim>, body: Option<Json<ResetBody>>) -> Json<Value> {
    let seed = body.and_then(|Json(b)| b.seed);
    sim.reset(seed);
    Json(json!({"reset": true, "seed": sim.state().seed()}))
}

async fn dump(State(sim): State<Sim>) -> Json<Value> {
    let mut v = sim.state().dump();
    v["clock_ms"] = json!(sim.inner.clock.now_ms());
    Json(v)
}

async fn get_faults(State(sim): State<Sim>) -> Json<Faults> {
    Json(sim.state().faults().clone())
}

async fn put_faults(State(sim): State<Sim>, Json(f): Json<Faults>) -> Response {
    if let Err(e) = f.validate() {
        return bad(e.to_string());
    }
    sim.state().set_faults(f.clone());
    Json(f).into_response()
}

async fn get_world(State(sim): State<Sim>) -> Json<World> {
    Json(sim.state().world().clone())
}

async fn put_world(State(sim): State<Sim>, Json(w): Json<World>) -> Json<World> {
    sim.state().set_world(w.clone());
    Json(w)
}

async fn clock(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"now_ms": sim.inner.clock.now_ms()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    #[serde(default)]
    seconds: i64,
    #[serde(default)]
    ms: i64,
}

async fn advance(State(sim): State<Sim>, Json(a): Json<Advance>) -> Response {
    let ms = a.seconds.saturating_mul(1000).saturating_add(a.ms);
    if ms < 0 {
        return bad("the clock only moves forward");
    }
    sim.inner.clock.advance_ms(ms);
    sim.inner.wake.notify_one();
    Json(json!({"now_ms": sim.inner.clock.now_ms()})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclineNext {
    count: u32,
}

async fn decline_next(
    State(sim): State<Sim>,
    Path(pm): Path<String>,
    Json(d): Json<DeclineNext>,
) -> Json<Value> {
    sim.state().decline_next(&pm, d.count);
    Json(json!({"payment_method": pm, "declines_left": d.count}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Authenticate {
    outcome: String,
}

async fn authenticate(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(a): Json<Authenticate>,
) -> Response {
    let succeed = match a.outcome.as_str() {
        "succeed" => true,
        "fail" => false,
        other => return bad(format!("outcome must be succeed or fail, not {other}")),
    };
    let ctx = Ctx {
        now_ms: sim.inner.clock.now_ms(),
        ..Ctx::default()
    };
    let r = sim.state().authenticate(&id, succeed, &ctx);
    sim.inner.wake.notify_one();
    respond(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
    secret: Option<String>,
    #[serde(default = "all_events")]
    enabled_events: Vec<String>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

/// Like `POST /v1/webhook_endpoints`, but with a secret chosen by the caller, so a
/// stack can give its webhook service the secret up front.
async fn create_endpoint(State(sim): State<Sim>, Json(e): Json<NewEndpoint>) -> Response {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("url", &e.url);
    for ev in &e.enabled_events {
        form.append_pair("enabled_events[]", ev);
    }
    let ctx = Ctx {
        now_ms: sim.inner.clock.now_ms(),
        ..Ctx::default()
    };
    let r = sim
        .state()
        .create_endpoint(&Params::parse(&form.finish()), &ctx, e.secret);
    respond(r)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Roll {
    secret: Option<String>,
    #[serde(default = "day")]
    old_expires_in_seconds: i64,
}

fn day() -> i64 {
    86_400
}

async fn roll_secret(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(r): Json<Roll>,
) -> Response {
    let now = sim.inner.clock.now_ms();
    let res = sim.state().roll_secret(
        &id,
        r.old_expires_in_seconds.saturating_mul(1000),
        r.secret,
        now,
    );
    respond(res)
}

/// Books balance transactions in bulk, with no PaymentIntents behind them (see
/// `state::seeding`). The body is checked before the lock is taken.
async fn seed_ledger(State(sim): State<Sim>, body: Bytes) -> Response {
    let seed = match LedgerSeed::parse(&body, sim.inner.clock.now_s()) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let booked = sim.state().seed_ledger(seed);
    match booked {
        Ok(v) => Json(v).into_response(),
        Err((status, msg)) => (
            status,
            Json(json!({"error": {"type": "invalid_request_error", "message": msg}})),
        )
            .into_response(),
    }
}

async fn deliveries(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"data": sim.state().deliveries()}))
}

fn respond(r: Result<Value, StripeError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
