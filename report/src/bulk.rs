//! Large windows from Stripe's Reporting API. Walking Stripe's PaymentIntent list costs a
//! call per 100 intents at the account's rate (20 calls/s: a million intents take over
//! eight minutes); a report run itemizes every balance change of an interval in one
//! file, whatever its size. A balance change is money that moved, so this side compares
//! money: every payment we say `succeeded` must have its capture in the file, for the
//! amount we captured, and no payment we say is pending, canceled or failed may have
//! one. A payment pending at both, or canceled at Stripe before any money moved, agrees
//! as far as money goes; its status is the reconciler's to follow, and one pending past
//! the stuck threshold is listed whatever Stripe says.
//!
//! Memory stays bounded by the window's charges, not by the window's rows: Stripe's side
//! is read from the downloaded file into one compact entry per charged payment, and ours
//! is streamed from the replica and compared one row at a time.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paystream_core::gateway::{GatewayError, StripeReporting};
use paystream_core::{Currency, PaymentId, PaymentStatus};
use paystream_db::Replica;
use paystream_db::replica;
use uuid::Uuid;

use crate::classify::{Class, Finding, Ours, Rules, Tally, Timeline};
use crate::source::{SourceError, retrying};

/// The report type whose columns name each change's PaymentIntent and our metadata.
pub const REPORT_TYPE: &str = "balance_change_from_activity.itemized.2";
/// `customer_facing_amount` and `_currency` are what the customer was charged, in the
/// payment's currency; `gross` and `currency` are in the account's settlement currency (a
/// EUR payment on a USD account reads as USD there).
pub const COLUMNS: [&str; 6] = [
    "balance_transaction_id",
    "created_utc",
    "customer_facing_currency",
    "customer_facing_amount",
    "reporting_category",
    "payment_metadata[payment_id]",
];
/// A payment created near the window's end is captured a moment after it: the report
/// reaches this far past the window. A later capture (a manual one waits up to 7 days)
/// is past the file's data, and so is its payment's change: `in_flight`, not a mismatch.
/// Longer would hold the captures of payments after the window in memory.
const CAPTURE_SLACK: chrono::Duration = chrono::Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("report file: {0}")]
    Csv(#[from] csv::Error),
    #[error("report file: {0}")]
    Io(#[from] std::io::Error),
    #[error("report file has no {0} column")]
    Column(&'static str),
    #[error("report file row {row}: {what}")]
    Row { row: u64, what: String },
    #[error("report run {id} failed at stripe: {error}")]
    RunFailed { id: String, error: String },
    #[error("report run {0} did not finish in time")]
    RunTimeout(String),
}

/// What Stripe's balance says about one payment of ours: the money it took for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub currency: Currency,
    /// Captured, in minor units.
    pub charged: i64,
    /// The first capture's time (unix seconds).
    pub charged_at: i64,
}

/// Stripe's side of a window: the captures of the report file, by our payment id.
#[derive(Debug, Default)]
pub struct Captures {
    by_payment: HashMap<Uuid, Moved>,
    /// Balance changes read (every category).
    pub rows: u64,
    /// Captures without our payment id (another integration on the same account).
    pub not_ours: u64,
}

impl Captures {
    /// Reads a report file with `COLUMNS` (in any order, others ignored).
    pub fn read(file: impl Read) -> Result<Captures, BulkError> {
        let mut csv = csv::Reader::from_reader(file);
        let header = csv.headers()?.clone();
        let col = |name: &'static str| {
            header
                .iter()
                .position(|h| h == name)
                .ok_or(BulkError::Column(name))
        };
        let (created, currency, gross, category, payment) = (
            col("created_utc")?,
            col("customer_facing_currency")?,
            col("customer_facing_amount")?,
            col("reporting_category")?,
            col("payment_metadata[payment_id]")?,
        );
        let mut out = Captures::default();
        let mut record = csv::StringRecord::new();
        while csv.read_record(&mut record)? {
            out.rows += 1;
            let row = out.rows;
            let field = |i: usize| record.get(i).unwrap_or_default();
            if field(category) != "charge" {
                continue;
            }
            let bad = |what: String| BulkError::Row { row, what };
            let Ok(payment_id) = field(payment).parse::<Uuid>() else {
                out.not_ours += 1;
                continue;
            };
            let cur = Currency::parse(field(currency))
                .map_err(|e| bad(format!("currency {:?}: {e}", field(currency))))?;
            let amount = minor_units(field(gross), cur)
                .ok_or_else(|| bad(format!("amount {:?}", field(gross))))?;
            // Stripe writes report times as `2026-12-02 07:30:00`, UTC in `created_utc`.
            let at = chrono::NaiveDateTime::parse_from_str(field(created), "%Y-%m-%d %H:%M:%S")
                .map_err(|_| bad(format!("created_utc {:?}", field(created))))?
                .and_utc()
                .timestamp();
            let m = out.by_payment.entry(payment_id).or_insert(Moved {
                currency: cur,
                charged: 0,
                charged_at: at,
            });
            m.charged += amount;
            m.charged_at = m.charged_at.min(at);
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.by_payment.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_payment.is_empty()
    }

    fn take(&mut self, id: &PaymentId) -> Option<Moved> {
        self.by_payment.remove(&id.as_uuid())
    }
}

/// A report file's decimal amount in minor units, exactly: Stripe writes major units
/// (`12.50` dollars, `-5.00`, `5000` yen), never a float worth trusting with money.
pub fn minor_units(text: &str, currency: Currency) -> Option<i64> {
    let exp = u32::from(currency.exponent());
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    // Zeros past the currency's digits change nothing (`5000.00` yen).
    let frac = match frac.get(exp as usize..) {
        Some(extra) if extra.bytes().all(|b| b == b'0') => &frac[..exp as usize],
        _ => frac,
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > exp as usize
    {
        return None;
    }
    let scale = 10_i64.checked_pow(exp)?;
    let frac_value: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10_i64.checked_pow(exp - frac.len() as u32)?
    };
    let v = whole
        .parse::<i64>()
        .ok()?
        .checked_mul(scale)?
        .checked_add(frac_value)?;
    Some(if neg { -v } else { v })
}

/// One payment of ours against the money Stripe moved for it, as a report file covering
/// balance changes up to `covered_until` shows it.
pub fn judge(
    p: &Ours,
    moved: Option<&Moved>,
    rules: &Rules,
    covered_until: DateTime<Utc>,
) -> (Class, Option<String>, Option<String>) {
    let ours = Some(p.status.as_str().to_owned());
    let charged = moved.map(|m| format!("charged {} {}", m.charged, m.currency.code()));
    // Changed at or after the file's data ends: money may have moved after it too (the
    // grace counts the same way from our row's last change).
    let recent = rules.now - p.updated_at.max(p.created_at) < rules.grace
        || p.updated_at.max(p.created_at) >= covered_until;
    let stuck = p.status == PaymentStatus::Pending && rules.now - p.created_at > rules.stuck_after;
    if let Some(a) = p.attention {
        return (Class::of_attention(a), ours, charged);
    }
    match (p.status, moved) {
        (_, Some(m)) if !m.currency.code().eq_ignore_ascii_case(&p.currency) => (
            Class::CurrencyMismatch,
            Some(p.currency.clone()),
            Some(m.currency.code().to_ascii_lowercase()),
        ),
        (PaymentStatus::Succeeded, Some(m))
            if m.charged != p.amount_captured.unwrap_or(p.amount) =>
        {
            (
                Class::AmountMismatch,
                Some(p.amount_captured.unwrap_or(p.amount).to_string()),
                Some(m.charged.to_string()),
            )
        }
        (PaymentStatus::Succeeded, Some(_)) => (Class::Matched, None, None),
        // Money moved that we say did not, or none that we say did: in flight while the
        // row changed within the grace (its webhook or poll is on the way).
        (PaymentStatus::Pending, Some(_)) | (PaymentStatus::Succeeded, None) if recent => (
            Class::InFlight,
            ours,
            charged.or_else(|| Some("no charge".into())),
        ),
        (PaymentStatus::Succeeded, None) => (Class::StatusMismatch, ours, Some("no charge".into())),
        (_, Some(_)) => (Class::StatusMismatch, ours, charged),
        // Canceled or failed here, or pending, and changed after the file's data ends:
        // whether Stripe took money since is not in the file.
        (_, None) if recent && p.updated_at.max(p.created_at) >= covered_until => (
            Class::InFlight,
            ours,
            Some("after the report's data".into()),
        ),
        (PaymentStatus::Pending, None) if stuck => (Class::StuckPending, ours, None),
        (_, None) => (Class::Matched, None, None),
    }
}

fn finding(class: Class, p: &Ours, ours: Option<String>, stripe: Option<String>) -> Finding {
    Finding {
        class,
        payment_id: Some(p.id),
        intent_id: p.intent.clone(),
        ours,
        stripe,
        created_at: Some(p.created_at),
        note: p.attention.map(|a| a.action().to_owned()),
        refund_id: None,
        stripe_refund_id: None,
    }
}

/// What a bulk comparison read.
#[derive(Debug)]
pub struct Compared {
    pub payments: u64,
    pub charged_payments: usize,
    pub rows: u64,
    pub data_as_of: Option<DateTime<Utc>>,
}

/// Our payments created in `[since, until)`, streamed from the replica, against
/// `captures` (a file covering balance changes up to `covered_until`), into `tally` and
/// `timeline`; then the captures left (payments created outside the window, or with no
/// row of ours).
#[allow(clippy::too_many_arguments)]
pub async fn compare(
    replica: &Replica,
    mut captures: Captures,
    (since, until): (DateTime<Utc>, DateTime<Utc>),
    covered_until: DateTime<Utc>,
    rules: Rules,
    tally: &mut Tally,
    timeline: &mut Timeline,
    mut progress: impl FnMut(usize),
) -> Result<Compared, SourceError> {
    let charged_payments = captures.len();
    let rows = captures.rows;
    let mut done = 0usize;
    let (payments, data_as_of) = replica::each_payment_created(replica, since, until, |p| {
        let moved = captures.take(&p.id);
        let (class, ours, stripe) = judge(&p, moved.as_ref(), &rules, covered_until);
        tally.count(&p, class, || finding(class, &p, ours, stripe));
        timeline.add(&p);
        done += 1;
        if done % 5_000 == 0 {
            progress(done);
        }
    })
    .await?;
    progress(done);
    // Captures of payments created outside the window: only a disagreement is news. Our
    // ids are UUIDv7: one minted at or after the window's end is the next window's.
    let after = until.timestamp_millis();
    captures
        .by_payment
        .retain(|id, _| v7_millis(id).is_none_or(|ms| ms < after));
    let rest: Vec<Uuid> = captures.by_payment.keys().copied().collect();
    replica::each_payment_of(replica, &rest, |p| {
        let moved = captures.take(&p.id);
        let (class, ours, stripe) = judge(&p, moved.as_ref(), &rules, covered_until);
        if class.is_discrepancy() && class != Class::StuckPending {
            tally.count_outside(class, finding(class, &p, ours, stripe));
        }
    })
    .await?;
    for (id, m) in captures.by_payment.drain() {
        tally.count_outside(
            Class::OrphanAtStripe,
            Finding {
                class: Class::OrphanAtStripe,
                payment_id: Some(PaymentId::from_uuid(id)),
                intent_id: None,
                ours: None,
                stripe: Some(format!("charged {} {}", m.charged, m.currency.code())),
                created_at: DateTime::from_timestamp(m.charged_at, 0),
                note: Some("Stripe took money for a payment id we have no row for: check the charge at Stripe".into()),
                refund_id: None,
                stripe_refund_id: None,
            },
        );
    }
    Ok(Compared {
        payments,
        charged_payments,
        rows,
        data_as_of,
    })
}

/// When a UUIDv7 was minted (unix milliseconds); `None` for other versions.
fn v7_millis(id: &Uuid) -> Option<i64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    i64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(i64::from(nanos / 1_000_000))
}

/// Removes the downloaded file however the report ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stripe's captures of `[since, until + CAPTURE_SLACK)`, through one report run, and
/// the time its data ends. Stripe's reports lag behind live activity (hours, on real
/// Stripe): the data may end before `until`, and the caller compares the rest another
/// way. `None` when Stripe has no data for the window's start.
pub async fn captures<G: StripeReporting>(
    stripe: &G,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    poll_every: Duration,
    wait_at_most: Duration,
) -> Result<Option<(Captures, DateTime<Utc>)>, SourceError> {
    let available = match retrying(|| stripe.report_availability(REPORT_TYPE)).await {
        Ok(a) => a,
        // A Stripe without the Reporting API (a peer such as localstripe), or a key not
        // allowed to read reports: the list walk does without.
        Err(
            GatewayError::NotFound
            | GatewayError::Unsupported(_)
            | GatewayError::Misconfigured { .. }
            | GatewayError::Rejected { .. },
        ) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let end = (until + CAPTURE_SLACK).timestamp().min(available.end);
    let Some(covered_until) = DateTime::from_timestamp(end, 0) else {
        return Ok(None);
    };
    if end <= since.timestamp() || since.timestamp() < available.start {
        return Ok(None);
    }
    let mut run =
        retrying(|| stripe.start_report_run(REPORT_TYPE, since.timestamp(), end, &COLUMNS)).await?;
    let started = std::time::Instant::now();
    let mut poll_every = poll_every;
    let url = loop {
        match run.status.as_str() {
            "succeeded" => {
                break run.file_url.clone().ok_or_else(|| {
                    GatewayError::Unavailable(format!("report run {} has no file", run.id))
                })?;
            }
            "failed" => {
                return Err(BulkError::RunFailed {
                    id: run.id.clone(),
                    error: run.error.clone().unwrap_or_default(),
                }
                .into());
            }
            _ if started.elapsed() > wait_at_most => {
                return Err(BulkError::RunTimeout(run.id.clone()).into());
            }
            _ => {
                // Real runs take minutes: a growing interval keeps the calls few.
                tokio::time::sleep(poll_every).await;
                poll_every = (poll_every * 2).min(Duration::from_secs(10));
                run = retrying(|| stripe.report_run(&run.id)).await?;
            }
        }
    };
    let file =
        TempFile(std::env::temp_dir().join(format!("paystream-report-{}.csv", Uuid::now_v7())));
    retrying(|| stripe.download_file(&url, &file.0)).await?;
    // Reading a million rows is seconds of CPU: off the runtime's threads.
    let captures = tokio::task::spawn_blocking(move || {
        let read = std::fs::File::open(&file.0)?;
        Captures::read(std::io::BufReader::new(read))
    })
    .await
    .map_err(|e| BulkError::Io(std::io::Error::other(e)))??;
    Ok(Some((captures, covered_until)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_db::payments::Source;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("usd").unwrap()
    }

    #[test]
    fn amounts_read_exactly_in_minor_units() {
        let jpy = Currency::parse("jpy").unwrap();
        for (text, cur, want) in [
            ("12.50", usd(), Some(1250)),
            ("12.5", usd(), Some(1250)),
            ("12", usd(), Some(1200)),
            ("-5.00", usd(), Some(-500)),
            ("0.01", usd(), Some(1)),
            ("5000", jpy, Some(5000)),
            ("5000.5", jpy, None),
            ("5000.00", jpy, Some(5000)),
            ("12.500", usd(), Some(1250)),
            ("1.234", usd(), None),
            ("", usd(), None),
            ("1e3", usd(), None),
            ("-", usd(), None),
            (".5", usd(), None),
        ] {
            assert_eq!(minor_units(text, cur), want, "{text}");
        }
    }

    proptest! {
        #[test]
        fn every_amount_round_trips(cents in -10_000_000_000_i64..10_000_000_000) {
            let text = format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100);
            prop_assert_eq!(minor_units(&text, usd()), Some(cents));
        }
    }

    const FILE: &str = "balance_transaction_id,created_utc,customer_facing_currency,customer_facing_amount,reporting_category,payment_metadata[payment_id],description
txn_1,2027-01-15 08:00:00,usd,12.50,charge,01890a5d-ac96-774b-bcce-b302099a8057,\"a, quoted\"
txn_2,2027-01-15 08:00:10,usd,-5.00,refund,01890a5d-ac96-774b-bcce-b302099a8057,
txn_3,2027-01-15 08:00:20,jpy,5000,charge,01890a5d-ac96-774b-bcce-b302099a8058,
txn_4,2027-01-15 08:00:30,usd,3.00,charge,,someone else's
txn_5,2027-01-15 08:00:40,usd,1.00,charge,01890a5d-ac96-774b-bcce-b302099a8057,second capture
";

    #[test]
    fn a_report_file_reads_as_captures_per_payment() {
        let c = Captures::read(FILE.as_bytes()).unwrap();
        assert_eq!((c.rows, c.not_ours, c.len()), (5, 1, 2));
        let a = &c.by_payment[&"01890a5d-ac96-774b-bcce-b302099a8057"
            .parse::<Uuid>()
            .unwrap()];
        assert_eq!(
            (a.charged, a.charged_at),
            (1350, 1_800_000_000),
            "refunds are not captures"
        );
        let missing = "balance_transaction_id,created\ntxn_1,1\n";
        assert!(matches!(
            Captures::read(missing.as_bytes()),
            Err(BulkError::Column(_))
        ));
        let bad = FILE.replace("12.50", "12.5x");
        assert!(matches!(
            Captures::read(bad.as_bytes()),
            Err(BulkError::Row { row: 1, .. })
        ));
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn ours(status: PaymentStatus, changed_ago_secs: i64) -> Ours {
        Ours {
            id: PaymentId::generate(),
            intent: Some("pi_1".into()),
            status,
            amount: 1000,
            amount_captured: (status == PaymentStatus::Succeeded).then_some(1000),
            currency: "usd".into(),
            created_at: t0() - chrono::Duration::hours(2),
            resolved_at: status.is_final().then(|| t0() - chrono::Duration::hours(1)),
            resolution_source: status.is_final().then_some(Source::Webhook),
            attention: None,
            updated_at: t0() - chrono::Duration::seconds(changed_ago_secs),
        }
    }

    fn moved(charged: i64) -> Moved {
        Moved {
            currency: usd(),
            charged,
            charged_at: t0().timestamp(),
        }
    }

    /// Every status against money moved or not, recent or not.
    #[test]
    fn each_status_against_the_money_stripe_moved() {
        let rules = Rules {
            now: t0(),
            stuck_after: chrono::Duration::hours(1),
            grace: chrono::Duration::minutes(2),
        };
        use PaymentStatus::*;
        let old = 3600;
        for (status, changed, m, want) in [
            (Succeeded, old, Some(1000), Class::Matched),
            (Succeeded, old, Some(900), Class::AmountMismatch),
            (Succeeded, old, None, Class::StatusMismatch),
            (Succeeded, 10, None, Class::InFlight),
            (Pending, 10, Some(1000), Class::InFlight),
            (Pending, old, Some(1000), Class::StatusMismatch),
            (Pending, old, None, Class::StuckPending),
            (Canceled, old, Some(1000), Class::StatusMismatch),
            (Canceled, 10, Some(1000), Class::StatusMismatch),
            (Canceled, old, None, Class::Matched),
            (Failed, old, None, Class::Matched),
            (Failed, old, Some(1000), Class::StatusMismatch),
        ] {
            let p = ours(status, changed);
            let (class, _, _) = judge(&p, m.map(moved).as_ref(), &rules, t0());
            assert_eq!(
                class, want,
                "{status:?} changed {changed}s ago, charged {m:?}"
            );
        }
        let mut young = ours(Pending, 10);
        young.created_at = t0() - chrono::Duration::seconds(10);
        assert_eq!(
            judge(&young, None, &rules, t0()).0,
            Class::Matched,
            "pending at both, young"
        );
        let mut partial = ours(Succeeded, old);
        partial.amount_captured = Some(600);
        assert_eq!(
            judge(&partial, Some(&moved(600)), &rules, t0()).0,
            Class::Matched
        );
        let mut euro = ours(Succeeded, old);
        euro.currency = "eur".into();
        assert_eq!(
            judge(&euro, Some(&moved(1000)), &rules, t0()).0,
            Class::CurrencyMismatch
        );
        let mut late = ours(Succeeded, old);
        late.resolved_at = Some(t0());
        late.updated_at = t0();
        assert_eq!(
            judge(&late, None, &rules, t0() - chrono::Duration::seconds(1)).0,
            Class::InFlight,
            "resolved after the file's data ends: its capture may be too"
        );
        let mut canceled_late = ours(Canceled, old);
        canceled_late.updated_at = t0();
        assert_eq!(
            judge(
                &canceled_late,
                None,
                &rules,
                t0() - chrono::Duration::seconds(1)
            )
            .0,
            Class::InFlight,
            "changed after the file's data ends: money may have moved since"
        );
    }
}
