//! `POST /_sim/ledger`: balance transactions booked in bulk without the PaymentIntents
//! behind them, so a benchmark can give the sim a million balance changes matching the
//! payments in its database in seconds. Each row is booked as a captured charge or a new
//! refund would be (fee, net, `available_on`, fresh ids), dated when the caller says.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::State;
use super::ledger::{
    BalanceTxn, CARD_AVAILABILITY_S, Currency, SeededIds, Tail, TxnKind, card_fee, parse_uuid,
};

/// Per request: a request of this size books in milliseconds (release), so the lock
/// is never held long, and its body stays a few MB.
pub const MAX_ENTRIES: usize = 20_000;

/// Stripe's largest charge (eight digits of minor units).
const MAX_AMOUNT: i64 = 99_999_999;

/// A checked request: nothing is booked until every entry has passed.
pub struct LedgerSeed {
    charges: Vec<Entry>,
    refunds: Vec<Entry>,
}

struct Entry {
    payment_id: [u8; 16],
    refund_id: Option<[u8; 16]>,
    payment_intent: String,
    amount: i64,
    currency: Currency,
    created: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    charges: Vec<Map<String, Value>>,
    #[serde(default)]
    refunds: Vec<Map<String, Value>>,
}

const CHARGE_FIELDS: &[&str] = &[
    "payment_id",
    "payment_intent",
    "amount",
    "currency",
    "created",
];
const REFUND_FIELDS: &[&str] = &[
    "refund_id",
    "payment_intent",
    "payment_id",
    "amount",
    "currency",
    "created",
];

impl LedgerSeed {
    /// Entries are read field by field, not by serde, so a refusal names the entry's
    /// index and field. `now` bounds `created`: a row dated in the future would make
    /// later real rows, which are never dated before the last one, future too.
    pub fn parse(body: &[u8], now: i64) -> Result<LedgerSeed, String> {
        // The fast path: typed, borrowed entries. Anything it refuses (a wrong type, an
        // escaped string) is read again field by field, to be booked or named.
        if let Ok(typed) = serde_json::from_slice::<TypedBody<'_>>(body) {
            let n = typed.charges.len() + typed.refunds.len();
            if n <= MAX_ENTRIES {
                let charges = typed
                    .charges
                    .iter()
                    .enumerate()
                    .map(|(i, e)| e.check("charges", i, now))
                    .collect::<Result<_, _>>()?;
                let refunds = typed
                    .refunds
                    .iter()
                    .enumerate()
                    .map(|(i, e)| e.check("refunds", i, now))
                    .collect::<Result<_, _>>()?;
                return Ok(LedgerSeed { charges, refunds });
            }
        }
        let body: Body =
            serde_json::from_slice(body).map_err(|e| format!("Invalid request body: {e}"))?;
        let n = body.charges.len() + body.refunds.len();
        if n > MAX_ENTRIES {
            return Err(format!(
                "Too many entries: {n} (charges and refunds together); at most {MAX_ENTRIES} per request, send the rest in further requests."
            ));
        }
        let charges = body
            .charges
            .iter()
            .enumerate()
            .map(|(i, m)| entry(m, "charges", i, now))
            .collect::<Result<_, _>>()?;
        let refunds = body
            .refunds
            .iter()
            .enumerate()
            .map(|(i, m)| entry(m, "refunds", i, now))
            .collect::<Result<_, _>>()?;
        Ok(LedgerSeed { charges, refunds })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedBody<'a> {
    #[serde(default, borrow)]
    charges: Vec<TypedEntry<'a>>,
    #[serde(default, borrow)]
    refunds: Vec<TypedEntry<'a>>,
}

/// Charges and refunds alike: a refund's `refund_id` is required, a charge's refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedEntry<'a> {
    refund_id: Option<&'a str>,
    payment_id: &'a str,
    payment_intent: &'a str,
    amount: i64,
    currency: &'a str,
    created: i64,
}

impl TypedEntry<'_> {
    fn check(&self, list: &str, i: usize, now: i64) -> Result<Entry, String> {
        let refund = list == "refunds";
        if refund != self.refund_id.is_some() {
            let why = if refund { "missing" } else { "unknown field" };
            return Err(format!("{list}[{i}].refund_id: {why}"));
        }
        let at = |field: &str, why: &str| format!("{list}[{i}].{field}: {why}");
        let uuid = |f: &str, s: &str| {
            parse_uuid(s).ok_or_else(|| at(f, &format!("must be a UUID, not {s:?}")))
        };
        Ok(Entry {
            payment_id: uuid("payment_id", self.payment_id)?,
            refund_id: self.refund_id.map(|r| uuid("refund_id", r)).transpose()?,
            payment_intent: checked_intent(self.payment_intent, &at)?.to_owned(),
            amount: checked_amount(self.amount, &at)?,
            currency: checked_currency(self.currency, &at)?,
            created: checked_created(self.created, now, &at)?,
        })
    }
}

fn checked_intent<'s>(id: &'s str, at: &dyn Fn(&str, &str) -> String) -> Result<&'s str, String> {
    if id.len() <= 3 || id.len() > 255 || !id.starts_with("pi_") || id.chars().any(char::is_control)
    {
        return Err(at(
            "payment_intent",
            &format!("must be a PaymentIntent id (pi_...), not {id:?}"),
        ));
    }
    Ok(id)
}

fn checked_amount(amount: i64, at: &dyn Fn(&str, &str) -> String) -> Result<i64, String> {
    if !(1..=MAX_AMOUNT).contains(&amount) {
        return Err(at(
            "amount",
            &format!("must be positive minor units up to {MAX_AMOUNT}, not {amount}"),
        ));
    }
    Ok(amount)
}

fn checked_currency(code: &str, at: &dyn Fn(&str, &str) -> String) -> Result<Currency, String> {
    Currency::of(&code.to_ascii_lowercase()).ok_or_else(|| {
        at(
            "currency",
            &format!("must be an ISO currency code, not {code:?}"),
        )
    })
}

fn checked_created(
    created: i64,
    now: i64,
    at: &dyn Fn(&str, &str) -> String,
) -> Result<i64, String> {
    if !(0..=now).contains(&created) {
        return Err(at(
            "created",
            &format!("must be unix seconds no later than the simulated now ({now}), not {created}"),
        ));
    }
    Ok(created)
}

fn entry(m: &Map<String, Value>, list: &str, i: usize, now: i64) -> Result<Entry, String> {
    let at = |field: &str, why: &str| format!("{list}[{i}].{field}: {why}");
    let refund = list == "refunds";
    let known = if refund { REFUND_FIELDS } else { CHARGE_FIELDS };
    if let Some(k) = m.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(at(k, "unknown field"));
    }
    let get = |f: &str| m.get(f).ok_or_else(|| at(f, "missing"));
    let string = |f: &str| -> Result<&str, String> {
        get(f)?.as_str().ok_or_else(|| at(f, "must be a string"))
    };
    let int = |f: &str| -> Result<i64, String> {
        get(f)?.as_i64().ok_or_else(|| at(f, "must be an integer"))
    };
    let uuid = |f: &str| -> Result<[u8; 16], String> {
        let s = string(f)?;
        parse_uuid(s).ok_or_else(|| at(f, &format!("must be a UUID, not {s:?}")))
    };
    let payment_id = uuid("payment_id")?;
    let refund_id = if refund {
        Some(uuid("refund_id")?)
    } else {
        None
    };
    let payment_intent = checked_intent(string("payment_intent")?, &at)?;
    let amount = checked_amount(int("amount")?, &at)?;
    let currency = checked_currency(string("currency")?, &at)?;
    let created = checked_created(int("created")?, now, &at)?;
    Ok(Entry {
        payment_id,
        refund_id,
        payment_intent: payment_intent.to_owned(),
        amount,
        currency,
        created,
    })
}

/// An intent as rows name it: inline, or by its id when that is of another shape.
#[derive(PartialEq, Eq, Hash)]
enum Intent<'a> {
    Inline(Tail),
    Foreign(&'a str),
}

fn intent_of(id: &str) -> Intent<'_> {
    Tail::of(id, "pi").map_or(Intent::Foreign(id), Intent::Inline)
}

/// The ids of seeded rows: `Seeded::id` draws each character from the seeded
/// generator, which is tens of microseconds per id in a debug build; a million rows need
/// three million ids. Splitmix64 from one seeded draw per request is as reproducible, and
/// distinct within a request (a bijection of the counter).
struct IdStream(u64);

impl IdStream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn tail(&mut self) -> Tail {
        const ALPHABET: &[u8; 62] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut bytes = [0u8; 24];
        // 8 characters of each draw: 62^8 < 2^48, so each is near uniform.
        for part in bytes.chunks_mut(8) {
            let mut v = self.next();
            for b in part {
                *b = ALPHABET[(v % 62) as usize];
                v /= 62;
            }
        }
        // Alphanumeric by construction: never the fallback.
        Tail::from_bytes(bytes).unwrap_or(Tail::FOREIGN)
    }
}

/// The charge a seeded refund refunds.
#[derive(Clone, Copy)]
enum Refunded {
    Booked(Tail),
    /// The charge of the same request at this index.
    New(usize),
}

impl State {
    /// Books a checked request. Refused (nothing booked): a refund whose intent has no
    /// charge in the ledger or the request, or of another currency (400); rows older
    /// than the newest row while a report run is pending (409), since a run's rows are
    /// fixed by their positions and these would move them.
    pub fn seed_ledger(&mut self, seed: LedgerSeed) -> Result<Value, (StatusCode, String)> {
        let bad = |m: String| (StatusCode::BAD_REQUEST, m);
        let earliest = seed
            .charges
            .iter()
            .chain(&seed.refunds)
            .map(|e| e.created)
            .min();
        if let Some(t) = earliest
            && self.ledger.would_move_rows(t)
            && self.reporting.any_pending()
        {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "A report run is pending and these rows (from {t}) are older than booked ones, which would move the rows it reports: wait for it to finish."
                ),
            ));
        }
        let refunded = self.refunded_charges(&seed).map_err(bad)?;
        let mut ids = IdStream(self.books.up_to(u64::MAX));
        let mut rows = Vec::with_capacity(seed.charges.len() + seed.refunds.len());
        let mut new_charges = Vec::with_capacity(seed.charges.len());
        for e in &seed.charges {
            let charge = ids.tail();
            new_charges.push(charge);
            let id = ids.tail();
            rows.push(self.seeded_row(e, id, charge, None));
        }
        for (e, of) in seed.refunds.iter().zip(refunded) {
            let charge = match of {
                Refunded::Booked(t) => t,
                Refunded::New(i) => new_charges[i],
            };
            let re = ids.tail();
            let id = ids.tail();
            rows.push(self.seeded_row(e, id, charge, Some(re)));
        }
        let booked = rows.len();
        self.ledger.insert(rows);
        Ok(json!({
            "booked": booked,
            "balance_transactions": self.ledger.rows().len(),
        }))
    }

    /// Each refund's charge: the latest booked for its intent, in the request or the
    /// ledger (a request's own charges first). The ledger is scanned newest first and
    /// only until every intent is found: refunds mostly follow their charges closely.
    fn refunded_charges(&self, seed: &LedgerSeed) -> Result<Vec<Refunded>, String> {
        if seed.refunds.is_empty() {
            return Ok(Vec::new());
        }
        let mut charges: HashMap<Intent<'_>, Option<(Refunded, Currency)>> = seed
            .refunds
            .iter()
            .map(|e| (intent_of(&e.payment_intent), None))
            .collect();
        for (i, e) in seed.charges.iter().enumerate() {
            if let Some(found) = charges.get_mut(&intent_of(&e.payment_intent)) {
                *found = Some((Refunded::New(i), e.currency));
            }
        }
        let mut missing = charges.values().filter(|c| c.is_none()).count();
        for r in self.ledger.rows().iter().rev() {
            if missing == 0 {
                break;
            }
            if r.kind != TxnKind::Charge {
                continue;
            }
            let intent = match r.foreign_intent() {
                Some(i) => Intent::Foreign(self.ledger.foreign_intent(i).unwrap_or_default()),
                None => Intent::Inline(r.payment_intent),
            };
            if let Some(found @ None) = charges.get_mut(&intent) {
                *found = Some((Refunded::Booked(r.charge), r.currency));
                missing -= 1;
            }
        }
        seed.refunds
            .iter()
            .enumerate()
            .map(|(i, e)| match charges.get(&intent_of(&e.payment_intent)).copied().flatten() {
                None => Err(format!(
                    "refunds[{i}].payment_intent: no charge booked for {}: seed its charge first (or in the same request)",
                    e.payment_intent
                )),
                Some((_, c)) if c != e.currency => Err(format!(
                    "refunds[{i}].currency: {} is not the currency of {}'s charge ({})",
                    e.currency.as_str(),
                    e.payment_intent,
                    c.as_str()
                )),
                Some((of, _)) => Ok(of),
            })
            .collect()
    }

    fn seeded_row(
        &mut self,
        e: &Entry,
        id: Tail,
        charge: Tail,
        refund: Option<Tail>,
    ) -> BalanceTxn {
        let (payment_intent, foreign_intent) = match Tail::of(&e.payment_intent, "pi") {
            Some(t) => (t, None),
            None => (
                Tail::FOREIGN,
                Some(self.ledger.foreign_intent_index(&e.payment_intent)),
            ),
        };
        let seeded = Some(SeededIds {
            payment_id: e.payment_id,
            refund_id: e.refund_id,
            foreign_intent,
        });
        if refund.is_some() {
            BalanceTxn {
                id,
                kind: TxnKind::Refund,
                created: e.created,
                // As `book_refund`: a refund takes from the balance at once.
                available_on: e.created,
                amount: -e.amount,
                fee: 0,
                currency: e.currency,
                charge,
                payment_intent,
                refund,
                description: Some("REFUND FOR CHARGE".into()),
                seeded,
            }
        } else {
            BalanceTxn {
                id,
                kind: TxnKind::Charge,
                created: e.created,
                available_on: e.created + CARD_AVAILABILITY_S,
                amount: e.amount,
                fee: card_fee(e.amount, e.currency.as_str()),
                currency: e.currency,
                charge,
                payment_intent,
                refund: None,
                description: None,
                seeded,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::form::Params;
    use crate::state::Ctx;
    use crate::{Sim, SimConfig};

    const T0: i64 = 1_796_196_600;

    /// `n` charges from `from`, one a second from `T0 + from`, as a benchmark sends them.
    fn chunk(from: usize, n: usize) -> Vec<u8> {
        let charges: Vec<String> = (from..from + n)
            .map(|i| {
                format!(
                    r#"{{"payment_id":"00000000-0000-4000-8000-{i:012}","payment_intent":"pi_{i:024}","amount":{},"currency":"usd","created":{}}}"#,
                    500 + i % 10_000,
                    T0 + i as i64
                )
            })
            .collect();
        format!(r#"{{"charges":[{}]}}"#, charges.join(",")).into_bytes()
    }

    #[test]
    fn two_hundred_thousand_seeded_rows_book_and_report_quickly() {
        const N: usize = 200_000;
        let now = T0 + N as i64 + 10;
        let sim = Sim::new(SimConfig::default());
        let began = Instant::now();
        // The last chunk first: the rest must then be merged in before it.
        let mut starts: Vec<usize> = (0..N).step_by(MAX_ENTRIES).collect();
        starts.rotate_right(1);
        for from in starts {
            let seed = LedgerSeed::parse(&chunk(from, MAX_ENTRIES), now).unwrap();
            sim.state().seed_ledger(seed).unwrap();
        }
        let booked = began.elapsed();
        let st = sim.state();
        assert_eq!(st.ledger.rows().len(), N);
        assert!(
            st.ledger
                .rows()
                .windows(2)
                .all(|w| w[0].created < w[1].created)
        );
        drop(st);

        let ctx = Ctx {
            now_ms: now * 1000,
            ..Ctx::default()
        };
        let form = format!(
            "report_type=balance_change_from_activity.itemized.2&parameters[interval_start]={T0}&parameters[interval_end]={now}&parameters[columns][]=balance_transaction_id&parameters[columns][]=gross&parameters[columns][]=payment_intent_id&parameters[columns][]=payment_metadata[payment_id]"
        );
        let run = sim
            .state()
            .create_report_run(&Params::parse(&form), &ctx)
            .unwrap();
        let job = sim.state().report_job(run["id"].as_str().unwrap()).unwrap();
        let began = Instant::now();
        let csv = crate::reports::write(&sim, &job).unwrap();
        let reported = began.elapsed();
        assert_eq!(csv.lines().count(), N + 1);
        let last = csv.lines().last().unwrap();
        assert!(
            last.ends_with(&format!(
                ",104.99,pi_{:024},00000000-0000-4000-8000-{:012}",
                N - 1,
                N - 1
            )),
            "{last}"
        );
        eprintln!("{N} rows: booked in {booked:?}, reported in {reported:?}");
    }

    #[test]
    fn refused_requests_change_nothing() {
        let sim = Sim::new(SimConfig::default());
        let mut body: Value = serde_json::from_slice(&chunk(0, 3)).unwrap();
        body["charges"][2]["currency"] = json!("us dollars");
        let err = LedgerSeed::parse(&serde_json::to_vec(&body).unwrap(), T0 + 10)
            .err()
            .unwrap();
        assert!(err.starts_with("charges[2].currency: "), "{err}");
        body["charges"][2]["currency"] = json!("usd");
        body["refunds"] = json!([{
            "refund_id": "00000000-0000-4000-8000-000000000009",
            "payment_intent": "pi_nobody",
            "payment_id": "00000000-0000-4000-8000-000000000009",
            "amount": 1,
            "currency": "usd",
            "created": T0,
        }]);
        let seed = LedgerSeed::parse(&serde_json::to_vec(&body).unwrap(), T0 + 10).unwrap();
        let (status, err) = sim.state().seed_ledger(seed).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(err.starts_with("refunds[0].payment_intent: "), "{err}");
        let st = sim.state();
        assert!(st.ledger.rows().is_empty());
        assert!(st.ledger.foreign_intent(0).is_none());
    }

    fn seed(sim: &Sim, body: Value, now: i64) -> Result<Value, (StatusCode, String)> {
        let seed = LedgerSeed::parse(&serde_json::to_vec(&body).unwrap(), now).unwrap();
        sim.state().seed_ledger(seed)
    }

    #[test]
    fn a_refund_refunds_the_charge_of_its_intent_seeded_with_it() {
        let sim = Sim::new(SimConfig::default());
        let body = json!({
            "charges": [
                {"payment_id": "00000000-0000-4000-8000-000000000001", "payment_intent": "pi_bench_1", "amount": 1000, "currency": "usd", "created": T0},
                {"payment_id": "00000000-0000-4000-8000-000000000002", "payment_intent": "pi_bench_2", "amount": 1000, "currency": "usd", "created": T0},
            ],
            "refunds": [
                {"refund_id": "00000000-0000-4000-9000-000000000001", "payment_id": "00000000-0000-4000-8000-000000000002", "payment_intent": "pi_bench_2", "amount": 400, "currency": "usd", "created": T0 + 1},
            ],
        });
        assert_eq!(
            seed(&sim, body, T0 + 10).unwrap(),
            json!({"booked": 3, "balance_transactions": 3})
        );
        let st = sim.state();
        let rows = st.ledger.rows();
        assert_eq!(rows[2].kind, TxnKind::Refund);
        assert_eq!((rows[2].amount, rows[2].net()), (-400, -400));
        assert_eq!(rows[2].charge, rows[1].charge);
        assert_ne!(rows[1].charge, rows[0].charge);
        assert_eq!(
            rows[2].foreign_intent(),
            rows[1].foreign_intent(),
            "one side entry"
        );
    }

    #[test]
    fn older_rows_wait_for_pending_runs_newer_ones_do_not() {
        let sim = Sim::new(SimConfig::default());
        let now = T0 + 100;
        let one = |created: i64| json!({"charges": [{"payment_id": "00000000-0000-4000-8000-000000000001", "payment_intent": "pi_bench_1", "amount": 1000, "currency": "usd", "created": created}]});
        seed(&sim, one(T0 + 50), now).unwrap();
        let ctx = Ctx {
            now_ms: now * 1000,
            ..Ctx::default()
        };
        let form = format!(
            "report_type=balance_change_from_activity.itemized.1&parameters[interval_start]={T0}&parameters[interval_end]={now}"
        );
        sim.state()
            .create_report_run(&Params::parse(&form), &ctx)
            .unwrap();
        let (status, _) = seed(&sim, one(T0 + 10), now).unwrap_err();
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(sim.state().ledger.rows().len(), 1);
        seed(&sim, one(T0 + 60), now).unwrap();
        assert_eq!(sim.state().ledger.rows().len(), 2);
    }
}
