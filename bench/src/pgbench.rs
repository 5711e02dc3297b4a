//! The floors: PostgreSQL's own `pgbench` running a stage's SQL at the same concurrency.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

/// Transactions per second of `script` at `clients`, for `length`. `vars` become `-D`s.
pub async fn tps(
    url: &str,
    script: &Path,
    clients: usize,
    length: Duration,
    vars: &[(&str, String)],
) -> anyhow::Result<f64> {
    let mut cmd = tokio::process::Command::new(pgbench_bin());
    cmd.arg("-n")
        .arg("-M")
        .arg("prepared")
        .arg("-f")
        .arg(script)
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(length.as_secs().max(1).to_string())
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.arg("-D").arg(format!("{k}={v}"));
    }
    let out = cmd.output().await.context("cannot run pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench {} failed: {}{}",
            script.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "tps = 1234.567890 (without initial connection time)"
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

fn pgbench_bin() -> String {
    let pg = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{pg}/pgbench")
}
