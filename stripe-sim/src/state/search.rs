//! `GET /v1/payment_intents/search`: the subset of Stripe's search language the sim
//! understands, `metadata['k']:'v'`, `status:'succeeded'`, `currency:'usd'`, joined by
//! ` AND `.

use serde_json::{Value, json};

use super::intents::{Intent, Intents};
use super::list::limit;
use crate::error::StripeError;
use crate::form::Params;

#[derive(Debug, PartialEq, Eq)]
enum Field {
    Metadata(String),
    Status,
    Currency,
}

fn clause_matches((field, value): &(Field, String), i: &Intent) -> bool {
    match field {
        Field::Metadata(k) => i.metadata().get(k) == Some(value),
        Field::Status => i.status().as_str() == value,
        Field::Currency => i.currency() == value,
    }
}

fn parse_query(q: &str) -> Result<Vec<(Field, String)>, StripeError> {
    let bad = || StripeError::invalid(format!("Invalid search query: {q}"), Some("query"));
    q.split(" AND ")
        .map(|clause| {
            let (field, value) = clause.trim().split_once(':').ok_or_else(bad)?;
            let value = value
                .trim()
                .strip_prefix(['\'', '"'])
                .and_then(|v| v.strip_suffix(['\'', '"']))
                .ok_or_else(bad)?;
            let field = match field.trim() {
                "status" => Field::Status,
                "currency" => Field::Currency,
                f => {
                    let key = f
                        .strip_prefix("metadata[")
                        .and_then(|k| k.strip_suffix(']'))
                        .and_then(|k| k.strip_prefix(['\'', '"']))
                        .and_then(|k| k.strip_suffix(['\'', '"']))
                        .ok_or_else(bad)?;
                    Field::Metadata(key.to_owned())
                }
            };
            Ok((field, value.to_owned()))
        })
        .collect()
}

pub fn search(intents: &Intents, p: &Params) -> Result<Value, StripeError> {
    let query = p
        .get("query")
        .ok_or_else(|| StripeError::missing("query"))?;
    let clauses = parse_query(query)?;
    let limit = limit(p)?;
    let matches: Vec<&Intent> = intents
        .newest_first()
        .filter(|i| clauses.iter().all(|c| clause_matches(c, i)))
        .collect();
    // Pages are offsets, opaque to clients as in Stripe.
    let start: usize = match p.get("page") {
        None => 0,
        Some(page) => page
            .parse()
            .map_err(|_| StripeError::invalid("Invalid page", Some("page")))?,
    };
    let page: Vec<Value> = matches
        .iter()
        .skip(start)
        .take(limit)
        .map(|i| i.to_json())
        .collect();
    let has_more = start + page.len() < matches.len();
    Ok(json!({
        "object": "search_result",
        "data": page,
        "has_more": has_more,
        "next_page": if has_more { json!((start + limit).to_string()) } else { Value::Null },
        "url": "/v1/payment_intents/search",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_queries_parse() {
        let q = parse_query("metadata['payment_id']:'p1' AND status:'succeeded'").unwrap();
        assert!(matches!(&q[0], (Field::Metadata(k), v) if k == "payment_id" && v == "p1"));
        assert!(matches!(&q[1], (Field::Status, v) if v == "succeeded"));
        assert!(parse_query("amount>5").is_err());
        assert!(parse_query("metadata[x]:'1'").is_err());
    }
}
