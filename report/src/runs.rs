//! Stored report runs: written to the primary when a report is made, read back from a
//! replica to list, re-render and diff.

use std::collections::BTreeMap;

use paystream_db::replica::{self, RunSummary};
use paystream_db::runs::NewRun;
use paystream_db::{DbError, Primary, Replica};
use uuid::Uuid;

use crate::{Class, Report};

pub async fn store(primary: &Primary, r: &Report) -> Result<Uuid, DbError> {
    let report = serde_json::to_value(r).unwrap_or_default();
    let counts = serde_json::to_value(&r.classified.counts).unwrap_or_default();
    paystream_db::runs::store(
        primary,
        &NewRun {
            since: r.since,
            until: r.until,
            generated_at: r.generated_at,
            discrepancies: i64::try_from(r.classified.discrepancies()).unwrap_or(i64::MAX),
            counts: &counts,
            report: &report,
        },
    )
    .await
}

pub async fn list(replica: &Replica, limit: i64) -> Result<Vec<RunSummary>, DbError> {
    replica::runs(replica, limit).await
}

/// A stored run, `None` if there is none (or it no longer reads as a report).
pub async fn load(replica: &Replica, id: Uuid) -> Result<Option<Report>, DbError> {
    Ok(replica::run_report(replica, id)
        .await?
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// What changed between two runs, per payment (or intent, for orphans), per refund (`refund
/// <id>`, ours or Stripe's), and per payment's refunded sum (`refunded <payment id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub before: Option<Class>,
    pub after: Option<Class>,
}

pub fn diff(a: &Report, b: &Report) -> Vec<Change> {
    let index = |r: &Report| -> BTreeMap<String, Class> {
        r.classified
            .findings
            .iter()
            .map(|f| {
                let payment = f
                    .payment_id
                    .map(|p| p.to_string())
                    .or_else(|| f.intent_id.clone())
                    .unwrap_or_default();
                let key = if f.class.is_refund() {
                    format!("refund {}", crate::render::refund(f))
                } else if f.class == Class::RefundedAmountMismatch {
                    format!("refunded {payment}")
                } else {
                    payment
                };
                (key, f.class)
            })
            .collect()
    };
    let (before, after) = (index(a), index(b));
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (before.get(k).copied(), after.get(k).copied());
            (x != y).then(|| Change {
                key: k.clone(),
                before: x,
                after: y,
            })
        })
        .collect()
}

pub fn render_diff(changes: &[Change]) -> String {
    let name = |c: Option<Class>| c.map_or("(none)", Class::as_str);
    let mut out = format!("{} change(s)\n", changes.len());
    for c in changes {
        out.push_str(&format!(
            "{:<48} {:<24} -> {}\n",
            c.key,
            name(c.before),
            name(c.after)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Finding, Ours, classify};
    use chrono::DateTime;

    fn report(findings: Vec<(Uuid, Class)>) -> Report {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut c = classify(
            &[] as &[Ours],
            &[],
            crate::classify::Rules {
                now: t,
                stuck_after: chrono::Duration::hours(1),
                grace: chrono::Duration::minutes(2),
            },
        );
        c.findings = findings
            .into_iter()
            .map(|(id, class)| Finding {
                class,
                payment_id: Some(paystream_core::PaymentId::from_uuid(id)),
                intent_id: None,
                ours: None,
                stripe: None,
                created_at: Some(t),
                note: None,
                refund_id: None,
                stripe_refund_id: None,
            })
            .collect();
        Report {
            since: t,
            until: t,
            generated_at: t,
            data_as_of: None,
            stuck_after_secs: 3600,
            grace_secs: 120,
            payments: 0,
            stripe_source: "list".into(),
            stripe_intents: 0,
            balance_changes: 0,
            refunds: 0,
            stripe_refunds: 0,
            classified: c,
            timeline: Vec::new(),
        }
    }

    #[test]
    fn a_stored_report_reads_back_equal_and_diffs_name_each_change() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let old = report(vec![(a, Class::StatusMismatch), (b, Class::StuckPending)]);
        let new = report(vec![(b, Class::StuckPending), (c, Class::AmountMismatch)]);
        let back: Report = serde_json::from_value(serde_json::to_value(&old).unwrap()).unwrap();
        assert_eq!(back.classified, old.classified);
        let d = diff(&old, &new);
        assert_eq!(
            d,
            [
                Change {
                    key: a.to_string(),
                    before: Some(Class::StatusMismatch),
                    after: None
                },
                Change {
                    key: c.to_string(),
                    before: None,
                    after: Some(Class::AmountMismatch)
                },
            ]
        );
        assert!(render_diff(&d).starts_with("2 change(s)"));
    }

    #[test]
    fn refund_findings_diff_apart_from_their_payments() {
        let p = Uuid::now_v7();
        let mut old = report(vec![
            (p, Class::AmountMismatch),
            (p, Class::RefundStuckPending),
        ]);
        let refund = paystream_core::RefundId::generate();
        old.classified.findings[1].refund_id = Some(refund);
        let mut new = report(vec![
            (p, Class::AmountMismatch),
            (p, Class::RefundOrphanAtStripe),
            (p, Class::RefundedAmountMismatch),
        ]);
        new.classified.findings[1].stripe_refund_id = Some("re_9".into());
        let d = diff(&old, &new);
        assert_eq!(
            d.iter()
                .map(|c| (c.key.as_str(), c.before, c.after))
                .collect::<Vec<_>>(),
            [
                (
                    format!("refund {refund}").as_str(),
                    Some(Class::RefundStuckPending),
                    None
                ),
                ("refund re_9", None, Some(Class::RefundOrphanAtStripe)),
                (
                    format!("refunded {p}").as_str(),
                    None,
                    Some(Class::RefundedAmountMismatch)
                ),
            ]
        );
    }
}
