//! Stripe's form encoding: `metadata[order]=7`, `types[]=a&types[]=b`,
//! `created[gte]=1700000000`. Parameters are kept flat, in order, and read by name.

use std::collections::BTreeMap;

use crate::error::StripeError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: &str) -> Params {
        Params(
            url::form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// A canonical form (sorted) for idempotency fingerprints.
    pub fn fingerprint(&self) -> String {
        let mut v = self.0.clone();
        v.sort();
        v.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter name, in order (`metadata[k]` as is).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// `name[]=a&name[]=b` (or `name[0]=a`).
    pub fn list(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}[");
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.ends_with(']'))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `name[key]=value` pairs.
    pub fn map(&self, name: &str) -> BTreeMap<String, String> {
        let prefix = format!("{name}[");
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let inner = k.strip_prefix(&prefix)?.strip_suffix(']')?;
                (!inner.is_empty() && !inner.contains('[')).then(|| (inner.to_owned(), v.clone()))
            })
            .collect()
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key).map(str::to_owned)
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, StripeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| StripeError::invalid(format!("Invalid integer: {v}"), Some(key))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, StripeError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(StripeError::invalid(
                format!("Invalid boolean: {v}"),
                Some(key),
            )),
        }
    }

    /// Stripe's `created[gte]=..&created[lt]=..` or `created=..`.
    pub fn range(&self, name: &str) -> Result<Range, StripeError> {
        let mut r = Range::default();
        if let Some(exact) = self.int(name)? {
            r.gte = Some(exact);
            r.lte = Some(exact);
        }
        for (op, v) in self.map(name) {
            let n: i64 = v
                .parse()
                .map_err(|_| StripeError::invalid(format!("Invalid integer: {v}"), Some(name)))?;
            match op.as_str() {
                "gt" => r.gt = Some(n),
                "gte" => r.gte = Some(n),
                "lt" => r.lt = Some(n),
                "lte" => r.lte = Some(n),
                _ => {
                    return Err(StripeError::invalid(
                        format!("Received unknown parameter: {name}[{op}]"),
                        Some(name),
                    ));
                }
            }
        }
        Ok(r)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
}

impl Range {
    pub fn contains(&self, t: i64) -> bool {
        self.gt.is_none_or(|b| t > b)
            && self.gte.is_none_or(|b| t >= b)
            && self.lt.is_none_or(|b| t < b)
            && self.lte.is_none_or(|b| t <= b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_stripe_parameters() {
        let p = Params::parse(
            "amount=100&metadata%5Bpayment_id%5D=p1&metadata[x]=y&types[]=a&types[]=b&created[gte]=5&created[lt]=9",
        );
        assert_eq!(p.int("amount").unwrap(), Some(100));
        assert_eq!(
            p.map("metadata").get("payment_id").map(String::as_str),
            Some("p1")
        );
        assert_eq!(p.map("metadata").len(), 2);
        assert_eq!(p.list("types"), ["a", "b"]);
        let r = p.range("created").unwrap();
        assert!(r.contains(5) && r.contains(8) && !r.contains(9) && !r.contains(4));
        assert!(Params::parse("amount=1x").int("amount").is_err());
        assert!(Params::parse("created[foo]=1").range("created").is_err());
    }

    #[test]
    fn fingerprint_ignores_order() {
        assert_eq!(
            Params::parse("a=1&b=2").fingerprint(),
            Params::parse("b=2&a=1").fingerprint()
        );
        assert_ne!(
            Params::parse("a=1").fingerprint(),
            Params::parse("a=2").fingerprint()
        );
    }
}
