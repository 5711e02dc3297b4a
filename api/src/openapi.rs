//! The OpenAPI 3.1 document, generated from the handlers' annotations, and Swagger UI to
//! read it and try calls (its assets are compiled in: the stack has no internet, and
//! neither may an operator's browser).

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

/// The answers every keyed operation can give, whatever it does: stated once here so
/// that no operation's list is missing one (generated clients and contract tools read
/// the document as the whole truth).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let keyed = [
            (
                "401",
                "`unauthorized`: no key, or a key that is unknown or revoked",
            ),
            (
                "429",
                "`rate_limited`: too many requests for this key (or with unknown keys); see `Retry-After`",
            ),
            (
                "503",
                "`database_unavailable`: retry later; nothing was changed",
            ),
        ];
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                if op.security.is_some() {
                    for (status, description) in keyed {
                        op.responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| error(description).into());
                    }
                }
                if op.request_body.is_some() {
                    op.responses
                        .responses
                        .entry("413".to_owned())
                        .or_insert_with(|| error("`body_too_large`").into());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Paystream API", version = "1", description = "Idempotent payment initiation and reads. Amounts are integer minor units."),
    paths(payments::create, payments::list, payments::get, payments::events, payments::cancel, payments::capture, crate::refunds::create, crate::refunds::list, crate::refunds::get, crate::reports::reconciliation, crate::reports::start_run, crate::reports::get_run, crate::analytics::summary, crate::analytics::timeseries),
    components(schemas(crate::validation::CreatePayment, crate::validation::CreateRefund, crate::validation::CapturePayment, payments::PaymentView, crate::refunds::RefundObject, ErrorBody, ErrorDetail)),
    modifiers(&Bearer, &CommonResponses)
)]
pub struct ApiDoc;

/// `/openapi.json` and Swagger UI at `/docs`, its assets compiled in (no CDN: the page
/// works offline and behind a strict proxy).
pub fn docs() -> utoipa_swagger_ui::SwaggerUi {
    utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi())
}
