//! Validation of what clients send, before anything touches the database.

use std::collections::BTreeMap;

use paystream_core::{CaptureMethod, Currency, Money, MoneyError, RefundReason};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The body of `POST /v1/payments`. Unknown fields are refused; `amount` must be an
/// integer: 12.5 and "1250" are refused, 1250.0 is 1250 (JSON Schema's reading of an
/// integer, which the OpenAPI document promises).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// Integer minor units (cents; yen for JPY), greater than 0. The ceiling is the
    /// deployment's `max_amount` (by default Stripe's own, 99,999,999).
    #[schema(minimum = 1, maximum = 99_999_999)]
    #[serde(deserialize_with = "integral")]
    pub amount: i64,
    /// ISO 4217, lower case, one of the supported currencies.
    #[schema(schema_with = currency_schema)]
    pub currency: String,
    #[schema(max_length = 1000, pattern = "^[^\\u0000]*$")]
    pub description: Option<String>,
    /// One `@`, something on each side, a domain of dot-separated labels; no spaces or
    /// control characters; at most 254 characters.
    #[schema(schema_with = email_schema)]
    pub customer_email: Option<String>,
    /// Up to 50 keys of 1 to 40 characters, values up to 500 (Stripe's limits).
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    pub metadata: BTreeMap<String, String>,
    /// `automatic` (default): the money is taken when the customer pays. `manual`: it is
    /// held (Stripe's `requires_capture`) until `POST /v1/payments/{id}/capture`, and
    /// released if not captured within 7 days.
    // Left out of the request's identity when it is the default, so that a key stored
    // before capture methods existed still matches its retry.
    #[serde(default, skip_serializing_if = "is_automatic")]
    #[schema(value_type = String, required = false, pattern = "^(automatic|manual)$")]
    pub capture_method: CaptureMethod,
}

fn is_automatic(c: &CaptureMethod) -> bool {
    *c == CaptureMethod::Automatic
}

/// The body of `POST /v1/payments/{id}/refunds` (an empty body is `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    /// Integer minor units, greater than 0; by default (absent or null) everything left
    /// to refund.
    #[serde(default, deserialize_with = "optional_integral")]
    #[schema(minimum = 1, maximum = 99_999_999)]
    pub amount: Option<i64>,
    #[schema(value_type = Option<String>, pattern = "^(duplicate|fraudulent|requested_by_customer)$")]
    pub reason: Option<RefundReason>,
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    pub metadata: BTreeMap<String, String>,
}

/// The body of `POST /v1/payments/{id}/capture` (an empty body is `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapturePayment {
    /// Integer minor units, from 1 to the authorized amount; less captures part and
    /// releases the rest. By default (absent or null) all of it.
    #[serde(default, deserialize_with = "optional_integral")]
    #[schema(minimum = 1, maximum = 99_999_999)]
    pub amount_to_capture: Option<i64>,
}

fn optional_integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<serde_json::Number>::deserialize(d)?
        .map(|n| integral_number(&n))
        .transpose()
}

/// An integer amount written as JSON writes numbers: `1250`, or `1250.0` / `1.25e3`, whose
/// value is that integer. Anything with a fraction is refused; a value past what an `i64`
/// (or, for written-as-float, a double's exact integers) holds is clamped, so that it is
/// refused as too large or not positive rather than misread.
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    integral_number(&serde_json::Number::deserialize(d)?)
}

fn integral_number<E: serde::de::Error>(n: &serde_json::Number) -> Result<i64, E> {
    /// 2^53: every integer up to it is exact as a double.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Ok(i64::MAX);
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.fract() != 0.0 || f.is_nan() {
        return Err(E::custom("amount must be an integer number of minor units"));
    }
    Ok(match (f.abs() > EXACT, f.is_sign_negative()) {
        (true, false) => i64::MAX,
        (true, true) => i64::MIN,
        (false, _) => f as i64,
    })
}

/// What `plausible_email` accepts, for the OpenAPI document (ECMA-262, as JSON Schema).
const EMAIL_PATTERN: &str = "^[^@\\s\\x00-\\x1f\\x7f-\\x9f\\ufeff]+@[^@\\s\\x00-\\x1f\\x7f-\\x9f\\ufeff.]+(\\.[^@\\s\\x00-\\x1f\\x7f-\\x9f\\ufeff.]+)+$";

fn email_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .max_length(Some(254))
        .pattern(Some(EMAIL_PATTERN))
        .build()
}

fn currency_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Currency::supported().map(|c| c.code())))
        .build()
}

fn metadata_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::Type;
    use utoipa::openapi::{ObjectBuilder, schema::AdditionalProperties};
    let text = |max| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(max))
            .pattern(Some("^[^\\u0000]*$"))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_METADATA_KEYS))
        .property_names(Some(text(MAX_METADATA_KEY).min_length(Some(1)).build()))
        .additional_properties(Some(AdditionalProperties::RefOr(
            text(MAX_METADATA_VALUE).build().into(),
        )))
        .build()
}

/// A request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidPayment {
    pub money: Money,
    pub request: CreatePayment,
}

pub const MAX_DESCRIPTION: usize = 1000;
/// Stripe's metadata limits.
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY: usize = 40;
pub const MAX_METADATA_VALUE: usize = 500;

pub fn idempotency_key(raw: Option<&[u8]>) -> Result<String, ApiError> {
    let raw = raw.ok_or_else(|| {
        ApiError::bad_request(
            "idempotency_key_missing",
            "the Idempotency-Key header is required",
        )
    })?;
    if raw.is_empty() || raw.len() > 255 || !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(ApiError::bad_request(
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

pub fn create_payment(body: &[u8], max_amount: i64) -> Result<ValidPayment, ApiError> {
    let request: CreatePayment = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid request body: {e}")))?;
    // JSON allows "\u0000"; PostgreSQL's text and jsonb do not, and Stripe refuses it.
    // Refused here, it is the client's 400 instead of a database error (a 503 clients
    // would retry forever).
    let texts = request
        .description
        .iter()
        .chain(request.customer_email.iter())
        .chain(request.metadata.iter().flat_map(|(k, v)| [k, v]));
    for t in texts {
        if t.contains('\0') {
            return Err(ApiError::bad_request(
                "invalid_body",
                "strings must not contain the NUL character (\\u0000)",
            ));
        }
    }
    let currency = Currency::parse(&request.currency).map_err(|e| match e {
        MoneyError::UnsupportedCurrency(_) => {
            ApiError::bad_request("currency_unsupported", e.to_string())
        }
        _ => ApiError::bad_request("currency_invalid", e.to_string()),
    })?;
    let money = Money::new(request.amount, currency, max_amount).map_err(|e| match e {
        MoneyError::AmountTooLarge { .. } => {
            ApiError::bad_request("amount_too_large", e.to_string())
        }
        _ => ApiError::bad_request("amount_invalid", e.to_string()),
    })?;
    if let Some(d) = &request.description {
        if d.chars().count() > MAX_DESCRIPTION {
            return Err(ApiError::bad_request(
                "description_too_long",
                format!("description exceeds {MAX_DESCRIPTION} characters"),
            ));
        }
    }
    if let Some(e) = &request.customer_email {
        if !plausible_email(e) {
            return Err(ApiError::bad_request(
                "customer_email_invalid",
                "customer_email is not an email address",
            ));
        }
    }
    metadata(&request.metadata)?;
    Ok(ValidPayment { money, request })
}

fn metadata(m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.keys().chain(m.values()).any(|t| t.contains('\0')) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "strings must not contain the NUL character (\\u0000)",
        ));
    }
    if m.len() > MAX_METADATA_KEYS {
        return Err(ApiError::bad_request(
            "metadata_invalid",
            format!("metadata has more than {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (k, v) in m {
        if k.is_empty()
            || k.chars().count() > MAX_METADATA_KEY
            || v.chars().count() > MAX_METADATA_VALUE
        {
            return Err(ApiError::bad_request(
                "metadata_invalid",
                format!(
                    "metadata keys are 1 to {MAX_METADATA_KEY} characters, values at most {MAX_METADATA_VALUE}"
                ),
            ));
        }
    }
    Ok(())
}

/// An empty body is an empty object: these requests have only optional fields.
fn json_or_empty<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid request body: {e}")))
}

fn positive(amount: Option<i64>, max_amount: i64, field: &str) -> Result<(), ApiError> {
    match amount {
        Some(a) if a <= 0 => Err(ApiError::bad_request(
            "amount_invalid",
            format!("{field} must be greater than 0"),
        )),
        Some(a) if a > max_amount => Err(ApiError::bad_request(
            "amount_too_large",
            format!("{field} must be at most {max_amount}"),
        )),
        _ => Ok(()),
    }
}

pub fn create_refund(body: &[u8], max_amount: i64) -> Result<CreateRefund, ApiError> {
    let request: CreateRefund = json_or_empty(body)?;
    positive(request.amount, max_amount, "amount")?;
    metadata(&request.metadata)?;
    Ok(request)
}

pub fn capture_payment(body: &[u8], max_amount: i64) -> Result<CapturePayment, ApiError> {
    let request: CapturePayment = json_or_empty(body)?;
    positive(request.amount_to_capture, max_amount, "amount_to_capture")?;
    Ok(request)
}

/// Deliberately loose (one `@`, something on each side, a dot in the domain, no spaces):
/// the real check is the receipt reaching the customer.
fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    // The same characters ECMA-262's `\s` and `\p{Cc}` name, so the OpenAPI pattern
    // (EMAIL_PATTERN) and this function agree on every input.
    let blank = |c: char| c.is_whitespace() || c.is_control() || c == '\u{feff}';
    e.chars().count() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
        && !domain.contains('@')
        && !e.chars().any(blank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: i64 = 1_000_000;

    fn code(r: Result<ValidPayment, ApiError>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.code)
    }

    #[test]
    fn bodies_and_their_error_codes() {
        let cases: &[(&str, &str)] = &[
            (r#"{"amount":1250,"currency":"usd"}"#, "ok"),
            (
                r#"{"amount":500,"currency":"jpy","metadata":{"order":"7"}}"#,
                "ok",
            ),
            (r#"{"amount":0,"currency":"usd"}"#, "amount_invalid"),
            (r#"{"amount":-1,"currency":"usd"}"#, "amount_invalid"),
            (r#"{"amount":1000001,"currency":"usd"}"#, "amount_too_large"),
            (r#"{"amount":12.5,"currency":"usd"}"#, "invalid_body"),
            (r#"{"amount":1250.0,"currency":"usd"}"#, "ok"),
            (r#"{"amount":1.25e3,"currency":"usd"}"#, "ok"),
            (r#"{"amount":1e300,"currency":"usd"}"#, "amount_too_large"),
            (r#"{"amount":-1e300,"currency":"usd"}"#, "amount_invalid"),
            (
                r#"{"amount":18446744073709551615,"currency":"usd"}"#,
                "amount_too_large",
            ),
            (
                r#"{"amount":1250,"currency":"usd","customer_email":"a@b..co"}"#,
                "customer_email_invalid",
            ),
            (
                r#"{"amount":1250,"currency":"usd","customer_email":"a@b.co\ufeff"}"#,
                "customer_email_invalid",
            ),
            (r#"{"amount":"1250","currency":"usd"}"#, "invalid_body"),
            (r#"{"amount":1250,"currency":"USD"}"#, "currency_invalid"),
            (
                r#"{"amount":1250,"currency":"xyz"}"#,
                "currency_unsupported",
            ),
            (r#"{"amount":1250}"#, "invalid_body"),
            (
                r#"{"amount":1250,"currency":"usd","colour":"red"}"#,
                "invalid_body",
            ),
            (
                r#"{"amount":1250,"currency":"usd","customer_email":"no-at-sign"}"#,
                "customer_email_invalid",
            ),
            (
                r#"{"amount":1250,"currency":"usd","metadata":{"":"x"}}"#,
                "metadata_invalid",
            ),
            (r#"not json"#, "invalid_body"),
            (
                r#"{"amount":1250,"currency":"usd","description":"a\u0000b"}"#,
                "invalid_body",
            ),
            (
                r#"{"amount":1250,"currency":"usd","metadata":{"k\u0000":"v"}}"#,
                "invalid_body",
            ),
            (
                r#"{"amount":1250,"currency":"usd","metadata":{"k":"\u0000"}}"#,
                "invalid_body",
            ),
            (
                r#"{"amount":1250,"currency":"usd","customer_email":"a\u0000@b.co"}"#,
                "invalid_body",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                code(create_payment(body.as_bytes(), MAX)),
                *expected,
                "{body}"
            );
        }
        let long = format!(
            r#"{{"amount":1,"currency":"usd","description":"{}"}}"#,
            "x".repeat(1001)
        );
        assert_eq!(
            code(create_payment(long.as_bytes(), MAX)),
            "description_too_long"
        );
        let many: BTreeMap<String, String> =
            (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        let body =
            serde_json::json!({"amount": 1, "currency": "usd", "metadata": many}).to_string();
        assert_eq!(
            code(create_payment(body.as_bytes(), MAX)),
            "metadata_invalid"
        );
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key(Some(b"order-7")).unwrap(), "order-7");
        assert_eq!(
            idempotency_key(None).unwrap_err().code,
            "idempotency_key_missing"
        );
        for bad in [&b""[..], &[b'a'; 256][..], b"tab\there", "é".as_bytes()] {
            assert_eq!(
                idempotency_key(Some(bad)).unwrap_err().code,
                "idempotency_key_invalid",
                "{bad:?}"
            );
        }
        assert!(idempotency_key(Some(&[b'a'; 255])).is_ok());
    }

    proptest! {
        #[test]
        fn amounts_are_accepted_exactly_within_bounds(amount in any::<i64>()) {
            let body = format!(r#"{{"amount":{amount},"currency":"usd"}}"#);
            prop_assert_eq!(create_payment(body.as_bytes(), MAX).is_ok(), (1..=MAX).contains(&amount));
        }

        #[test]
        fn any_currency_string_is_ok_only_if_supported(c in "[a-zA-Z]{0,5}") {
            let body = serde_json::json!({"amount": 100, "currency": c}).to_string();
            let ok = create_payment(body.as_bytes(), MAX).is_ok();
            prop_assert_eq!(ok, Currency::parse(&c).is_ok());
        }

        #[test]
        fn any_key_is_ok_only_if_printable_ascii_and_1_to_255(key in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ok = idempotency_key(Some(&key)).is_ok();
            let expected = !key.is_empty() && key.len() <= 255 && key.iter().all(|b| (0x20..=0x7e).contains(b));
            prop_assert_eq!(ok, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = create_payment(&body, MAX);
        }

        /// The OpenAPI document's email pattern and the check agree on every input, so a
        /// generated client (or a contract fuzzer) and the API never disagree.
        #[test]
        fn the_email_pattern_is_the_check(local in "[a-z@. \\t\\u{85}\\u{a0}\\u{feff}\\u{1f}é]{0,6}", domain in "[a-z@. \\u{2028}\\u{9f}\\u{3000}]{0,8}") {
            let pattern = regex::Regex::new(EMAIL_PATTERN).unwrap();
            for e in [format!("{local}@{domain}"), local.clone(), format!("{local}@x.{domain}")] {
                prop_assert_eq!(plausible_email(&e), pattern.is_match(&e), "{:?}", e);
            }
        }

        /// Whatever text a client sends, what passes validation can be stored: no NUL
        /// (PostgreSQL refuses it in text and jsonb).
        #[test]
        fn accepted_text_is_storable(description in "\\PC{0,20}|[\\x00-\\x7f]{0,20}", key in "[\\x00-\\x7f]{1,10}", value in "\\PC{0,10}|[\\x00-\\x7f]{0,10}") {
            let body = serde_json::json!({"amount": 100, "currency": "usd", "description": description, "metadata": {key.clone(): value.clone()}}).to_string();
            if let Ok(v) = create_payment(body.as_bytes(), MAX) {
                let texts = [v.request.description.unwrap_or_default(), key, value];
                prop_assert!(texts.iter().all(|t| !t.contains('\0')));
            }
        }
    }
}
