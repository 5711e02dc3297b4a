//! Validation of what clients send, before anything touches the database.

use std::collections::BTreeMap;

use paystream_core::{Currency, Money, MoneyError};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The body of `POST /v1/payments`. Unknown fields are refused; `amount` must be a JSON
/// integer (12.5 and "1250" are refused by the parser).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// Integer minor units (cents; yen for JPY), greater than 0.
    pub amount: i64,
    /// ISO 4217, lower case, e.g. "usd".
    pub currency: String,
    pub description: Option<String>,
    pub customer_email: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
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
    if request.metadata.len() > MAX_METADATA_KEYS {
        return Err(ApiError::bad_request(
            "metadata_invalid",
            format!("metadata has more than {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (k, v) in &request.metadata {
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
    Ok(ValidPayment { money, request })
}

/// Deliberately loose (one `@`, something on each side, a dot in the domain, no spaces):
/// the real check is the receipt reaching the customer.
fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    e.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
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
    }
}
