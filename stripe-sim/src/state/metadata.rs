//! Stripe's `metadata[...]` rules, shared by every object that carries metadata.

use std::collections::BTreeMap;

use crate::error::StripeError;

pub fn validate(m: &BTreeMap<String, String>) -> Result<(), StripeError> {
    // Stripe's limits: 50 keys, keys up to 40 characters, values up to 500.
    if m.len() > 50 {
        return Err(StripeError::invalid(
            "Metadata can have up to 50 keys",
            Some("metadata"),
        ));
    }
    for (k, v) in m {
        if k.chars().count() > 40 {
            return Err(StripeError::invalid(
                format!("Metadata key {k} exceeds 40 characters"),
                Some("metadata"),
            ));
        }
        if v.chars().count() > 500 {
            return Err(StripeError::invalid(
                format!("Metadata value for {k} exceeds 500 characters"),
                Some("metadata"),
            ));
        }
    }
    Ok(())
}

/// An update: `""` removes a key, as at Stripe.
pub fn apply(target: &mut BTreeMap<String, String>, changes: BTreeMap<String, String>) {
    for (k, v) in changes {
        if v.is_empty() {
            target.remove(&k);
        } else {
            target.insert(k, v);
        }
    }
}
