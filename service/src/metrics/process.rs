//! The standard process metrics (the names every Prometheus client library exports), read
//! from `/proc` at scrape time. Linux only: elsewhere the collector emits nothing.
//!
//! Not `kubert-prometheus-process`, the one crate that plugs these into
//! `prometheus-client`: it is built against an older major of the client (its types do
//! not mix with ours), reports the time it was registered as the process's start, and
//! adds series of its own.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};

/// Registered once per registry; reads `/proc/self` on each scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        #[cfg(target_os = "linux")]
        linux::encode(encoder)?;
        #[cfg(not(target_os = "linux"))]
        let _ = encoder;
        Ok(())
    }
}

/// One descriptor and its one sample.
fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::time::Duration;

    use prometheus_client::encoding::DescriptorEncoder;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    use super::emit;

    /// Clock ticks per second in `/proc`'s figures: USER_HZ, 100 on every architecture
    /// Linux runs on (the Go client's procfs assumes it too), so no `sysconf` call.
    const TICK_MS: u64 = 10;

    /// What `/proc/self/stat` says, from field 14 on. The command name (field 2) may
    /// hold spaces and parentheses: the fields are counted after its last `)`.
    struct Stat {
        cpu_ticks: u64,
        threads: i64,
        start_ticks: u64,
        virtual_bytes: u64,
    }

    fn stat() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (_, rest) = text.rsplit_once(')')?;
        // `rest` starts at field 3 (state).
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
        Some(Stat {
            cpu_ticks: n(14)? + n(15)?,
            threads: i64::try_from(n(20)?).ok()?,
            start_ticks: n(22)?,
            virtual_bytes: n(23)?,
        })
    }

    /// Resident memory from `/proc/self/status` (in kB there), which spares knowing the
    /// page size that `stat`'s rss is counted in.
    fn resident_bytes() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb = text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }

    fn boot_time_secs() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }

    /// The soft limit on open files (what `open` runs into); none if unlimited.
    fn max_fds() -> Option<i64> {
        let text = std::fs::read_to_string("/proc/self/limits").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("Max open files"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn open_fds() -> Option<i64> {
        let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
        i64::try_from(n).ok()
    }

    fn seconds(ms: u64) -> f64 {
        Duration::from_millis(ms).as_secs_f64()
    }

    pub(super) fn encode(mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = stat() else {
            tracing::debug!("no /proc/self/stat: process metrics skipped");
            return Ok(());
        };
        emit(
            &mut e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            &ConstCounter::new(seconds(stat.cpu_ticks * TICK_MS)),
        )?;
        if let Some(bytes) = resident_bytes() {
            emit(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                &ConstGauge::new(bytes),
            )?;
        }
        emit(
            &mut e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            &ConstGauge::new(stat.virtual_bytes),
        )?;
        if let Some(n) = open_fds() {
            emit(
                &mut e,
                "process_open_fds",
                "Number of open file descriptors.",
                &ConstGauge::new(n),
            )?;
        }
        if let Some(n) = max_fds() {
            emit(
                &mut e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                &ConstGauge::new(n),
            )?;
        }
        if let Some(boot) = boot_time_secs() {
            emit(
                &mut e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                &ConstGauge::new(seconds(boot * 1000 + stat.start_ticks * TICK_MS)),
            )?;
        }
        emit(
            &mut e,
            "process_threads",
            "Number of OS threads in the process.",
            &ConstGauge::new(stat.threads),
        )
    }
}
