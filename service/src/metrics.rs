//! Prometheus metrics, rendered in the text exposition format. Integer microseconds
//! throughout (rendered as decimal seconds), so no float ever enters the arithmetic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (1 ms to 10 s).
const BUCKETS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Not cumulative: `counts[i]` is the number of observations in bucket i; the last
    /// slot holds those above every bound.
    counts: [u64; BUCKETS_US.len() + 1],
    sum_us: u64,
}

impl Histogram {
    fn observe(&mut self, us: u64) {
        let i = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
    gauges: BTreeMap<(&'static str, Labels), i64>,
    help: BTreeMap<&'static str, (&'static str, &'static str)>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(labels: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, help, labels, 1);
    }

    pub fn add(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        n: u64,
    ) {
        let mut m = self.lock();
        m.help.entry(name).or_insert((help, "counter"));
        *m.counters.entry((name, owned(labels))).or_default() += n;
    }

    /// Sets a gauge that the service updates itself (e.g. per Kafka partition).
    pub fn set_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: i64,
    ) {
        let mut m = self.lock();
        m.help.entry(name).or_insert((help, "gauge"));
        m.gauges.insert((name, owned(labels)), value);
    }

    /// Drops every series of a gauge whose labels match `labels` (e.g. a partition that
    /// moved to another instance).
    pub fn remove_gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        let labels = owned(labels);
        self.lock()
            .gauges
            .retain(|(n, l), _| *n != name || !labels.iter().all(|kv| l.contains(kv)));
    }

    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        took: Duration,
    ) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut m = self.lock();
        m.help.entry(name).or_insert((help, "histogram"));
        m.histograms
            .entry((name, owned(labels)))
            .or_default()
            .observe(us);
    }

    /// The exposition text; `gauges` are values read at scrape time (e.g. pool usage).
    pub fn render(&self, gauges: &[(&'static str, &'static str, i64)]) -> String {
        let m = self.lock();
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), v) in &m.counters {
            if *name != last {
                let (help, kind) = m.help[name];
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", render_labels(labels, None));
        }
        for ((name, labels), h) in &m.histograms {
            if *name != last {
                let (help, kind) = m.help[name];
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                last = name;
            }
            let mut cumulative = 0;
            for (i, bound) in BUCKETS_US.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    render_labels(labels, Some(("le", &seconds(*bound))))
                );
            }
            cumulative += h.counts[BUCKETS_US.len()];
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                render_labels(labels, Some(("le", "+Inf")))
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                render_labels(labels, None),
                seconds(h.sum_us)
            );
            let _ = writeln!(
                out,
                "{name}_count{} {cumulative}",
                render_labels(labels, None)
            );
        }
        for ((name, labels), v) in &m.gauges {
            if *name != last {
                let (help, kind) = m.help[name];
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", render_labels(labels, None));
        }
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.inc("x_total", "things", &[("route", "/a"), ("status", "200")]);
        m.inc("x_total", "things", &[("route", "/a"), ("status", "200")]);
        m.inc(
            "x_total",
            "things",
            &[("route", "/b\"q"), ("status", "500")],
        );
        m.observe(
            "lat_seconds",
            "latency",
            &[("route", "/a")],
            Duration::from_micros(3_000),
        );
        m.observe(
            "lat_seconds",
            "latency",
            &[("route", "/a")],
            Duration::from_secs(20),
        );
        let text = m.render(&[("pool_size", "connections", 4)]);
        assert!(text.contains("# TYPE x_total counter"), "{text}");
        assert!(
            text.contains("x_total{route=\"/a\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("x_total{route=\"/b\\\"q\",status=\"500\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{route=\"/a\",le=\"0.002500\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{route=\"/a\",le=\"0.005000\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{route=\"/a\",le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_sum{route=\"/a\"} 20.003000"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count{route=\"/a\"} 2"), "{text}");
        assert!(
            text.contains("# TYPE pool_size gauge\npool_size 4"),
            "{text}"
        );
    }

    #[test]
    fn labelled_gauges_are_set_replaced_and_removed() {
        let m = Metrics::default();
        m.set_gauge("lag", "behind", &[("partition", "0")], 5);
        m.set_gauge("lag", "behind", &[("partition", "1")], 7);
        m.set_gauge("lag", "behind", &[("partition", "0")], 2);
        let text = m.render(&[]);
        assert!(
            text.contains("# TYPE lag gauge\nlag{partition=\"0\"} 2\nlag{partition=\"1\"} 7"),
            "{text}"
        );
        m.remove_gauge("lag", &[("partition", "1")]);
        let text = m.render(&[]);
        assert!(!text.contains("partition=\"1\""), "{text}");
        assert!(text.contains("lag{partition=\"0\"} 2"), "{text}");
    }
}
