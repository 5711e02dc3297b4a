//! The OpenAPI 3.1 document, generated from the handlers' annotations, and a small
//! offline page that renders it and lets you try calls (no CDN: the stack has no
//! internet, and neither may an operator's browser).

use axum::Json;
use axum::response::Html;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::payments;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    pub code: String,
    pub message: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The payment concerned, when there is one.
    pub payment: Option<payments::PaymentView>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Paystream API", version = "1", description = "Idempotent payment initiation and reads. Amounts are integer minor units."),
    paths(payments::create, payments::list, payments::get, payments::events, payments::cancel, crate::reports::reconciliation, crate::analytics::summary, crate::analytics::timeseries),
    components(schemas(crate::validation::CreatePayment, payments::PaymentView, ErrorBody, ErrorDetail)),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

pub async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
