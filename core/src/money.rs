//! Money is an integer number of a currency's minor units (cents, yen, ...), never a float.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The ISO 4217 currencies Paystream accepts, with their minor-unit exponent.
/// JPY and KRW have no minor unit: an amount of 500 is 500 yen.
const SUPPORTED: &[(&str, u8)] = &[
    ("aud", 2),
    ("cad", 2),
    ("chf", 2),
    ("dkk", 2),
    ("eur", 2),
    ("gbp", 2),
    ("jpy", 0),
    ("krw", 0),
    ("nok", 2),
    ("pln", 2),
    ("sek", 2),
    ("usd", 2),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be a lower-case ISO 4217 code such as \"usd\"")]
    MalformedCurrency,
    #[error("currency {0:?} is not supported")]
    UnsupportedCurrency(String),
    #[error("amount must be a positive integer number of minor units")]
    NonPositiveAmount,
    #[error("amount exceeds the maximum of {max} minor units")]
    AmountTooLarge { max: i64 },
}

/// A supported ISO 4217 currency, stored as its lower-case code (Stripe's convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Currency {
    /// Always one of the codes in SUPPORTED.
    code: &'static str,
    exponent: u8,
}

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(MoneyError::MalformedCurrency);
        }
        SUPPORTED
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, exponent)| Currency { code, exponent })
            .ok_or_else(|| MoneyError::UnsupportedCurrency(code.to_owned()))
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point in the currency's major unit.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    pub fn supported() -> impl Iterator<Item = Currency> {
        SUPPORTED
            .iter()
            .map(|&(code, exponent)| Currency { code, exponent })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

// By hand: a derive would make a `&'static str` field demand 'static input.
impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.code().to_owned()
    }
}

/// A positive amount of money in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    amount: i64,
    currency: Currency,
}

impl Money {
    /// `max` is the configured ceiling in minor units (Stripe's own is 99,999,999).
    pub fn new(amount: i64, currency: Currency, max: i64) -> Result<Self, MoneyError> {
        if amount <= 0 {
            return Err(MoneyError::NonPositiveAmount);
        }
        if amount > max {
            return Err(MoneyError::AmountTooLarge { max });
        }
        Ok(Money { amount, currency })
    }

    pub fn amount(&self) -> i64 {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

/// "12.34 USD", "500 JPY": integer arithmetic only.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.currency.code().to_ascii_uppercase();
        match self.currency.exponent {
            0 => write!(f, "{} {code}", self.amount),
            e => {
                let scale = 10_i64.pow(u32::from(e));
                let width = usize::from(e);
                write!(
                    f,
                    "{}.{:0width$} {code}",
                    self.amount / scale,
                    self.amount % scale
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: i64 = 99_999_999;

    #[test]
    fn parses_supported_currencies_only() {
        assert_eq!(Currency::parse("usd").map(|c| c.exponent()), Ok(2));
        assert_eq!(Currency::parse("jpy").map(|c| c.exponent()), Ok(0));
        assert_eq!(Currency::parse("USD"), Err(MoneyError::MalformedCurrency));
        assert_eq!(Currency::parse("us"), Err(MoneyError::MalformedCurrency));
        assert_eq!(Currency::parse("usdd"), Err(MoneyError::MalformedCurrency));
        assert_eq!(
            Currency::parse("xyz"),
            Err(MoneyError::UnsupportedCurrency("xyz".into()))
        );
        assert_eq!(Currency::supported().count(), SUPPORTED.len());
    }

    #[test]
    fn amounts_are_positive_and_bounded() {
        let usd = Currency::parse("usd").unwrap();
        assert_eq!(Money::new(0, usd, MAX), Err(MoneyError::NonPositiveAmount));
        assert_eq!(Money::new(-5, usd, MAX), Err(MoneyError::NonPositiveAmount));
        assert_eq!(
            Money::new(MAX + 1, usd, MAX),
            Err(MoneyError::AmountTooLarge { max: MAX })
        );
        assert_eq!(Money::new(MAX, usd, MAX).map(|m| m.amount()), Ok(MAX));
    }

    #[test]
    fn displays_in_major_units_without_floats() {
        let m = |a, c| {
            Money::new(a, Currency::parse(c).unwrap(), MAX)
                .unwrap()
                .to_string()
        };
        assert_eq!(m(1234, "usd"), "12.34 USD");
        assert_eq!(m(5, "eur"), "0.05 EUR");
        assert_eq!(m(500, "jpy"), "500 JPY");
    }

    #[test]
    fn currency_serialises_as_its_code() {
        let c: Currency = serde_json::from_str("\"gbp\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"gbp\"");
        assert!(serde_json::from_str::<Currency>("\"GBP\"").is_err());
    }

    proptest! {
        #[test]
        fn any_string_parses_or_errors_without_panic(s in "\\PC{0,8}") {
            if let Ok(c) = Currency::parse(&s) {
                prop_assert_eq!(c.code(), s.as_str());
            }
        }

        #[test]
        fn money_accepts_exactly_1_to_max(amount in any::<i64>(), max in 1_i64..i64::MAX) {
            let usd = Currency::parse("usd").unwrap();
            prop_assert_eq!(Money::new(amount, usd, max).is_ok(), amount >= 1 && amount <= max);
        }

        #[test]
        fn display_round_trips_to_the_same_minor_units(amount in 1_i64..=MAX) {
            for c in Currency::supported() {
                let shown = Money::new(amount, c, MAX).unwrap().to_string();
                let digits: String = shown.chars().filter(char::is_ascii_digit).collect();
                prop_assert_eq!(digits.parse::<i64>().unwrap(), amount);
            }
        }
    }
}
