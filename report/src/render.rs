//! A report as text for a terminal, JSON for machines, CSV for spreadsheets.

use std::fmt::Write as _;

use crate::{Class, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
    /// A self-contained page (see `html.rs`).
    Html,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "html" => Ok(Format::Html),
            other => Err(format!(
                "unknown format {other:?}: table, json, csv or html"
            )),
        }
    }
}

pub fn render(r: &Report, format: Format) -> String {
    match format {
        Format::Table => table(r),
        Format::Json => serde_json::to_string_pretty(r).unwrap_or_default() + "\n",
        Format::Csv => csv(r),
        Format::Html => crate::html::html(r),
    }
}

fn seconds(ms: i64) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

fn table(r: &Report) -> String {
    let c = &r.classified;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Reconciliation {} .. {}",
        r.since.to_rfc3339(),
        r.until.to_rfc3339()
    );
    let _ = writeln!(
        out,
        "generated {}, replica data as of {}",
        r.generated_at.to_rfc3339(),
        r.data_as_of.map_or("unknown".into(), |t| t.to_rfc3339())
    );
    let _ = writeln!(
        out,
        "{} payments, {}, {} refunds, {} Stripe refunds, stuck after {} s, grace {} s\n",
        r.payments,
        r.stripe_side(),
        r.refunds,
        r.stripe_refunds,
        r.stuck_after_secs,
        r.grace_secs
    );
    let _ = writeln!(out, "{:<26} {:>8}", "class", "count");
    for class in Class::ALL {
        let _ = writeln!(
            out,
            "{:<26} {:>8}",
            class.as_str(),
            c.counts.get(&class).copied().unwrap_or(0)
        );
    }
    let by: Vec<String> = c
        .resolved_by
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\nresolved by: {}",
        if by.is_empty() {
            "-".into()
        } else {
            by.join(", ")
        }
    );
    if let Some(t) = c.time_to_resolution {
        let _ = writeln!(
            out,
            "time to resolution: p50 {}, p95 {}, max {}",
            seconds(t.p50_ms),
            seconds(t.p95_ms),
            seconds(t.max_ms)
        );
    }
    if c.findings.is_empty() {
        let _ = writeln!(out, "\nno discrepancies");
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:<36} {:<30} {:<36} {:<24} {:<24}",
        "class", "payment", "intent", "refund", "ours", "stripe"
    );
    let mut last_note = None;
    for (f, more) in capped(&c.findings) {
        let _ = writeln!(
            out,
            "{:<24} {:<36} {:<30} {:<36} {:<24} {:<24}",
            f.class.as_str(),
            f.payment_id.map_or("-".into(), |p| p.to_string()),
            f.intent_id.as_deref().unwrap_or("-"),
            refund(f),
            f.ours.as_deref().unwrap_or("-"),
            f.stripe.as_deref().unwrap_or("-"),
        );
        // Once per run of rows saying the same thing.
        if let Some(note) = f.note.as_ref().filter(|n| last_note != Some(*n)) {
            let _ = writeln!(out, "{:<24} -> {note}", "");
        }
        last_note = f.note.as_ref();
        if more > 0 {
            let _ = writeln!(
                out,
                "{:<24} ... and {more} more {} (json or csv have them all)",
                "",
                f.class.as_str()
            );
        }
    }
    out
}

/// The refund a finding is about, as a screen shows it: ours, else Stripe's, else `-`;
/// Stripe's first for an orphan (the id ours names, if any, has no row).
pub fn refund(f: &crate::Finding) -> String {
    let ours = f.refund_id.map(|r| r.to_string());
    let stripe = f.stripe_refund_id.clone();
    if f.class == Class::RefundOrphanAtStripe {
        stripe.or(ours)
    } else {
        ours.or(stripe)
    }
    .unwrap_or_else(|| "-".into())
}

/// Rows a page or a terminal shows of each class listed whatever the window (flagged
/// payments, orphaned events); json and csv carry every finding, and the window's own
/// discrepancies are always shown whole.
pub const ROWS_PER_CLASS: usize = 20;

/// The findings to show (they come ordered by class), each with how many of its class
/// are left out after it (0 but for the last shown of a capped class).
pub fn capped(findings: &[crate::Finding]) -> Vec<(&crate::Finding, usize)> {
    let mut out = Vec::new();
    for chunk in findings.chunk_by(|a, b| a.class == b.class) {
        let cap = if chunk[0].class.outlives_windows() {
            ROWS_PER_CLASS
        } else {
            usize::MAX
        };
        let shown = chunk.len().min(cap);
        for (i, f) in chunk[..shown].iter().enumerate() {
            let more = if i + 1 == shown {
                chunk.len() - shown
            } else {
                0
            };
            out.push((f, more));
        }
    }
    out
}

fn field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

fn csv(r: &Report) -> String {
    let mut out = String::from(
        "class,payment_id,intent_id,ours,stripe,created_at,note,refund_id,stripe_refund_id\n",
    );
    for f in &r.classified.findings {
        let cells = [
            f.class.as_str().to_owned(),
            f.payment_id.map(|p| p.to_string()).unwrap_or_default(),
            f.intent_id.clone().unwrap_or_default(),
            f.ours.clone().unwrap_or_default(),
            f.stripe.clone().unwrap_or_default(),
            f.created_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            f.note.clone().unwrap_or_default(),
            f.refund_id.map(|r| r.to_string()).unwrap_or_default(),
            f.stripe_refund_id.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Classified, Finding, Latency};
    use chrono::DateTime;
    use std::collections::BTreeMap;

    fn report() -> Report {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut counts: BTreeMap<Class, u64> = Class::ALL.iter().map(|c| (*c, 0)).collect();
        counts.insert(Class::Matched, 3);
        counts.insert(Class::AmountMismatch, 1);
        Report {
            since: t,
            until: t,
            generated_at: t,
            data_as_of: Some(t),
            stuck_after_secs: 3600,
            grace_secs: 120,
            payments: 4,
            stripe_source: "list".into(),
            stripe_intents: 4,
            balance_changes: 0,
            refunds: 0,
            stripe_refunds: 0,
            timeline: Vec::new(),
            classified: Classified {
                counts,
                findings: vec![Finding {
                    class: Class::AmountMismatch,
                    payment_id: Some(paystream_core::PaymentId::from_uuid(uuid::Uuid::nil())),
                    intent_id: Some("pi_1".into()),
                    ours: Some("1,000".into()),
                    stripe: Some("999".into()),
                    created_at: Some(t),
                    note: None,
                    refund_id: None,
                    stripe_refund_id: None,
                }],
                resolved_by: [("webhook".to_owned(), 3)].into(),
                time_to_resolution: Some(Latency {
                    p50_ms: 1500,
                    p95_ms: 2250,
                    max_ms: 3001,
                }),
            },
        }
    }

    #[test]
    fn every_format_carries_the_discrepancy() {
        let r = report();
        let t = render(&r, Format::Table);
        assert!(
            t.contains(&format!("amount_mismatch{}1", " ".repeat(19))),
            "{t}"
        );
        assert!(t.contains("p50 1.500 s, p95 2.250 s, max 3.001 s"), "{t}");
        assert!(t.contains("resolved by: webhook 3"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&render(&r, Format::Json)).unwrap();
        assert_eq!(j["counts"]["amount_mismatch"], 1);
        assert_eq!(j["findings"][0]["intent_id"], "pi_1");
        let c = render(&r, Format::Csv);
        assert_eq!(
            c.lines().nth(1).unwrap(),
            "amount_mismatch,00000000-0000-0000-0000-000000000000,pi_1,\"1,000\",999,2027-01-15T08:00:00+00:00,,,"
        );
        assert!("xml".parse::<Format>().is_err());
        let h = render(&r, Format::Html);
        assert!(h.starts_with("<!doctype html>") && h.ends_with("</html>\n"));
        assert!(
            h.contains("<div class=\"n\">1</div><div class=\"l\">amount mismatch</div>"),
            "{h}"
        );
        assert!(h.contains("1,000"), "the finding's values");
        assert!(
            !h.contains("http") && !h.contains("<script"),
            "works offline: nothing fetched"
        );
    }

    #[test]
    fn refund_findings_carry_their_refunds_in_every_format() {
        let mut r = report();
        let refund = paystream_core::RefundId::from_uuid(uuid::Uuid::max());
        let payment_finding = r.classified.findings[0].clone();
        r.classified.findings.push(Finding {
            class: Class::RefundAmountMismatch,
            ours: Some("500 usd".into()),
            stripe: Some("499 usd".into()),
            refund_id: Some(refund),
            stripe_refund_id: Some("re_1".into()),
            ..payment_finding.clone()
        });
        r.classified.findings.push(Finding {
            class: Class::RefundOrphanAtStripe,
            ours: None,
            stripe: Some("succeeded 300 usd".into()),
            refund_id: None,
            stripe_refund_id: Some("re_2".into()),
            ..payment_finding
        });
        r.classified.counts.insert(Class::RefundAmountMismatch, 1);
        r.classified.counts.insert(Class::RefundOrphanAtStripe, 1);
        r.classified.counts.insert(Class::RefundMatched, 4);
        r.refunds = 5;
        r.stripe_refunds = 5;
        assert_eq!(r.classified.discrepancies(), 3);
        let t = render(&r, Format::Table);
        assert!(
            t.contains(&format!("refunded_amount_mismatch{}0", " ".repeat(10))),
            "every class is counted: {t}"
        );
        assert!(t.contains("5 refunds, 5 Stripe refunds"), "{t}");
        assert!(
            t.lines().any(|l| l.starts_with("refund_amount_mismatch")
                && l.contains(&refund.to_string())
                && l.contains("500 usd")
                && l.contains("499 usd")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("refund_orphan_at_stripe") && l.contains("re_2")),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&render(&r, Format::Json)).unwrap();
        assert_eq!(j["counts"]["refund_matched"], 4);
        assert_eq!(j["findings"][1]["refund_id"], refund.to_string());
        assert_eq!(j["findings"][1]["stripe_refund_id"], "re_1");
        assert!(
            j["findings"][0].get("refund_id").is_none(),
            "payment findings as before"
        );
        let back: Report = serde_json::from_value(j).unwrap();
        assert_eq!(back.classified, r.classified);
        let c = render(&r, Format::Csv);
        assert!(c.starts_with(
            "class,payment_id,intent_id,ours,stripe,created_at,note,refund_id,stripe_refund_id\n"
        ));
        assert!(
            c.lines().any(|l| l.starts_with("refund_amount_mismatch,")
                && l.ends_with(&format!(",{refund},re_1"))),
            "{c}"
        );
        let h = render(&r, Format::Html);
        assert!(
            h.contains("<div class=\"card ok\"><div class=\"n\">4</div><div class=\"l\">refund matched</div>"),
            "{h}"
        );
        assert!(
            h.contains("<div class=\"card bad\"><div class=\"n\">1</div><div class=\"l\">refund orphan at stripe</div>"),
            "{h}"
        );
        assert!(h.contains("re_2") && h.contains(&refund.to_string()));
    }

    #[test]
    fn operator_lists_are_capped_on_screen_but_counted() {
        let r = report();
        let window = r.classified.findings[0].clone();
        let flagged = Finding {
            class: Class::NeedsAttention,
            ..window.clone()
        };
        let mut findings = vec![window.clone(); ROWS_PER_CLASS + 5];
        findings.extend(vec![flagged; ROWS_PER_CLASS + 5]);
        let shown = capped(&findings);
        assert_eq!(
            shown.len(),
            2 * ROWS_PER_CLASS + 5,
            "the window's own are all shown"
        );
        let last = shown.last().unwrap();
        assert_eq!(
            (last.0.class, last.1),
            (Class::NeedsAttention, 5),
            "the last shown says how many more"
        );
        assert!(shown.iter().rev().skip(1).all(|(_, more)| *more == 0));
        let mut r = r;
        r.classified.findings = findings;
        assert!(render(&r, Format::Table).contains("... and 5 more needs_attention"));
        assert_eq!(
            render(&r, Format::Csv).lines().count(),
            1 + 2 * (ROWS_PER_CLASS + 5),
            "csv has them all"
        );
    }
}
