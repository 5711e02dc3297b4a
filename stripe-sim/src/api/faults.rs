//! Injected API faults. Errors are drawn before the endpoint runs (they never store an
//! idempotent response); latency sits inside the idempotency layer, so that it stands for
//! the endpoint's own processing time and a concurrent retry sees the key in flight.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Sim;
use crate::error::StripeError;
use crate::state::ApiFault;

pub async fn inject_errors(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let fault = sim.state().roll_api_fault();
    match fault {
        Some(ApiFault::RateLimited) => StripeError::rate_limited().into_response(),
        Some(ApiFault::Error) => {
            StripeError::api_error("An unknown error occurred (injected by stripe-sim).")
                .into_response()
        }
        None => next.run(req).await,
    }
}

pub async fn latency(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let ms = sim.state().faults().api_latency_ms;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    next.run(req).await
}
