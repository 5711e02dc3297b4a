//! PaymentMethods made from Stripe's test tokens. Stripe turns `pm_card_visa` into a fresh
//! `pm_...` each time it is passed, and that id then behaves as its token's card; the sim
//! keeps which token each id came from.

use std::collections::HashMap;

use serde::Serialize;

use super::cards::Card;
use super::seeded::Seeded;
use crate::error::StripeError;

/// A payment method attached to an intent: its id and the test token it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub id: String,
    pub token: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
pub struct PaymentMethods(HashMap<String, String>);

impl PaymentMethods {
    /// Whether `pm` is a test token or an id made from one.
    pub fn knows(&self, pm: &str) -> bool {
        Card::of(pm).is_some() || self.0.contains_key(pm)
    }

    /// A token makes a new payment method; an id made earlier is used again.
    pub fn attach(&mut self, pm: &str, dice: &mut Seeded) -> Result<Attached, StripeError> {
        if Card::of(pm).is_some() {
            let id = dice.id("pm");
            self.0.insert(id.clone(), pm.to_owned());
            return Ok(Attached {
                id,
                token: pm.to_owned(),
            });
        }
        match self.0.get(pm) {
            Some(token) => Ok(Attached {
                id: pm.to_owned(),
                token: token.clone(),
            }),
            None => {
                Err(StripeError::no_such("PaymentMethod", pm, Some("payment_method")).in_param())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_make_fresh_ids_that_keep_their_card() {
        let mut pms = PaymentMethods::default();
        let mut dice = Seeded::new(1);
        let a = pms.attach("pm_card_visa", &mut dice).unwrap();
        let b = pms.attach("pm_card_visa", &mut dice).unwrap();
        assert!(a.id.starts_with("pm_") && a.id != "pm_card_visa");
        assert_ne!(a.id, b.id, "each use of a token is a new payment method");
        assert_eq!(pms.attach(&a.id, &mut dice).unwrap(), a);
        assert!(pms.knows(&a.id) && pms.knows("pm_card_amex") && !pms.knows("pm_nope"));
        let e = pms.attach("pm_nope", &mut dice).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, Some("resource_missing")));
    }
}
