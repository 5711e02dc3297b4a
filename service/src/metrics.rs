//! Prometheus metrics on `prometheus-client`, the Prometheus project's own Rust client,
//! exposed in the OpenMetrics text format.
//!
//! Why that crate and not `metrics` + `metrics-exporter-prometheus`: its registries are
//! explicit values, with no process-global recorder (tests run several services in one
//! process, each with a registry of its own); its families are typed and can drop one
//! series (`Family::remove`: the reconciler drops a partition's gauges when the partition
//! moves to another instance), which the exporter's global recorder cannot.
//!
//! Call sites name a metric and pass its labels; the family is registered on first use.
//! Every label value must come from a bounded set: a series lives as long as the process.

mod process;

pub use process::ProcessCollector;

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// What `/metrics` answers with: OpenMetrics (the body ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency buckets, in seconds (1 ms to 10 s). Fine enough below
/// 250 ms to tell 20 ms from 40 ms, where the CDC and API latency targets are.
const BUCKETS: [f64; 21] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

enum Handle {
    Counter(Family<Labels, Counter>),
    Gauge {
        family: Family<Labels, Gauge>,
        /// A `Family` cannot be iterated, and `remove_gauge` drops every series whose
        /// labels include the given pairs: so the label sets set are kept here too.
        series: HashSet<Labels>,
    },
    Histogram(Histograms),
}

impl Handle {
    fn kind(&self) -> &'static str {
        match self {
            Handle::Counter(_) => "counter",
            Handle::Gauge { .. } => "gauge",
            Handle::Histogram(_) => "histogram",
        }
    }
}

/// A service's metrics: one registry, its families by exposed name.
pub struct Metrics {
    /// Locked after `families` whenever both are held.
    registry: Mutex<Registry>,
    families: Mutex<HashMap<&'static str, Handle>>,
}

impl Default for Metrics {
    /// An empty registry, without build or process metrics (tests' choice).
    fn default() -> Self {
        Metrics {
            registry: Mutex::new(Registry::default()),
            families: Mutex::default(),
        }
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// A deployable's registry: `paystream_build_info{service, version}` and the standard
    /// `process_*` metrics, besides what the service records.
    pub fn for_service(service: &'static str, version: &'static str) -> Self {
        let m = Metrics::default();
        {
            let mut registry = lock(&m.registry);
            register_build_info(&mut registry, service, version);
            registry.register_collector(Box::new(process::ProcessCollector));
        }
        m
    }

    /// The family called `name`, registered on first use as `make` builds it. `None` if
    /// the name is taken by another kind (a programming error: the sample is dropped).
    fn with_family<R>(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        make: impl FnOnce() -> Handle,
        f: impl FnOnce(&mut Handle) -> R,
    ) -> Option<R> {
        let mut families = lock(&self.families);
        let handle = families.entry(name).or_insert_with(|| {
            let handle = make();
            let mut registry = lock(&self.registry);
            match &handle {
                // The client appends `_total` to a counter's name: call sites name the
                // series as exposed, so the suffix is registered without it.
                Handle::Counter(c) => {
                    registry.register(name.strip_suffix("_total").unwrap_or(name), help, c.clone())
                }
                Handle::Gauge { family, .. } => registry.register(name, help, family.clone()),
                Handle::Histogram(h) => registry.register(name, help, h.clone()),
            }
            handle
        });
        if handle.kind() != kind {
            tracing::warn!(
                metric = name,
                registered = handle.kind(),
                used_as = kind,
                "metric used as another kind; sample dropped"
            );
            return None;
        }
        Some(f(handle))
    }

    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, help, labels, 1);
    }

    /// Adds to a counter; `name` ends in `_total`, as exposed.
    pub fn add(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        n: u64,
    ) {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        let family = self.with_family(
            name,
            help,
            "counter",
            || Handle::Counter(Family::default()),
            |h| match h {
                Handle::Counter(c) => Some(c.clone()),
                _ => None,
            },
        );
        if let Some(Some(c)) = family {
            c.get_or_create(&owned(labels)).inc_by(n);
        }
    }

    /// Sets a gauge that the service updates itself (e.g. per Kafka partition).
    pub fn set_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: i64,
    ) {
        let labels = owned(labels);
        self.with_family(
            name,
            help,
            "gauge",
            || Handle::Gauge {
                family: Family::default(),
                series: HashSet::new(),
            },
            |h| {
                if let Handle::Gauge { family, series } = h {
                    family.get_or_create(&labels).set(value);
                    if !series.contains(&labels) {
                        series.insert(labels);
                    }
                }
            },
        );
    }

    /// Drops every series of a gauge whose labels include `labels` (e.g. a partition that
    /// moved to another instance).
    pub fn remove_gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        let labels = owned(labels);
        if let Some(Handle::Gauge { family, series }) = lock(&self.families).get_mut(name) {
            series.retain(|l| {
                let matches = labels.iter().all(|kv| l.contains(kv));
                if matches {
                    family.remove(l);
                }
                !matches
            });
        }
    }

    /// Records a duration in a histogram whose buckets are in seconds.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        took: Duration,
    ) {
        if let Some(h) = self.histogram(name, help, labels) {
            h.observe(took.as_secs_f64());
        }
    }

    /// Exposes a histogram's series before its first observation (all buckets at zero),
    /// as counters that may never count start at zero.
    pub fn declare_histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) {
        self.histogram(name, help, labels);
    }

    fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Option<Histogram> {
        let family = self.with_family(
            name,
            help,
            "histogram",
            || Handle::Histogram(Family::new_with_constructor(new_histogram)),
            |h| match h {
                Handle::Histogram(f) => Some(f.clone()),
                _ => None,
            },
        );
        let family = family.flatten()?;
        let series = family.get_or_create(&owned(labels)).clone();
        Some(series)
    }

    /// The OpenMetrics exposition; `gauges` are values read at scrape time (e.g. pool
    /// usage).
    pub fn render(&self, gauges: &[(&'static str, &'static str, i64)]) -> String {
        for (name, help, v) in gauges {
            self.set_gauge(name, help, &[], *v);
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &lock(&self.registry)) {
            // Only a failing writer errs, and a String's never does.
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// `<prefix>_build_info{service, version} 1`: which build runs where, for dashboards and
/// for joins onto other series.
pub fn register_build_info(registry: &mut Registry, service: &'static str, version: &'static str) {
    registry.register(
        "paystream_build",
        "the build that runs: service name and version (value 1)",
        Info::new(vec![("service", service), ("version", version)]),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn counters_keep_their_total_names_and_escape_label_values() {
        let m = Metrics::default();
        m.inc("x_total", "things", &[("route", "/a"), ("status", "200")]);
        m.inc("x_total", "things", &[("route", "/a"), ("status", "200")]);
        m.add(
            "x_total",
            "things",
            &[("route", "/b\"q\\\n"), ("status", "500")],
            3,
        );
        let text = m.render(&[]);
        let l = lines(&text);
        assert!(l.contains(&"# TYPE x counter"), "{text}");
        assert!(
            l.contains(&"x_total{route=\"/a\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            l.contains(&"x_total{route=\"/b\\\"q\\\\\\n\",status=\"500\"} 3"),
            "{text}"
        );
        assert!(!text.contains("x_total_total"), "{text}");
        assert!(!text.contains("_created"), "{text}");
        assert_eq!(l.last(), Some(&"# EOF"), "{text}");
    }

    #[test]
    fn histograms_bucket_in_seconds() {
        let m = Metrics::default();
        let observe = |d| m.observe("lat_seconds", "latency", &[("route", "/a")], d);
        observe(Duration::from_micros(3_000));
        observe(Duration::from_secs(20));
        m.observe("bare_seconds", "latency", &[], Duration::from_millis(1));
        let text = m.render(&[]);
        let l = lines(&text);
        for want in [
            "# TYPE lat_seconds histogram",
            "lat_seconds_bucket{le=\"0.001\",route=\"/a\"} 0",
            "lat_seconds_bucket{le=\"0.0025\",route=\"/a\"} 0",
            "lat_seconds_bucket{le=\"0.005\",route=\"/a\"} 1",
            "lat_seconds_bucket{le=\"10.0\",route=\"/a\"} 1",
            "lat_seconds_bucket{le=\"+Inf\",route=\"/a\"} 2",
            "lat_seconds_sum{route=\"/a\"} 20.003",
            "lat_seconds_count{route=\"/a\"} 2",
            // What the bench parses: no labels but `le`.
            "bare_seconds_bucket{le=\"0.001\"} 1",
        ] {
            assert!(l.contains(&want), "{want} in\n{text}");
        }
        let buckets = l
            .iter()
            .filter(|l| l.starts_with("lat_seconds_bucket"))
            .count();
        assert_eq!(buckets, BUCKETS.len() + 1, "{text}");
    }

    #[test]
    fn labelled_gauges_are_set_replaced_and_removed() {
        let m = Metrics::default();
        m.set_gauge("lag", "behind", &[("partition", "0")], 5);
        m.set_gauge("lag", "behind", &[("partition", "1")], 7);
        m.set_gauge("lag", "behind", &[("partition", "0")], 2);
        m.set_gauge("pairs", "x", &[("partition", "1"), ("topic", "a")], 1);
        m.set_gauge("pairs", "x", &[("partition", "1"), ("topic", "b")], 1);
        m.set_gauge("pairs", "x", &[("partition", "2"), ("topic", "a")], 1);
        let text = m.render(&[("pool_size", "connections", 4)]);
        let l = lines(&text);
        assert!(l.contains(&"# TYPE lag gauge"), "{text}");
        assert!(l.contains(&"lag{partition=\"0\"} 2"), "{text}");
        assert!(l.contains(&"lag{partition=\"1\"} 7"), "{text}");
        assert!(l.contains(&"pool_size 4"), "{text}");
        m.remove_gauge("lag", &[("partition", "1")]);
        // A subset of the labels: every series holding it goes.
        m.remove_gauge("pairs", &[("partition", "1")]);
        let text = m.render(&[("pool_size", "connections", 3)]);
        let l = lines(&text);
        assert!(!text.contains("lag{partition=\"1\"}"), "{text}");
        assert!(l.contains(&"lag{partition=\"0\"} 2"), "{text}");
        assert!(!text.contains("pairs{partition=\"1\""), "{text}");
        assert!(
            l.contains(&"pairs{partition=\"2\",topic=\"a\"} 1"),
            "{text}"
        );
        assert!(l.contains(&"pool_size 3"), "{text}");
        // Set again after removal: back.
        m.set_gauge("lag", "behind", &[("partition", "1")], 9);
        assert!(m.render(&[]).contains("lag{partition=\"1\"} 9"));
    }

    #[test]
    fn a_name_used_as_another_kind_is_ignored_not_duplicated() {
        let m = Metrics::default();
        m.set_gauge("y", "a gauge", &[], 1);
        m.observe("y", "now a histogram", &[], Duration::from_millis(1));
        let text = m.render(&[]);
        assert_eq!(text.matches("# TYPE y ").count(), 1, "{text}");
        assert!(!text.contains("y_bucket"), "{text}");
    }

    #[test]
    fn a_service_exposes_its_build_and_process() {
        let m = Metrics::for_service("api", "1.2.3");
        let text = m.render(&[]);
        let l = lines(&text);
        assert!(
            l.contains(&"paystream_build_info{service=\"api\",version=\"1.2.3\"} 1"),
            "{text}"
        );
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_start_time_seconds",
                "process_threads",
            ] {
                let value = l
                    .iter()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .unwrap_or_else(|| panic!("{name} in\n{text}"));
                let v: f64 = value.parse().unwrap_or_else(|_| panic!("{name} {value}"));
                assert!(v >= 0.0, "{name} {v}");
            }
        }
        // Each registry its own: a second service in the process sees only its own build.
        let other = Metrics::for_service("webhook", "1.2.3").render(&[]);
        assert!(!other.contains("service=\"api\""), "{other}");
    }
}
