//! Debezium's `timestamptz` columns, read fast. Debezium writes them as UTC in one
//! shape (`2026-11-24T10:59:21.123456Z`, the fraction without trailing zeros, or none);
//! chrono's general RFC 3339 parser was a tenth of the time spent decoding a change.
//! That shape is read by hand; anything else goes to chrono, so both accept the same
//! strings and agree on every value (a property test holds them to it).

use chrono::{DateTime, Utc};
use serde::Deserializer;
use serde::de::{Error, Visitor};

/// `deserialize_with` for a `DateTime<Utc>` field of a change: the string is parsed where
/// it lies in the message, not copied.
pub(crate) fn deserialize_utc<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct Utc3339;
    impl Visitor<'_> for Utc3339 {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }
        fn visit_str<E: Error>(self, s: &str) -> Result<Self::Value, E> {
            parse_utc(s).map_err(E::custom)
        }
    }
    d.deserialize_str(Utc3339)
}

pub(crate) fn parse_utc(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match debezium_utc(s.as_bytes()) {
        Some(t) => Ok(t),
        None => s.parse(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, or `None` for anything else (leap seconds included).
fn debezium_utc(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20 || b.last() != Some(&b'Z') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b.get(range)?.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            num(20..20 + digits.len())? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    // chrono checks the calendar and the clock (no 24:00, no leap second: those go to
    // its parser, which decides them).
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    Some(
        date.and_hms_nano_opt(hour, minute, second, nanos)?
            .and_utc(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn debezium_shapes_and_others() {
        // (text, read by the fast path); the others are Debezium's shape only almost, and
        // chrono decides them. Either way the answer is chrono's.
        for (s, fast) in [
            ("2026-11-24T10:59:21.123456Z", true),
            ("2026-11-24T10:59:21.1Z", true),
            ("2026-11-24T10:59:21Z", true),
            ("2024-02-29T23:59:59.999999999Z", true),
            ("1970-01-01T00:00:00Z", true),
            ("0001-01-01T00:00:00Z", true),
            ("0000-01-01T00:00:00Z", true),
            ("2026-11-24T10:59:21.1234567Z", true),
            ("2026-11-24T10:59:21.12345678Z", true),
            ("2026-11-24T10:59:21.123456+00:00", false),
            ("2026-11-24T10:59:60Z", false),
            ("2026-11-24 10:59:21Z", false),
            ("2026-11-24T10:59:21.Z", false),
            ("2026-11-24T10:59:21.1234567890Z", false),
            ("2026-11-24T10:59:21.123456z", false),
            ("2026-11-24t10:59:21Z", false),
        ] {
            assert_eq!(debezium_utc(s.as_bytes()).is_some(), fast, "{s}");
            assert_eq!(parse_utc(s).ok(), s.parse().ok(), "{s}");
        }
        for s in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "",
            "Z",
        ] {
            assert!(parse_utc(s).is_err(), "{s}");
        }
    }

    proptest! {
        // Cheap cases: enough of them that the fast path answers hundreds of times in the
        // near-the-shape test, not a dozen.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Every instant PostgreSQL can hold after year 1, as Debezium writes it.
        #[test]
        fn agrees_with_chrono_on_debezium_output(secs in -62_135_596_800i64..253_402_300_799, micros in 0u32..1_000_000) {
            let t = DateTime::from_timestamp(secs, micros * 1000).unwrap();
            let mut fraction = format!("{micros:06}");
            while fraction.ends_with('0') {
                fraction.pop();
            }
            let s = if fraction.is_empty() {
                t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            } else {
                format!("{}.{fraction}Z", t.format("%Y-%m-%dT%H:%M:%S"))
            };
            prop_assert_eq!(debezium_utc(s.as_bytes()), Some(t), "{}", s);
        }

        /// Near Debezium's shape, every field straddling its limits: where the fast path
        /// answers, it answers what chrono does; elsewhere chrono decides.
        #[test]
        fn agrees_with_chrono_near_the_shape(s in "[0-9]{4}-(0[0-9]|1[0-3])-([0-2][0-9]|3[0-2])[Tt ]([01][0-9]|2[0-4]):[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,10})?(Z|z|[+-]0[0-9]:00)") {
            prop_assert_eq!(parse_utc(&s).ok(), s.parse::<DateTime<Utc>>().ok());
        }

        /// A Debezium timestamp with one byte replaced or inserted, non-ASCII included.
        #[test]
        fn a_damaged_timestamp_never_panics(at in 0usize..28, c in any::<char>(), insert in any::<bool>()) {
            let mut s: Vec<char> = "2026-11-24T10:59:21.123456Z".chars().collect();
            if insert {
                s.insert(at, c);
            } else if at < s.len() {
                s[at] = c;
            }
            let s: String = s.into_iter().collect();
            prop_assert_eq!(parse_utc(&s).ok(), s.parse::<DateTime<Utc>>().ok());
        }
    }
}
