//! The CSV of the itemized balance reports, as Stripe writes it: one row per balance
//! transaction, amounts in major units, times in UTC as `YYYY-MM-DD HH:MM:SS`.

use std::fmt::Write;

use super::super::ledger::{BalanceTxn, zero_decimal};

/// A column a run can ask for (`parameters[columns][]`), by Stripe's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    BalanceTransactionId,
    CreatedUtc,
    Created,
    AvailableOnUtc,
    AvailableOn,
    Currency,
    Gross,
    Fee,
    Net,
    ReportingCategory,
    SourceId,
    Description,
    CustomerFacingAmount,
    CustomerFacingCurrency,
    ChargeId,
    PaymentIntentId,
    /// `payment_metadata[key]`: the metadata of the row's PaymentIntent.
    PaymentMetadata(String),
    /// `refund_metadata[key]`: the metadata of the row's refund (empty on charges).
    RefundMetadata(String),
}

const NAMED: [(&str, Column); 16] = [
    ("balance_transaction_id", Column::BalanceTransactionId),
    ("created_utc", Column::CreatedUtc),
    ("created", Column::Created),
    ("available_on_utc", Column::AvailableOnUtc),
    ("available_on", Column::AvailableOn),
    ("currency", Column::Currency),
    ("gross", Column::Gross),
    ("fee", Column::Fee),
    ("net", Column::Net),
    ("reporting_category", Column::ReportingCategory),
    ("source_id", Column::SourceId),
    ("description", Column::Description),
    ("customer_facing_amount", Column::CustomerFacingAmount),
    ("customer_facing_currency", Column::CustomerFacingCurrency),
    ("charge_id", Column::ChargeId),
    ("payment_intent_id", Column::PaymentIntentId),
];

/// Stripe's default columns of `balance_change_from_activity.itemized.1`.
pub const ITEMIZED_1: &[&str] = &[
    "balance_transaction_id",
    "created_utc",
    "available_on_utc",
    "currency",
    "gross",
    "fee",
    "net",
    "reporting_category",
    "description",
];

/// The defaults of `balance_change_from_activity.itemized.2`: the local-time columns
/// (UTC here: the sim takes no `timezone`), the source and the customer-facing amount.
pub const ITEMIZED_2: &[&str] = &[
    "balance_transaction_id",
    "created_utc",
    "created",
    "available_on_utc",
    "available_on",
    "currency",
    "gross",
    "fee",
    "net",
    "reporting_category",
    "source_id",
    "description",
    "customer_facing_amount",
    "customer_facing_currency",
];

impl Column {
    pub fn parse(name: &str) -> Option<Column> {
        if let Some((_, c)) = NAMED.iter().find(|(n, _)| *n == name) {
            return Some(c.clone());
        }
        let key = |prefix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(']')
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
        };
        key("payment_metadata[")
            .map(Column::PaymentMetadata)
            .or_else(|| key("refund_metadata[").map(Column::RefundMetadata))
    }

    pub fn is_metadata(&self) -> bool {
        matches!(self, Column::PaymentMetadata(_) | Column::RefundMetadata(_))
    }
}

/// An amount in major units, as Stripe's reports write it: `12.50` for 1250 cents,
/// `-0.05`, and whole units for zero-decimal currencies (`500` for ¥500). Reconcilers
/// parse these back to minor units, so the rendering must be exact: integer arithmetic,
/// never floats.
pub fn major_units(out: &mut String, amount: i64, currency: &str) {
    if zero_decimal(currency) {
        let _ = write!(out, "{amount}");
        return;
    }
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:02}", abs / 100, abs % 100);
}

/// Unix seconds as Stripe's reports write UTC times: `2026-12-02 07:30:00`.
pub fn utc(out: &mut String, t: i64) {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A field, quoted when it must be (RFC 4180): descriptions and metadata are free text.
pub fn field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

pub fn header(columns: &[String]) -> String {
    let mut out = String::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(&mut out, c);
    }
    out.push('\n');
    out
}

/// Writes one row. `meta` answers what the row does not hold inline (the state looks it
/// up): metadata columns, and the intent id of a seeded row whose id is not of the sim's
/// shape.
pub fn row(
    out: &mut String,
    r: &BalanceTxn,
    columns: &[Column],
    meta: impl Fn(&Column) -> Option<String>,
) {
    let currency = r.currency.as_str();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match c {
            Column::BalanceTransactionId => {
                out.push_str("txn_");
                out.push_str(r.id.as_str());
            }
            Column::CreatedUtc | Column::Created => utc(out, r.created),
            Column::AvailableOnUtc | Column::AvailableOn => utc(out, r.available_on),
            Column::Currency | Column::CustomerFacingCurrency => out.push_str(currency),
            Column::Gross | Column::CustomerFacingAmount => major_units(out, r.amount, currency),
            Column::Fee => major_units(out, r.fee, currency),
            Column::Net => major_units(out, r.net(), currency),
            Column::ReportingCategory => out.push_str(r.kind.as_str()),
            Column::SourceId => match r.refund {
                Some(re) => {
                    out.push_str("re_");
                    out.push_str(re.as_str());
                }
                None => {
                    out.push_str("ch_");
                    out.push_str(r.charge.as_str());
                }
            },
            Column::Description => field(out, r.description.as_deref().unwrap_or_default()),
            Column::ChargeId => {
                out.push_str("ch_");
                out.push_str(r.charge.as_str());
            }
            Column::PaymentIntentId if r.foreign_intent().is_some() => {
                if let Some(v) = meta(c) {
                    field(out, &v);
                }
            }
            Column::PaymentIntentId => {
                out.push_str("pi_");
                out.push_str(r.payment_intent.as_str());
            }
            Column::PaymentMetadata(_) | Column::RefundMetadata(_) => {
                if let Some(v) = meta(c) {
                    field(out, &v);
                }
            }
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(a: i64, currency: &str) -> String {
        let mut s = String::new();
        major_units(&mut s, a, currency);
        s
    }

    #[test]
    fn amounts_are_major_units_as_stripe_writes_them() {
        assert_eq!(amount(1250, "usd"), "12.50");
        assert_eq!(amount(-1250, "usd"), "-12.50");
        assert_eq!(amount(5, "eur"), "0.05");
        assert_eq!(amount(-5, "eur"), "-0.05");
        assert_eq!(amount(0, "usd"), "0.00");
        assert_eq!(amount(99_999_999, "usd"), "999999.99");
        assert_eq!(amount(500, "jpy"), "500");
        assert_eq!(amount(-500, "jpy"), "-500");
        assert_eq!(amount(18, "jpy"), "18");
        assert_eq!(amount(100, "krw"), "100");
    }

    #[test]
    fn times_are_utc_as_stripe_writes_them() {
        let t = |secs| {
            let mut s = String::new();
            utc(&mut s, secs);
            s
        };
        assert_eq!(t(0), "1970-01-01 00:00:00");
        assert_eq!(t(1_796_196_600), "2026-12-02 07:30:00");
        assert_eq!(t(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(t(1_709_251_199), "2024-02-29 23:59:59");
        assert_eq!(t(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn free_text_is_quoted_only_when_it_must_be() {
        let f = |s| {
            let mut out = String::new();
            field(&mut out, s);
            out
        };
        assert_eq!(f("plain"), "plain");
        assert_eq!(f("a,b"), "\"a,b\"");
        assert_eq!(f("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(f("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn columns_by_stripes_names() {
        assert_eq!(
            Column::parse("payment_intent_id"),
            Some(Column::PaymentIntentId)
        );
        assert_eq!(
            Column::parse("payment_metadata[payment_id]"),
            Some(Column::PaymentMetadata("payment_id".into()))
        );
        assert_eq!(
            Column::parse("refund_metadata[refund_id]"),
            Some(Column::RefundMetadata("refund_id".into()))
        );
        assert_eq!(Column::parse("payment_metadata[]"), None);
        assert_eq!(Column::parse("nope"), None);
        for c in ITEMIZED_1.iter().chain(ITEMIZED_2) {
            assert!(Column::parse(c).is_some(), "{c}");
        }
    }
}
