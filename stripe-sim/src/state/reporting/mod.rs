//! The Reporting API for itemized balance changes: report types, report runs and the
//! `file` each successful run leaves (https://docs.stripe.com/reports/api).
//!
//! A run is created `pending`; its CSV is written off the request (see `crate::reports`)
//! and the run turns `succeeded`, with its `result` file, once the file is complete.
//! The rows a run reports are fixed when it is created: `interval_end` may not pass
//! `data_available_end`, which is the simulated now, and every later balance transaction
//! is created at or after now, so an interval once reported never gains rows (except
//! from `POST /_sim/ledger`, which dates rows in the past on purpose).

pub mod csv;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use serde_json::{Value, json};

use super::ledger::{Currency, uuid_string};
use super::list::paginate;
use super::{Ctx, State};
use crate::error::StripeError;
use crate::form::Params;
use csv::Column;

/// The report types the sim runs, with their default columns.
const REPORT_TYPES: [(&str, &[&str]); 2] = [
    ("balance_change_from_activity.itemized.1", csv::ITEMIZED_1),
    ("balance_change_from_activity.itemized.2", csv::ITEMIZED_2),
];

/// How long a report file stays downloadable (Stripe's files of report runs expire; the
/// period is a guess).
const FILE_TTL_S: i64 = 365 * 86_400;

/// Distinguishes one `State` from the next after a reset, so a report job started
/// before the reset cannot write into its successor.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

pub fn next_instance() -> u64 {
    INSTANCES.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }
}

struct ReportRun {
    id: String,
    created: i64,
    report_type: &'static str,
    interval_start: i64,
    interval_end: i64,
    /// As the request gave them: Stripe echoes `columns` only when they were given.
    columns_given: Option<Vec<String>>,
    columns: Vec<Column>,
    names: Vec<String>,
    currency: Option<Currency>,
    reporting_category: Option<String>,
    rows: Range<usize>,
    status: RunStatus,
    file: Option<String>,
    succeeded_at: Option<i64>,
    error: Option<String>,
}

struct ReportFile {
    id: String,
    created: i64,
    run: String,
    url: String,
    bytes: Bytes,
}

impl ReportFile {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "created": self.created,
            "expires_at": self.created + FILE_TTL_S,
            "filename": format!("{}.csv", self.run),
            "links": {
                "object": "list",
                "data": [],
                "has_more": false,
                "url": format!("/v1/file_links?file={}", self.id),
            },
            "purpose": "finance_report_run",
            "size": self.bytes.len(),
            "title": format!("FinanceReportRun {}", self.run),
            "type": "csv",
            "url": self.url,
        })
    }
}

#[derive(Default)]
pub struct Reporting {
    /// Creation order, oldest first.
    runs: Vec<ReportRun>,
    files: HashMap<String, ReportFile>,
}

impl Reporting {
    pub(in crate::state) fn any_pending(&self) -> bool {
        self.runs.iter().any(|r| r.status == RunStatus::Pending)
    }

    fn run(&self, id: &str) -> Result<&ReportRun, StripeError> {
        self.runs
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| StripeError::no_such("reporting.report_run", id, Some("id")))
    }

    fn run_mut(&mut self, id: &str) -> Option<&mut ReportRun> {
        self.runs.iter_mut().find(|r| r.id == id)
    }

    fn run_json(&self, r: &ReportRun) -> Value {
        let mut parameters = json!({
            "interval_start": r.interval_start,
            "interval_end": r.interval_end,
        });
        if let Some(c) = &r.columns_given {
            parameters["columns"] = json!(c);
        }
        if let Some(c) = &r.currency {
            parameters["currency"] = json!(c.as_str());
        }
        if let Some(c) = &r.reporting_category {
            parameters["reporting_category"] = json!(c);
        }
        let result = r
            .file
            .as_ref()
            .and_then(|f| self.files.get(f))
            .map(ReportFile::to_json);
        json!({
            "id": r.id,
            "object": "reporting.report_run",
            "created": r.created,
            "error": r.error,
            "livemode": false,
            "parameters": parameters,
            "report_type": r.report_type,
            "result": result,
            "status": r.status.as_str(),
            "succeeded_at": r.succeeded_at,
        })
    }
}

/// What a report job needs to write a run's CSV, taken under the lock in one go.
pub struct ReportJob {
    instance: u64,
    pub run: String,
    pub header: String,
    pub rows: Range<usize>,
    columns: Vec<Column>,
    currency: Option<Currency>,
    reporting_category: Option<String>,
}

impl ReportJob {
    /// A row's likely size, to allocate the CSV once: ids and times are ~20-30 bytes,
    /// amounts and codes less.
    pub fn row_size(&self) -> usize {
        self.columns.len() * 13
    }
}

fn unix_param(p: &Params, key: &str) -> Result<i64, StripeError> {
    p.int(key)?.ok_or_else(|| StripeError::missing(key))
}

fn start_of_day(t: i64) -> i64 {
    t - t.rem_euclid(86_400)
}

impl State {
    /// Stripe's `data_available_start` / `data_available_end` for the balance reports:
    /// from the start of the UTC day of the first balance transaction (so day-aligned
    /// intervals work) to now.
    fn data_available(&self, now: i64) -> (i64, i64) {
        let first = self.ledger.first_created().unwrap_or(now).min(now);
        (start_of_day(first), now)
    }

    /// `GET /v1/reporting/report_types/{id}`.
    pub fn report_type(&self, id: &str, now: i64) -> Result<Value, StripeError> {
        let Some((name, defaults)) = REPORT_TYPES.iter().find(|(n, _)| *n == id) else {
            return Err(StripeError::no_such("report type", id, Some("id")));
        };
        let (start, end) = self.data_available(now);
        let version = name.rsplit('.').next().and_then(|v| v.parse::<i64>().ok());
        Ok(json!({
            "id": name,
            "object": "reporting.report_type",
            "data_available_end": end,
            "data_available_start": start,
            "default_columns": defaults,
            "livemode": false,
            "name": "Balance change from activity (itemized)",
            "updated": end,
            "version": version,
        }))
    }

    /// `POST /v1/reporting/report_runs`.
    pub fn create_report_run(&mut self, p: &Params, ctx: &Ctx) -> Result<Value, StripeError> {
        let report_type = p
            .get("report_type")
            .ok_or_else(|| StripeError::missing("report_type"))?;
        let Some((report_type, defaults)) = REPORT_TYPES.iter().find(|(n, _)| *n == report_type)
        else {
            return Err(
                StripeError::no_such("report type", report_type, Some("report_type")).in_param(),
            );
        };
        const KNOWN: [&str; 4] = [
            "parameters[interval_start]",
            "parameters[interval_end]",
            "parameters[currency]",
            "parameters[reporting_category]",
        ];
        if let Some(k) = p.keys().find(|k| {
            *k != "report_type"
                && !k.starts_with("expand[")
                && !k.starts_with("parameters[columns][")
                && !KNOWN.contains(k)
        }) {
            return Err(StripeError::invalid(
                format!("Received unknown parameter: {k}"),
                Some(k),
            ));
        }
        let start = unix_param(p, "parameters[interval_start]")?;
        let end = unix_param(p, "parameters[interval_end]")?;
        let (available_start, available_end) = self.data_available(ctx.now());
        if start >= end {
            return Err(StripeError::invalid(
                format!(
                    "parameters[interval_start] ({start}) must be before parameters[interval_end] ({end})."
                ),
                Some("parameters[interval_start]"),
            ));
        }
        if start < available_start {
            return Err(StripeError::invalid(
                format!(
                    "parameters[interval_start] ({start}) must be on or after this report type's data_available_start ({available_start})."
                ),
                Some("parameters[interval_start]"),
            ));
        }
        if end > available_end {
            return Err(StripeError::invalid(
                format!(
                    "parameters[interval_end] ({end}) must be on or before this report type's data_available_end ({available_end})."
                ),
                Some("parameters[interval_end]"),
            ));
        }
        let given = p.list("parameters[columns]");
        let names: Vec<String> = if given.is_empty() {
            defaults.iter().map(|c| (*c).to_owned()).collect()
        } else {
            given.clone()
        };
        let columns = names
            .iter()
            .map(|n| {
                Column::parse(n).ok_or_else(|| {
                    StripeError::invalid(
                        format!("Invalid column for {report_type}: {n}"),
                        Some("parameters[columns]"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let currency = match p.get("parameters[currency]") {
            None => None,
            Some(c) => Some(Currency::of(&c.to_ascii_lowercase()).ok_or_else(|| {
                StripeError::invalid(
                    format!("Invalid currency: {c}"),
                    Some("parameters[currency]"),
                )
            })?),
        };
        let reporting_category = p.string("parameters[reporting_category]");
        if let Some(c) = &reporting_category
            && (c.is_empty() || !c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(StripeError::invalid(
                format!("Invalid reporting_category: {c}"),
                Some("parameters[reporting_category]"),
            ));
        }
        let run = ReportRun {
            id: self.books.id("frr"),
            created: ctx.now(),
            report_type,
            interval_start: start,
            interval_end: end,
            columns_given: (!given.is_empty()).then_some(given),
            columns,
            names,
            currency,
            reporting_category,
            rows: self.ledger.between(start, end),
            status: RunStatus::Pending,
            file: None,
            succeeded_at: None,
            error: None,
        };
        let v = self.reporting.run_json(&run);
        self.reporting.runs.push(run);
        Ok(v)
    }

    /// `GET /v1/reporting/report_runs/{id}`.
    pub fn report_run(&self, id: &str) -> Result<Value, StripeError> {
        let r = self.reporting.run(id)?;
        Ok(self.reporting.run_json(r))
    }

    /// `GET /v1/reporting/report_runs`: newest first, `created[..]`, cursors.
    pub fn list_report_runs(&self, p: &Params) -> Result<Value, StripeError> {
        let created = p.range("created")?;
        let items: Vec<&ReportRun> = self
            .reporting
            .runs
            .iter()
            .rev()
            .filter(|r| created.contains(r.created))
            .collect();
        paginate(
            p,
            &items,
            |r| r.id.as_str(),
            |r| self.reporting.run_json(r),
            "/v1/reporting/report_runs",
        )
    }

    /// `GET /v1/files/{id}`.
    pub fn file(&self, id: &str) -> Result<Value, StripeError> {
        self.reporting
            .files
            .get(id)
            .map(ReportFile::to_json)
            .ok_or_else(|| StripeError::no_such("file", id, Some("id")))
    }

    /// `GET /v1/files/{id}/contents`: the bytes, shared, not copied.
    pub fn file_contents(&self, id: &str) -> Result<Bytes, StripeError> {
        self.reporting
            .files
            .get(id)
            .map(|f| f.bytes.clone())
            .ok_or_else(|| StripeError::no_such("file", id, Some("id")))
    }

    /// The job of a pending run, if it is one.
    pub fn report_job(&self, run: &str) -> Option<ReportJob> {
        let r = self.reporting.run(run).ok()?;
        (r.status == RunStatus::Pending).then(|| ReportJob {
            instance: self.instance,
            run: r.id.clone(),
            header: csv::header(&r.names),
            rows: r.rows.clone(),
            columns: r.columns.clone(),
            currency: r.currency,
            reporting_category: r.reporting_category.clone(),
        })
    }

    /// Writes the job's rows in `rows` (a part of `job.rows`); `false` if the simulator
    /// was reset since the job began, which ends it.
    pub fn render_report(&self, job: &ReportJob, rows: Range<usize>, out: &mut String) -> bool {
        if job.instance != self.instance {
            return false;
        }
        let Some(rows) = self.ledger.rows().get(rows) else {
            return false;
        };
        let with_metadata = job.columns.iter().any(Column::is_metadata);
        for r in rows {
            if job.currency.is_some_and(|c| c != r.currency)
                || job
                    .reporting_category
                    .as_deref()
                    .is_some_and(|c| c != r.kind.as_str())
            {
                continue;
            }
            if let Some(ids) = r.seeded {
                csv::row(out, r, &job.columns, |c| match c {
                    Column::PaymentMetadata(k) if k == "payment_id" => {
                        Some(uuid_string(&ids.payment_id))
                    }
                    Column::RefundMetadata(k) if k == "refund_id" => {
                        ids.refund_id.as_ref().map(uuid_string)
                    }
                    Column::PaymentIntentId => ids
                        .foreign_intent
                        .and_then(|i| self.ledger.foreign_intent(i))
                        .map(str::to_owned),
                    _ => None,
                });
                continue;
            }
            if !with_metadata {
                csv::row(out, r, &job.columns, |_| None);
                continue;
            }
            let intent = self
                .intents
                .get(&format!("pi_{}", r.payment_intent.as_str()))
                .ok();
            let refund = r
                .refund
                .and_then(|re| self.refunds.get(&format!("re_{}", re.as_str())).ok());
            csv::row(out, r, &job.columns, |c| match c {
                Column::PaymentMetadata(k) => intent?.metadata().get(k).cloned(),
                Column::RefundMetadata(k) => refund?.metadata().get(k).cloned(),
                _ => None,
            });
        }
        true
    }

    /// The job is done: its file is made and its run `succeeded`.
    pub fn finish_report_run(&mut self, job: &ReportJob, csv: Bytes, base: &str, now: i64) {
        if job.instance != self.instance {
            return;
        }
        let id = self.books.id("file");
        let file = ReportFile {
            url: format!("{base}/v1/files/{id}/contents"),
            id: id.clone(),
            created: now,
            run: job.run.clone(),
            bytes: csv,
        };
        let Some(run) = self.reporting.run_mut(&job.run) else {
            return;
        };
        run.status = RunStatus::Succeeded;
        run.succeeded_at = Some(now);
        run.file = Some(id.clone());
        self.reporting.files.insert(id, file);
    }

    /// Stripe's rare `failed`: the run says why in `error`.
    pub fn fail_report_run(&mut self, job: &ReportJob, error: &str) {
        if job.instance != self.instance {
            return;
        }
        if let Some(run) = self.reporting.run_mut(&job.run) {
            run.status = RunStatus::Failed;
            run.error = Some(error.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::ledger::{BalanceTxn, CARD_AVAILABILITY_S, Tail, TxnKind, card_fee};
    use super::*;
    use crate::{Sim, SimConfig};

    const T0: i64 = 1_796_196_600;

    fn tail(n: usize) -> Tail {
        Tail::of(&format!("x_{n:024}"), "x").unwrap()
    }

    /// A million balance transactions, 100 a second, as a busy month's tail would have.
    fn busy(st: &mut State, n: usize) {
        let usd = Currency::of("usd").unwrap();
        for i in 0..n {
            let amount = 500 + (i as i64 % 10_000);
            st.ledger.push(BalanceTxn {
                id: tail(i),
                kind: TxnKind::Charge,
                created: T0 + (i / 100) as i64,
                available_on: T0 + (i / 100) as i64 + CARD_AVAILABILITY_S,
                amount,
                fee: card_fee(amount, "usd"),
                currency: usd,
                charge: tail(i),
                payment_intent: tail(i),
                refund: None,
                description: None,
                seeded: None,
            });
        }
    }

    #[test]
    fn a_million_rows_report_in_seconds_without_holding_the_lock() {
        const N: usize = 1_000_000;
        let sim = Sim::new(SimConfig::default());
        busy(&mut sim.state(), N);
        let ctx = Ctx {
            now_ms: (T0 + 86_400) * 1000,
            ..Ctx::default()
        };
        let form = format!(
            "report_type=balance_change_from_activity.itemized.2&parameters[interval_start]={T0}&parameters[interval_end]={}",
            T0 + 86_400
        );
        let run = sim
            .state()
            .create_report_run(&Params::parse(&form), &ctx)
            .unwrap();
        let job = sim.state().report_job(run["id"].as_str().unwrap()).unwrap();
        assert_eq!(job.rows, 0..N);
        let began = Instant::now();
        let csv = crate::reports::write(&sim, &job).unwrap();
        let took = began.elapsed();
        // Unoptimized builds are several times slower; the bound is for them.
        assert!(took.as_secs() < 20, "{took:?}");
        assert_eq!(csv.lines().count(), N + 1);
        assert!(
            csv.lines().nth(1).unwrap().starts_with(&format!(
                "txn_{:024},2026-12-02 07:30:00,2026-12-02 07:30:00,2026-12-04 07:30:00,",
                0
            )),
            "{:?}",
            csv.lines().nth(1)
        );
        eprintln!("1M rows: {took:?}, {} bytes", csv.len());
        // A window inside: found by binary search, 100 rows a second.
        let form = format!(
            "report_type=balance_change_from_activity.itemized.1&parameters[interval_start]={}&parameters[interval_end]={}",
            T0 + 10,
            T0 + 12
        );
        let run = sim
            .state()
            .create_report_run(&Params::parse(&form), &ctx)
            .unwrap();
        let job = sim.state().report_job(run["id"].as_str().unwrap()).unwrap();
        assert_eq!(job.rows, 1000..1200);
    }

    #[test]
    fn a_reset_ends_a_job_begun_before_it() {
        let sim = Sim::new(SimConfig::default());
        busy(&mut sim.state(), 10);
        let ctx = Ctx {
            now_ms: (T0 + 100) * 1000,
            ..Ctx::default()
        };
        let form = format!(
            "report_type=balance_change_from_activity.itemized.1&parameters[interval_start]={T0}&parameters[interval_end]={}",
            T0 + 100
        );
        let run = sim
            .state()
            .create_report_run(&Params::parse(&form), &ctx)
            .unwrap();
        let job = sim.state().report_job(run["id"].as_str().unwrap()).unwrap();
        sim.reset(None);
        assert!(crate::reports::write(&sim, &job).is_none());
    }
}
