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
        t
    }
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
