//! The `/v1` endpoints, thin: read the parsed form, call the state, render. Everything
//! else (auth, limits, faults, idempotency) happened in the layers in front.

use axum::Extension;
use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::idempotency::Executed;
use super::request_id::RequestId;
use crate::Sim;
use crate::error::StripeError;
use crate::form::Params;
use crate::state::Ctx;

/// An endpoint's outcome. Success, and errors of an endpoint that began executing, are
/// marked for the idempotency layer to store.
pub struct Reply(Result<Value, StripeError>);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let (mut res, executed) = match self.0 {
            Ok(v) => (Json(v).into_response(), true),
            Err(e) => {
                let executed = e.executed;
                (e.into_response(), executed)
            }
        };
        if executed {
            res.extensions_mut().insert(Executed);
        }
        res
    }
}

impl FromRequestParts<Sim> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, sim: &Sim) -> Result<Self, Self::Rejection> {
        Ok(Ctx {
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            idempotency_key: parts
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            now_ms: sim.inner.clock.now_ms(),
        })
    }
}

/// The object id in the URL. An id axum cannot decode is no URL Stripe knows.
pub struct Id(String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = StripeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Id(id)),
            Err(_) => Err(StripeError::unrecognized_url(
                parts.method.as_str(),
                parts.uri.path(),
            )),
        }
    }
}

type Form = Extension<Params>;

/// An answer that is a PaymentIntent, with what the request asked to `expand[]`.
fn intent_reply(
    sim: &Sim,
    p: &Params,
    run: impl FnOnce(&mut crate::state::State) -> Result<Value, StripeError>,
) -> Reply {
    let mut st = sim.state();
    let r = run(&mut st);
    Reply(r.map(|v| st.expand_intent(v, p)))
}

pub async fn create_intent(State(sim): State<Sim>, ctx: Ctx, Extension(p): Form) -> Reply {
    intent_reply(&sim, &p, |st| st.create_intent(&p, &ctx))
}

pub async fn list_intents(State(sim): State<Sim>, Extension(p): Form) -> Reply {
    Reply(sim.state().list_intents(&p))
}

pub async fn search_intents(State(sim): State<Sim>, Extension(p): Form) -> Reply {
    Reply(sim.state().search_intents(&p))
}

pub async fn retrieve_intent(State(sim): State<Sim>, Id(id): Id, Extension(p): Form) -> Reply {
    intent_reply(&sim, &p, |st| st.retrieve(&id))
}

pub async fn update_intent(State(sim): State<Sim>, Id(id): Id, Extension(p): Form) -> Reply {
    intent_reply(&sim, &p, |st| st.update(&id, &p))
}

pub async fn confirm_intent(
    State(sim): State<Sim>,
    Id(id): Id,
    ctx: Ctx,
    Extension(p): Form,
) -> Reply {
    intent_reply(&sim, &p, |st| {
        st.confirm(&id, p.string("payment_method"), &ctx)
    })
}

pub async fn cancel_intent(
    State(sim): State<Sim>,
    Id(id): Id,
    ctx: Ctx,
    Extension(p): Form,
) -> Reply {
    intent_reply(&sim, &p, |st| st.cancel(&id, &p, &ctx))
}

pub async fn capture_intent(
    State(sim): State<Sim>,
    Id(id): Id,
    ctx: Ctx,
    Extension(p): Form,
) -> Reply {
    intent_reply(&sim, &p, |st| st.capture(&id, &p, &ctx))
}

pub async fn retrieve_charge(State(sim): State<Sim>, Id(id): Id, Extension(p): Form) -> Reply {
    Reply(sim.state().retrieve_charge(&id, &p))
}

pub async fn create_refund(State(sim): State<Sim>, ctx: Ctx, Extension(p): Form) -> Reply {
    Reply(sim.state().create_refund(&p, &ctx))
}

pub async fn list_refunds(State(sim): State<Sim>, Extension(p): Form) -> Reply {
    Reply(sim.state().list_refunds(&p))
}

pub async fn retrieve_refund(State(sim): State<Sim>, Id(id): Id) -> Reply {
    Reply(sim.state().retrieve_refund(&id))
}

pub async fn update_refund(
    State(sim): State<Sim>,
    Id(id): Id,
    ctx: Ctx,
    Extension(p): Form,
) -> Reply {
    Reply(sim.state().update_refund(&id, &p, &ctx))
}

pub async fn cancel_refund(State(sim): State<Sim>, Id(id): Id) -> Reply {
    Reply(sim.state().cancel_refund(&id))
}

pub async fn list_events(State(sim): State<Sim>, Extension(p): Form) -> Reply {
    Reply(sim.state().list_events(&p))
}

pub async fn retrieve_event(State(sim): State<Sim>, Id(id): Id) -> Reply {
    Reply(sim.state().event(&id))
}

pub async fn create_endpoint(State(sim): State<Sim>, ctx: Ctx, Extension(p): Form) -> Reply {
    Reply(sim.state().create_endpoint(&p, &ctx, None))
}

pub async fn list_endpoints(State(sim): State<Sim>) -> Reply {
    Reply(Ok(sim.state().list_endpoints()))
}

pub async fn retrieve_endpoint(State(sim): State<Sim>, Id(id): Id) -> Reply {
    Reply(sim.state().retrieve_endpoint(&id))
}

pub async fn update_endpoint(State(sim): State<Sim>, Id(id): Id, Extension(p): Form) -> Reply {
    Reply(sim.state().update_endpoint(&id, &p))
}

pub async fn delete_endpoint(State(sim): State<Sim>, Id(id): Id) -> Reply {
    Reply(sim.state().delete_endpoint(&id))
}

/// Stripe answers an unknown path, or a method a path does not take, with a 404.
pub async fn unrecognized(method: Method, uri: Uri) -> StripeError {
    StripeError::unrecognized_url(method.as_str(), uri.path())
}

pub async fn list_balance_transactions(State(sim): State<Sim>, Extension(p): Form) -> Reply {
    let now = sim.inner.clock.now_s();
    Reply(sim.state().list_balance_transactions(&p, now))
}

pub async fn retrieve_balance_transaction(State(sim): State<Sim>, Id(id): Id) -> Reply {
    let now = sim.inner.clock.now_s();
    Reply(sim.state().retrieve_balance_transaction(&id, now))
}

/// Answers the run `pending` and starts its job. The file's `url` points back at the sim
/// as this client reached it (Stripe's points at files.stripe.com).
pub async fn create_report_run(
    State(sim): State<Sim>,
    ctx: Ctx,
    headers: HeaderMap,
    Extension(p): Form,
) -> Reply {
    let created = sim.state().create_report_run(&p, &ctx);
    if let Some(run) = created.as_ref().ok().and_then(|v| v["id"].as_str()) {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        crate::reports::spawn(sim.clone(), run.to_owned(), format!("http://{host}"));
    }
    Reply(created)
}

pub async fn retrieve_report_run(State(sim): State<Sim>, Id(id): Id) -> Reply {
    Reply(sim.state().report_run(&id))
}

pub async fn list_report_runs(State(sim): State<Sim>, Extension(p): Form) -> Reply {
    Reply(sim.state().list_report_runs(&p))
}

pub async fn retrieve_report_type(State(sim): State<Sim>, Id(id): Id) -> Reply {
    let now = sim.inner.clock.now_s();
    Reply(sim.state().report_type(&id, now))
}

pub async fn retrieve_file(State(sim): State<Sim>, Id(id): Id) -> Reply {
    Reply(sim.state().file(&id))
}

/// The file's bytes as `text/csv`, as files.stripe.com serves a report.
pub async fn file_contents(State(sim): State<Sim>, Id(id): Id) -> Result<Response, StripeError> {
    let bytes = sim.state().file_contents(&id)?;
    Ok(([(CONTENT_TYPE, "text/csv")], bytes).into_response())
}
