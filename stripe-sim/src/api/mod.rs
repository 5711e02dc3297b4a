//! The Stripe API surface under `/v1`: a pipeline of layers, in Stripe's order, in front
//! of thin endpoint handlers routed by axum.
//!
//! 1. `request_id`: every answer carries `Request-Id` and `Stripe-Version`.
//! 2. `auth`: the Bearer secret key, else 401.
//! 3. `rate_limit`: global and per-endpoint token buckets, else 429.
//! 4. `faults::inject_errors`: injected 429s and 500s.
//! 5. `params`: the form, parsed once for the fingerprint and the endpoint.
//! 6. `idempotency`: replay, reject reuse or concurrency, store the first response.
//! 7. `faults::latency`: injected processing time, while the key is held.
//! 8. `wake_deliveries`, then the handler.

mod auth;
mod faults;
mod handlers;
mod idempotency;
mod params;
mod rate_limit;
mod request_id;

use axum::Router;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, post};
use tower::ServiceBuilder;

pub use idempotency::{IdempotencyStore, KEY_TTL_MS as IDEMPOTENCY_KEY_TTL_MS};
pub use rate_limit::Limiter;

use crate::Sim;
use handlers as h;

pub fn router(sim: Sim) -> Router {
    let pipeline = ServiceBuilder::new()
        .layer(from_fn_with_state(sim.clone(), request_id::stamp))
        .layer(from_fn_with_state(sim.clone(), auth::authenticate))
        .layer(from_fn_with_state(sim.clone(), rate_limit::limit))
        .layer(from_fn_with_state(sim.clone(), faults::inject_errors))
        .layer(from_fn(params::parse))
        .layer(from_fn_with_state(sim.clone(), idempotency::layer))
        .layer(from_fn_with_state(sim.clone(), faults::latency))
        .layer(from_fn_with_state(sim.clone(), wake_deliveries));
    Router::new()
        .route(
            "/v1/payment_intents",
            get_only(h::list_intents).post(h::create_intent),
        )
        .route("/v1/payment_intents/search", get_only(h::search_intents))
        .route(
            "/v1/payment_intents/{id}",
            get_only(h::retrieve_intent).post(h::update_intent),
        )
        .route("/v1/payment_intents/{id}/confirm", post(h::confirm_intent))
        .route("/v1/payment_intents/{id}/cancel", post(h::cancel_intent))
        .route("/v1/payment_intents/{id}/capture", post(h::capture_intent))
        .route("/v1/charges/{id}", get_only(h::retrieve_charge))
        .route(
            "/v1/refunds",
            get_only(h::list_refunds).post(h::create_refund),
        )
        .route(
            "/v1/refunds/{id}",
            get_only(h::retrieve_refund).post(h::update_refund),
        )
        .route("/v1/refunds/{id}/cancel", post(h::cancel_refund))
        .route(
            "/v1/balance_transactions",
            get_only(h::list_balance_transactions),
        )
        .route(
            "/v1/balance_transactions/{id}",
            get_only(h::retrieve_balance_transaction),
        )
        .route(
            "/v1/reporting/report_runs",
            get_only(h::list_report_runs).post(h::create_report_run),
        )
        .route(
            "/v1/reporting/report_runs/{id}",
            get_only(h::retrieve_report_run),
        )
        .route(
            "/v1/reporting/report_types/{id}",
            get_only(h::retrieve_report_type),
        )
        .route("/v1/files/{id}", get_only(h::retrieve_file))
        .route("/v1/files/{id}/contents", get_only(h::file_contents))
        .route("/v1/events", get_only(h::list_events))
        .route("/v1/events/{id}", get_only(h::retrieve_event))
        .route(
            "/v1/webhook_endpoints",
            get_only(h::list_endpoints).post(h::create_endpoint),
        )
        .route(
            "/v1/webhook_endpoints/{id}",
            get_only(h::retrieve_endpoint)
                .post(h::update_endpoint)
                .merge(delete(h::delete_endpoint)),
        )
        .method_not_allowed_fallback(h::unrecognized)
        .fallback(h::unrecognized)
        .layer(pipeline)
        // Outermost: what auth, rate limits and faults answer is counted too.
        .layer(from_fn_with_state(sim.clone(), crate::metrics::observe))
        .with_state(sim)
}

/// axum serves HEAD with a GET handler; Stripe's API has no HEAD, so it is unrecognized.
fn get_only<H, T>(handler: H) -> MethodRouter<Sim>
where
    H: Handler<T, Sim>,
    T: 'static,
{
    get(handler).head(h::unrecognized)
}

/// An endpoint may have queued deliveries or changed what is due: the delivery loop
/// looks now rather than at its next tick.
async fn wake_deliveries(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    sim.inner.wake.notify_one();
    res
}
