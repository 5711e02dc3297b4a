//! A closed-loop load generator: `clients` tasks each send one request at a time for a
//! fixed duration. Every latency is kept, so percentiles are exact.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub errors: u64,
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// Runs `request(client, n)` in a loop on `clients` tasks for `length`; a request
/// returning `false` counts as an error.
pub async fn closed_loop<F, Fut>(clients: usize, length: Duration, request: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let request = request.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                if request(client, n).await {
                    latencies.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let took = started.elapsed();
    all.sort_unstable();
    let at = |pct: usize| {
        all.get((all.len() * pct).div_ceil(100).max(1) - 1)
            .copied()
            .unwrap_or_default()
    };
    Run {
        errors: errors.load(Ordering::Relaxed),
        per_sec: all.len() as f64 / took.as_secs_f64(),
        p50: at(50),
        p99: at(99),
    }
}

/// The run with the median rate of several.
pub fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    runs.get(runs.len() / 2).copied().unwrap_or_default()
}
