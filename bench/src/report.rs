//! The table `make bench` prints and writes to `.stack/bench/latest.md`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::load;

/// Per process: (name, RSS in MB, CPU in % of one core), as `procs::between` gives them.
pub type Usage = Vec<(String, f64, f64)>;

/// One line of the table.
struct Row {
    figure: String,
    measured: String,
    floor: String,
    ratio: String,
}

/// What the stages have measured so far.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    pub idle: Usage,
    /// `None` until the peak load has run; the table then shows zeros.
    pub peak: Option<Usage>,
    /// CPU per payment: (clients, payments per second, per-process use) of one sustained
    /// initiation run.
    pub cost: Option<(usize, f64, Usage)>,
}

impl Report {
    pub fn record(
        &mut self,
        figure: impl Into<String>,
        measured: impl Into<String>,
        floor: impl Into<String>,
        ratio: impl Into<String>,
    ) {
        let r = Row {
            figure: figure.into(),
            measured: measured.into(),
            floor: floor.into(),
            ratio: ratio.into(),
        };
        // Each figure as soon as it is measured, so a failing later stage loses nothing.
        println!("  {}: {} | {} | {}", r.figure, r.measured, r.floor, r.ratio);
        self.rows.push(r);
    }

    /// A load stage's row: rate, latencies and errors, against its pgbench floor.
    pub fn against_floor(
        &mut self,
        figure: impl Into<String>,
        r: &load::Run,
        unit: &str,
        floor: f64,
    ) {
        self.record(
            figure,
            summary(r, unit),
            format!("pgbench {floor:.0} tps"),
            format!("{:.2}", r.per_sec / floor),
        );
    }

    pub fn table(&self) -> String {
        let mut t = String::from(
            "| figure | measured (median) | floor (same run) | ratio |\n|---|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                r.figure, r.measured, r.floor, r.ratio
            );
        }
        t.push_str("\n| process | RSS idle | CPU idle | RSS at peak (128 clients) | CPU at peak |\n|---|---|---|---|---|\n");
        let peak = self.peak.as_deref().unwrap_or_default();
        for (name, rss, cpu) in &self.idle {
            let (prss, pcpu) = peak
                .iter()
                .find(|p| &p.0 == name)
                .map_or((0.0, 0.0), |p| (p.1, p.2));
            let _ = writeln!(
                t,
                "| {name} | {rss:.0} MB | {cpu:.0}% | {prss:.0} MB | {pcpu:.0}% |"
            );
        }
        if let Some((clients, per_sec, usage)) = &self.cost {
            t.push_str(&cost_table(*clients, *per_sec, usage));
        }
        t
    }
}

/// Where a process's CPU goes in the cost table: the pipeline's own, or apart from it.
fn cost_group(name: &str) -> &'static str {
    match name {
        "stripe-sim" => "stripe-sim (Stripe's side)",
        "load generator" => "load generator",
        "prometheus" | "alertmanager" | "exporter" => "monitoring",
        _ => "pipeline",
    }
}

/// CPU milliseconds per payment, per process and per group, at a sustained initiation
/// load: CPU % of one core is ms per second, divided by payments per second.
pub fn cost_table(clients: usize, per_sec: f64, usage: &Usage) -> String {
    let mut t = format!(
        "\n| CPU per payment ({clients} clients, {per_sec:.0} payments/s) | ms |\n|---|---|\n"
    );
    let per_payment = |cpu: f64| {
        if per_sec > 0.0 {
            cpu * 10.0 / per_sec
        } else {
            0.0
        }
    };
    let mut rows: Vec<_> = usage
        .iter()
        .map(|(n, _, cpu)| (n, per_payment(*cpu)))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, ms) in &rows {
        let _ = writeln!(t, "| {name} | {ms:.2} |");
    }
    for group in [
        "pipeline",
        "stripe-sim (Stripe's side)",
        "load generator",
        "monitoring",
    ] {
        let sum: f64 = rows
            .iter()
            .filter(|(n, _)| cost_group(n) == group)
            .map(|(_, ms)| ms)
            .sum();
        let _ = writeln!(t, "| **total: {group}** | {sum:.2} |");
    }
    t
}

/// A load run in one phrase: rate (with `unit` after "/s"), latencies and errors.
pub fn summary(r: &load::Run, unit: &str) -> String {
    format!(
        "{:.0}/s{unit}, p50 {}, p99 {}{}",
        r.per_sec,
        ms(r.p50),
        ms(r.p99),
        errors(r.errors)
    )
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn errors(n: u64) -> String {
    if n > 0 {
        format!(", {n} errors")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(per_sec: f64, errors: u64) -> load::Run {
        load::Run {
            errors,
            per_sec,
            p50: Duration::from_micros(1500),
            p99: Duration::from_millis(12),
        }
    }

    #[test]
    fn summary_names_errors_only_when_there_are_some() {
        assert_eq!(
            summary(&run(812.4, 0), ""),
            "812/s, p50 1.5 ms, p99 12.0 ms"
        );
        assert_eq!(
            summary(&run(99.6, 3), " applied"),
            "100/s applied, p50 1.5 ms, p99 12.0 ms, 3 errors"
        );
    }

    #[test]
    fn cpu_per_payment_is_core_share_over_rate_with_stripe_and_load_apart() {
        let usage: Usage = vec![
            ("paystream-api".into(), 40.0, 25.0),
            ("postgres primary".into(), 200.0, 50.0),
            ("stripe-sim".into(), 10.0, 10.0),
            ("load generator".into(), 30.0, 20.0),
            ("prometheus".into(), 50.0, 1.0),
        ];
        let t = cost_table(32, 100.0, &usage);
        // 25% of a core is 250 ms each second, over 100 payments.
        assert!(t.contains("| paystream-api | 2.50 |"), "{t}");
        assert!(t.contains("| **total: pipeline** | 7.50 |"), "{t}");
        assert!(
            t.contains("| **total: stripe-sim (Stripe's side)** | 1.00 |"),
            "{t}"
        );
        assert!(t.contains("| **total: load generator** | 2.00 |"), "{t}");
        assert!(t.contains("| **total: monitoring** | 0.10 |"), "{t}");
        // Heaviest first.
        assert!(t.find("postgres primary") < t.find("paystream-api"), "{t}");
    }

    #[test]
    fn table_has_the_rows_in_order_and_peak_beside_idle() {
        let mut report = Report::default();
        report.against_floor("1. a", &run(500.0, 0), "", 1000.0);
        report.record("3. b", "x", "", "");
        report.idle = vec![("api".into(), 50.2, 1.0), ("nginx".into(), 8.0, 0.0)];
        report.peak = Some(vec![("api".into(), 80.0, 150.4)]);
        let t = report.table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[2],
            "| 1. a | 500/s, p50 1.5 ms, p99 12.0 ms | pgbench 1000 tps | 0.50 |"
        );
        assert_eq!(lines[3], "| 3. b | x |  |  |");
        assert_eq!(lines[7], "| api | 50 MB | 1% | 80 MB | 150% |");
        assert_eq!(lines[8], "| nginx | 8 MB | 0% | 0 MB | 0% |");
    }
}
