//! Stripe's list conventions: `limit` and cursor pagination over newest-first lists.

use serde_json::{Value, json};

use crate::error::StripeError;
use crate::form::Params;

pub fn limit(p: &Params) -> Result<usize, StripeError> {
    match p.int("limit")? {
        None => Ok(10),
        Some(n) if (1..=100).contains(&n) => Ok(n as usize),
        Some(_) => Err(StripeError::invalid(
            "limit must be between 1 and 100",
            Some("limit"),
        )),
    }
}

/// `starting_after` / `ending_before` name an object of the list, as at Stripe.
pub fn paginate<T>(
    p: &Params,
    items: &[&T],
    id: impl Fn(&T) -> &str,
    render: impl Fn(&T) -> Value,
    url: &str,
) -> Result<Value, StripeError> {
    let limit = limit(p)?;
    let position = |cursor: &str, param: &str| {
        items
            .iter()
            .position(|i| id(i) == cursor)
            .ok_or_else(|| StripeError::no_such("object", cursor, Some(param)))
    };
    let (page, has_more): (&[&T], bool) = if let Some(after) = p.get("starting_after") {
        let rest = &items[position(after, "starting_after")? + 1..];
        (&rest[..rest.len().min(limit)], rest.len() > limit)
    } else if let Some(before) = p.get("ending_before") {
        let head = &items[..position(before, "ending_before")?];
        let from = head.len().saturating_sub(limit);
        (&head[from..], from > 0)
    } else {
        (&items[..items.len().min(limit)], items.len() > limit)
    };
    Ok(json!({
        "object": "list",
        "data": page.iter().map(|i| render(i)).collect::<Vec<_>>(),
        "has_more": has_more,
        "url": url,
    }))
}
