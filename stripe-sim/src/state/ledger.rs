//! Balance transactions: how each captured charge, refund and refund failure moved the
//! balance, in creation order. Reports read them in bulk (a million rows is a normal
//! month for a busy account), so a row keeps its ids inline rather than on the heap, and
//! the rows of an interval are found by binary search on `created`.

use std::collections::HashMap;
use std::ops::Range;

use serde_json::{Value, json};

use super::list::paginate;
use crate::error::StripeError;
use crate::form::Params;

/// What moved the balance. For these kinds Stripe's `type` and `reporting_category` agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    Charge,
    Refund,
    RefundFailure,
}

impl TxnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnKind::Charge => "charge",
            TxnKind::Refund => "refund",
            TxnKind::RefundFailure => "refund_failure",
        }
    }
}

/// The random part of an id the sim drew (`pi_` + 24 characters): every id `Seeded::id`
/// makes has exactly this shape, so rows need no allocation per id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tail([u8; 24]);

impl Tail {
    pub fn of(id: &str, prefix: &str) -> Option<Tail> {
        let tail = id.strip_prefix(prefix)?.strip_prefix('_')?;
        let bytes: [u8; 24] = tail.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Tail(bytes))
    }

    /// An id tail made elsewhere than `Seeded::id`, of the same shape.
    pub fn from_bytes(bytes: [u8; 24]) -> Option<Tail> {
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Tail(bytes))
    }

    /// Stands in for an id of another shape, which the row's `SeededIds` names instead.
    pub const FOREIGN: Tail = Tail(*b"000000000000000000000000");

    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics get in (`of`), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A three-letter lowercase ISO code, inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn of(code: &str) -> Option<Currency> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_lowercase)
            .then_some(Currency(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// How long a card payment's funds stay `pending` before they are `available`: Stripe's
/// standard US payout schedule is two business days; the sim counts two calendar days.
pub const CARD_AVAILABILITY_S: i64 = 2 * 86_400;

#[derive(Debug, Clone)]
pub struct BalanceTxn {
    pub id: Tail,
    pub kind: TxnKind,
    pub created: i64,
    pub available_on: i64,
    /// Signed, minor units: a refund takes money out.
    pub amount: i64,
    pub fee: i64,
    pub currency: Currency,
    pub charge: Tail,
    pub payment_intent: Tail,
    /// The refund of a `refund` or `refund_failure` row: its source.
    pub refund: Option<Tail>,
    pub description: Option<Box<str>>,
    /// Rows seeded by `POST /_sim/ledger` have no PaymentIntent or Refund object to read
    /// metadata from, so they carry what the reports render of them.
    pub seeded: Option<SeededIds>,
}

/// What a seeded row's reports need. UUIDs as bytes, inline: a benchmark seeds a million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededIds {
    /// `payment_metadata[payment_id]`.
    pub payment_id: [u8; 16],
    /// `refund_metadata[refund_id]` of a refund row.
    pub refund_id: Option<[u8; 16]>,
    /// A `payment_intent` not of the sim's shape: its index in `Ledger::foreign_intents`
    /// (the row's `payment_intent` is then `Tail::FOREIGN`).
    pub foreign_intent: Option<u32>,
}

/// A UUID, either hyphenated (`8-4-4-4-12`) or as 32 hex digits, in any case.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = match s.len() {
        36 => {
            let b = s.as_bytes();
            if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                return None;
            }
            b.iter().copied().filter(|&c| c != b'-').collect()
        }
        32 => s.as_bytes().to_vec(),
        _ => return None,
    };
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// The canonical form, as Postgres and most UUID libraries print it: lowercase, hyphenated.
pub fn uuid_string(u: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

impl BalanceTxn {
    /// The index of its payment intent's id in the side table, if it is not inline.
    pub fn foreign_intent(&self) -> Option<u32> {
        self.seeded.and_then(|s| s.foreign_intent)
    }

    pub fn net(&self) -> i64 {
        self.amount - self.fee
    }

    pub fn id(&self) -> String {
        format!("txn_{}", self.id.as_str())
    }

    /// The charge or refund that made it.
    pub fn source(&self) -> String {
        match self.refund {
            Some(re) => format!("re_{}", re.as_str()),
            None => format!("ch_{}", self.charge.as_str()),
        }
    }

    pub fn status(&self, now: i64) -> &'static str {
        if self.available_on <= now {
            "available"
        } else {
            "pending"
        }
    }

    pub fn to_json(&self, now: i64) -> Value {
        let fee_details: Vec<Value> = if self.fee == 0 {
            Vec::new()
        } else {
            vec![json!({
                "amount": self.fee,
                "application": null,
                "currency": self.currency.as_str(),
                "description": "Stripe processing fees",
                "type": "stripe_fee",
            })]
        };
        json!({
            "id": self.id(),
            "object": "balance_transaction",
            "amount": self.amount,
            "available_on": self.available_on,
            "balance_type": "payments",
            "created": self.created,
            "currency": self.currency.as_str(),
            "description": self.description,
            "exchange_rate": null,
            "fee": self.fee,
            "fee_details": fee_details,
            "net": self.net(),
            "reporting_category": self.kind.as_str(),
            "source": self.source(),
            "status": self.status(now),
            "type": self.kind.as_str(),
        })
    }
}

/// Zero-decimal currencies (Stripe's list): amounts are whole units, and no fixed fee.
pub fn zero_decimal(currency: &str) -> bool {
    [
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ]
    .contains(&currency)
}

/// Stripe's standard card pricing: 2.9% + 30 minor units (US), 3.6% with no fixed part
/// for zero-decimal currencies (Japan's rate); rounded half up, as Stripe rounds fees.
pub fn card_fee(amount: i64, currency: &str) -> i64 {
    let amount = amount.max(0);
    if zero_decimal(currency) {
        (amount * 36 + 500) / 1000
    } else {
        (amount * 29 + 500) / 1000 + 30
    }
}

#[derive(Default)]
pub struct Ledger {
    /// `created` order: see `push` and `insert`.
    rows: Vec<BalanceTxn>,
    /// Seeded intent ids not of the sim's shape (a benchmark's own), each once.
    foreign_intents: Vec<Box<str>>,
    foreign_index: HashMap<Box<str>, u32>,
}

impl Ledger {
    /// Requests take their time before they take the state lock, so a row may come a
    /// moment "late": it is dated no earlier than the last, which keeps `rows` sorted for
    /// binary search and changes `created` by well under a second.
    pub fn push(&mut self, mut row: BalanceTxn) {
        if let Some(last) = self.rows.last()
            && row.created < last.created
        {
            row.available_on += last.created - row.created;
            row.created = last.created;
        }
        self.rows.push(row);
    }

    /// Seeded rows, dated as given (the past included): merged in `created` order, after
    /// the rows of the same second already there. Rows already there move only when a
    /// new one is older than the newest: appending, the usual case, is linear in `new`.
    pub fn insert(&mut self, mut new: Vec<BalanceTxn>) {
        // Stable: rows of one second keep the order they were given in.
        new.sort_by_key(|r| r.created);
        let Some(first) = new.first().map(|r| r.created) else {
            return;
        };
        let at = self.rows.partition_point(|r| r.created <= first);
        if at == self.rows.len() {
            self.rows.extend(new);
            return;
        }
        let later = self.rows.split_off(at);
        self.rows.reserve(later.len() + new.len());
        let mut later = later.into_iter().peekable();
        let mut new = new.into_iter().peekable();
        while let (Some(old), Some(fresh)) = (later.peek(), new.peek()) {
            let next = if old.created <= fresh.created {
                later.next()
            } else {
                new.next()
            };
            self.rows.extend(next);
        }
        self.rows.extend(later);
        self.rows.extend(new);
    }

    /// Whether rows dated `created` would go before rows already booked.
    pub fn would_move_rows(&self, created: i64) -> bool {
        self.rows.last().is_some_and(|r| created < r.created)
    }

    /// The index of a foreign intent id, added if new.
    pub fn foreign_intent_index(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.foreign_index.get(id) {
            return i;
        }
        let i = self.foreign_intents.len() as u32;
        self.foreign_intents.push(id.into());
        self.foreign_index.insert(id.into(), i);
        i
    }

    pub fn foreign_intent(&self, index: u32) -> Option<&str> {
        self.foreign_intents.get(index as usize).map(|s| &**s)
    }

    pub fn rows(&self) -> &[BalanceTxn] {
        &self.rows
    }

    pub fn first_created(&self) -> Option<i64> {
        self.rows.first().map(|r| r.created)
    }

    /// The rows created in `[start, end)`.
    pub fn between(&self, start: i64, end: i64) -> Range<usize> {
        let lo = self.rows.partition_point(|r| r.created < start);
        let hi = self.rows.partition_point(|r| r.created < end).max(lo);
        lo..hi
    }

    pub fn retrieve(&self, id: &str, now: i64) -> Result<Value, StripeError> {
        Tail::of(id, "txn")
            .and_then(|t| self.rows.iter().rev().find(|r| r.id == t))
            .map(|r| r.to_json(now))
            .ok_or_else(|| StripeError::no_such("balance transaction", id, Some("id")))
    }

    /// `GET /v1/balance_transactions`: newest first; `created[..]`, `type`, `source`.
    pub fn list(&self, p: &Params, now: i64) -> Result<Value, StripeError> {
        let created = p.range("created")?;
        let start = created
            .gte
            .or(created.gt.map(|t| t.saturating_add(1)))
            .unwrap_or(i64::MIN);
        let end = created
            .lt
            .or(created.lte.map(|t| t.saturating_add(1)))
            .unwrap_or(i64::MAX);
        let kind = p.get("type");
        let source = p.get("source");
        let listed: Vec<Listed<'_>> = self.rows[self.between(start, end)]
            .iter()
            .rev()
            .filter(|r| created.contains(r.created))
            .filter(|r| kind.is_none_or(|k| r.kind.as_str() == k))
            .filter(|r| source.is_none_or(|s| r.source() == s))
            .map(|r| (r.id(), r))
            .collect();
        let items: Vec<&Listed<'_>> = listed.iter().collect();
        paginate(
            p,
            &items,
            listed_id,
            |(_, r)| r.to_json(now),
            "/v1/balance_transactions",
        )
    }
}

/// A row with its rendered id, which pagination cursors name.
type Listed<'a> = (String, &'a BalanceTxn);

fn listed_id<'a>(l: &'a Listed<'_>) -> &'a str {
    l.0.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(created: i64) -> BalanceTxn {
        BalanceTxn {
            id: Tail(*b"AAAAAAAAAAAAAAAAAAAAAAAA"),
            kind: TxnKind::Charge,
            created,
            available_on: created + CARD_AVAILABILITY_S,
            amount: 1000,
            fee: card_fee(1000, "usd"),
            currency: Currency(*b"usd"),
            charge: Tail(*b"BBBBBBBBBBBBBBBBBBBBBBBB"),
            payment_intent: Tail(*b"CCCCCCCCCCCCCCCCCCCCCCCC"),
            refund: None,
            description: None,
            seeded: None,
        }
    }

    #[test]
    fn fees_are_stripes_standard_card_pricing() {
        assert_eq!(card_fee(1000, "usd"), 59);
        assert_eq!(card_fee(1250, "usd"), 66); // 36.25 + 30
        assert_eq!(card_fee(5000, "jpy"), 180);
        assert_eq!(card_fee(2050, "eur"), 89); // 59.45 rounds down
        assert_eq!(card_fee(2052, "eur"), 90); // 59.508 rounds up
    }

    #[test]
    fn intervals_are_found_by_binary_search_and_late_rows_keep_the_order() {
        let mut l = Ledger::default();
        for t in [10, 10, 11, 15, 20] {
            l.push(row(t));
        }
        l.push(row(19));
        assert_eq!(l.rows().last().map(|r| r.created), Some(20));
        assert_eq!(l.between(10, 11), 0..2);
        assert_eq!(l.between(11, 20), 2..4);
        assert_eq!(l.between(0, 10), 0..0);
        assert_eq!(l.between(21, 30), 6..6);
        assert_eq!(l.between(15, 12), 3..3);
    }

    #[test]
    fn a_row_stays_compact() {
        // Seeded ids inline cost ~40 bytes: a million seeded rows stay under 200 MB.
        assert!(std::mem::size_of::<BalanceTxn>() <= 200);
    }

    #[test]
    fn older_rows_are_merged_in_order_after_rows_of_their_second() {
        let mut l = Ledger::default();
        for t in [10, 20, 30] {
            l.push(row(t));
        }
        let mut late = row(20);
        late.amount = 7;
        l.insert(vec![row(35), late, row(5), row(25)]);
        let created: Vec<i64> = l.rows().iter().map(|r| r.created).collect();
        assert_eq!(created, [5, 10, 20, 20, 25, 30, 35]);
        assert_eq!(
            l.rows()[3].amount,
            7,
            "after the row of its second already there"
        );
        l.insert(vec![row(40), row(36)]);
        assert_eq!(l.rows().last().map(|r| r.created), Some(40));
        assert_eq!(l.between(20, 26), 2..5);
        assert!(l.would_move_rows(39) && !l.would_move_rows(40));
    }

    #[test]
    fn uuids_parse_in_either_form_and_print_canonically() {
        let u = parse_uuid("0F8FAD5B-D9CB-469F-A165-70867728950E").unwrap();
        assert_eq!(uuid_string(&u), "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(parse_uuid("0f8fad5bd9cb469fa16570867728950e"), Some(u));
        assert_eq!(parse_uuid("0f8fad5b-d9cb-469f-a165-70867728950"), None);
        assert_eq!(parse_uuid("0f8fad5b-d9cb-469f-a165+70867728950e"), None);
        assert_eq!(parse_uuid("0f8fad5b-d9cb-469f-a165-70867728950g"), None);
        assert_eq!(parse_uuid("pay_a"), None);
    }

    #[test]
    fn ids_must_have_the_sims_shape() {
        assert!(Tail::of("txn_0123456789abcdefghijABCD", "txn").is_some());
        assert!(Tail::of("txn_short", "txn").is_none());
        assert!(Tail::of("ch_0123456789abcdefghijABCD", "txn").is_none());
        assert!(Tail::of("txn_0123456789abcdefghij-BCD", "txn").is_none());
        assert!(Currency::of("usd").is_some() && Currency::of("USD").is_none());
    }
}
