//! The report as one self-contained HTML page (inline CSS and SVG, no script, nothing
//! fetched): totals, a chart of payments created and resolved over the window, who
//! resolved them, and the discrepancy table.

use std::fmt::Write as _;

use crate::{Class, Report};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1f2933;background:#f7f8fa;padding:0 1rem}
h1{font-size:1.6rem;margin:0}h2{font-size:1.1rem;margin:2rem 0 .6rem}
.meta{color:#616e7c;margin:.3rem 0 1.2rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:.7rem}
.card{background:#fff;border-radius:8px;padding:.8rem 1rem;box-shadow:0 1px 2px rgba(0,0,0,.08);border-top:4px solid #cbd2d9}
.card .n{font-size:1.7rem;font-weight:600}.card .l{color:#616e7c;font-size:.8rem}
.card.ok{border-color:#3ebd93}.card.bad{border-color:#e12d39}.card.bad .n{color:#cf1124}
.panel{background:#fff;border-radius:8px;padding:1rem;box-shadow:0 1px 2px rgba(0,0,0,.08)}
table{border-collapse:collapse;width:100%;font-size:.85rem}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e4e7eb}
th{color:#616e7c;font-weight:600}td.mono{font-family:ui-monospace,Menlo,monospace}
.tag{display:inline-block;padding:0 .45rem;border-radius:10px;background:#ffe3e3;color:#a61b1b;font-size:.78rem}
.legend span{display:inline-block;width:10px;height:10px;margin:0 .3rem 0 1rem;border-radius:2px}
";

pub fn html(r: &Report) -> String {
    let c = &r.classified;
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Paystream reconciliation {}</title><style>{STYLE}</style></head><body>",
        esc(&r.until.format("%Y-%m-%d %H:%M UTC").to_string())
    );
    let _ = write!(
        o,
        "<h1>Reconciliation</h1><p class=\"meta\">{} &rarr; {} &middot; {} payments, {} &middot; {} refunds, {} Stripe refunds &middot; generated {} &middot; replica data as of {}</p>",
        r.since.format("%Y-%m-%d %H:%M"),
        r.until.format("%Y-%m-%d %H:%M UTC"),
        r.payments,
        esc(&r.stripe_side()),
        r.refunds,
        r.stripe_refunds,
        r.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
        r.data_as_of
            .map_or("unknown".into(), |t| t.format("%H:%M:%S UTC").to_string())
    );
    o.push_str("<div class=\"cards\">");
    for class in Class::ALL {
        let n = c.counts.get(&class).copied().unwrap_or(0);
        let kind = match (class, n) {
            (c, _) if !c.is_discrepancy() => "ok",
            (_, 0) => "",
            _ => "bad",
        };
        let _ = write!(
            o,
            "<div class=\"card {kind}\"><div class=\"n\">{n}</div><div class=\"l\">{}</div></div>",
            class.as_str().replace('_', " ")
        );
    }
    o.push_str("</div>");
    chart(&mut o, r);
    o.push_str(
        "<h2>Resolved by</h2><div class=\"panel\"><table><tr><th>source</th><th>payments</th></tr>",
    );
    for (source, n) in &c.resolved_by {
        let _ = write!(o, "<tr><td>{}</td><td>{n}</td></tr>", esc(source));
    }
    o.push_str("</table>");
    if let Some(t) = c.time_to_resolution {
        let s = |ms: i64| format!("{}.{:03} s", ms / 1000, ms % 1000);
        let _ = write!(
            o,
            "<p class=\"meta\">time from creation to resolution: p50 {}, p95 {}, max {}</p>",
            s(t.p50_ms),
            s(t.p95_ms),
            s(t.max_ms)
        );
    }
    o.push_str("</div>");
    let _ = write!(
        o,
        "<h2>Discrepancies ({})</h2><div class=\"panel\">",
        c.findings.len()
    );
    if c.findings.is_empty() {
        o.push_str("<p>None: our books agree with Stripe.</p>");
    } else {
        o.push_str("<table><tr><th>class</th><th>payment</th><th>intent</th><th>refund</th><th>ours</th><th>stripe</th><th>created</th></tr>");
        let mut last_note = None;
        for (f, more) in crate::render::capped(&c.findings) {
            let _ = write!(
                o,
                "<tr><td><span class=\"tag\">{}</span></td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f.class.as_str(),
                f.payment_id.map_or("-".into(), |p| p.to_string()),
                esc(f.intent_id.as_deref().unwrap_or("-")),
                esc(&crate::render::refund(f)),
                esc(f.ours.as_deref().unwrap_or("-")),
                esc(f.stripe.as_deref().unwrap_or("-")),
                f.created_at
                    .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            );
            if let Some(note) = f.note.as_ref().filter(|n| last_note != Some(*n)) {
                let _ = write!(
                    o,
                    "<tr><td></td><td colspan=\"6\" class=\"meta\">{}</td></tr>",
                    esc(note)
                );
            }
            last_note = f.note.as_ref();
            if more > 0 {
                let _ = write!(
                    o,
                    "<tr><td></td><td colspan=\"6\" class=\"meta\">... and {more} more {} (json or csv have them all)</td></tr>",
                    f.class.as_str()
                );
            }
        }
        o.push_str("</table>");
    }
    o.push_str("</div></body></html>\n");
    o
}

/// Created (blue) and resolved (green) per slice, as inline SVG bars.
fn chart(o: &mut String, r: &Report) {
    const W: u64 = 1040;
    const H: u64 = 180;
    let t = &r.timeline;
    o.push_str("<h2>Payments created and resolved</h2><div class=\"panel\">");
    if t.is_empty() {
        o.push_str("<p class=\"meta\">no timeline in this run</p></div>");
        return;
    }
    let max = t
        .iter()
        .map(|b| b.created.max(b.resolved))
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = W / t.len() as u64;
    let bar = (slot.saturating_sub(6) / 2).max(1);
    let _ = write!(
        o,
        "<svg viewBox=\"0 0 {W} {}\" width=\"100%\" role=\"img\" aria-label=\"payments created and resolved over the window\">",
        H + 24
    );
    for (i, b) in t.iter().enumerate() {
        let x = i as u64 * slot + 3;
        for (k, (n, color, what)) in [
            (b.created, "#3f83f8", "created"),
            (b.resolved, "#3ebd93", "resolved"),
        ]
        .into_iter()
        .enumerate()
        {
            let h = n * H / max;
            let _ = write!(
                o,
                "<rect x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" rx=\"2\" fill=\"{color}\"><title>{} {what}: {n}</title></rect>",
                x + k as u64 * bar,
                H - h,
                b.start.format("%H:%M")
            );
        }
        if i % 4 == 0 {
            let _ = write!(
                o,
                "<text x=\"{x}\" y=\"{}\" font-size=\"11\" fill=\"#616e7c\">{}</text>",
                H + 16,
                b.start.format("%d %H:%M")
            );
        }
    }
    let _ = write!(
        o,
        "<line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#cbd2d9\"/></svg><div class=\"legend meta\"><span style=\"background:#3f83f8\"></span>created<span style=\"background:#3ebd93\"></span>resolved &middot; tallest bar {max}</div></div>"
    );
}
