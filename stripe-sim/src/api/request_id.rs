//! Outermost layer: every `/v1` answer, errors included, carries a `Request-Id` and the
//! `Stripe-Version` it was rendered with, as Stripe's do. Events record the id.

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::Sim;
use crate::state::API_VERSION;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

pub async fn stamp(State(sim): State<Sim>, mut req: Request, next: Next) -> Response {
    let id = sim.next_request_id();
    let value = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("req"));
    req.extensions_mut().insert(RequestId(id));
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("request-id", value);
    h.insert("stripe-version", HeaderValue::from_static(API_VERSION));
    res
}
