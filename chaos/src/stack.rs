//! A whole stack of the chaos run's own, beside the development stack: its own data
//! directory, ports, stripe-sim seed and settings (short poll schedule and expiry), started
//! and broken through the project's own scripts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{script} {args} failed ({status}):\n{tail}")]
    Script {
        script: String,
        args: String,
        status: String,
        tail: String,
    },
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0} is unreadable: {1}")]
    Env(PathBuf, std::io::Error),
    #[error("{0} is missing from the chaos stack's env file")]
    Missing(&'static str),
}

/// Ports of the chaos stack: the development stack's, moved out of its way.
const PORTS: [(&str, &str); 16] = [
    ("PG_PRIMARY_PORT", "6533"),
    ("PG_REPLICA1_PORT", "6534"),
    ("PG_REPLICA2_PORT", "6535"),
    ("KAFKA_PORT", "9192"),
    ("CONNECT_PORT", "9083"),
    ("NGINX_HTTP_PORT", "9000"),
    ("NGINX_PG_PORT", "7432"),
    ("API_1_PORT", "9101"),
    ("API_2_PORT", "9102"),
    ("WEBHOOK_PORT", "9201"),
    ("RECONCILER_PORT", "9301"),
    ("STRIPE_SIM_PORT", "13111"),
    ("PROMETHEUS_PORT", "19090"),
    ("ALERTMANAGER_PORT", "19093"),
    ("EXPORTER_PORT", "19187"),
    ("CDC_PARTITIONS", "4"),
];

/// How the services run in a chaos stack: polls within seconds, expiry within a minute,
/// so that every payment can reach its end inside one run.
pub const EXPIRE_AFTER_MS: u64 = 45_000;
const SERVICE_SETTINGS: [(&str, &str); 11] = [
    ("APP_POLL__FIRST_MS", "2000"),
    ("APP_POLL__FREQUENT_MS", "4000"),
    ("APP_POLL__FREQUENT_FOR_MS", "600000"),
    ("APP_POLL__SLOW_MS", "8000"),
    ("APP_POLL__EXPIRE_AFTER_MS", "45000"),
    ("APP_POLL__CREATE_AFTER_MS", "4000"),
    ("APP_POLL__RATE_PER_SEC", "300"),
    ("APP_POLL__BURST", "100"),
    ("APP_POLL__MAX_IN_FLIGHT", "16"),
    ("APP_CATCHUP_INTERVAL_SECS", "5"),
    ("APP_IDEMPOTENCY_LEASE_SECS", "15"),
];

pub struct ChaosStack {
    root: PathBuf,
    dir: PathBuf,
    seed: u64,
    env: HashMap<String, String>,
}

impl ChaosStack {
    /// The chaos stack's directory inside the workspace's `.stack`.
    pub fn dir(root: &Path) -> PathBuf {
        root.join(".stack").join("chaos")
    }

    /// Deletes the previous run's stack and starts a fresh one.
    pub fn start(root: &Path, seed: u64) -> Result<ChaosStack, StackError> {
        let mut s = ChaosStack {
            root: root.to_path_buf(),
            dir: Self::dir(root),
            seed,
            env: HashMap::new(),
        };
        s.script("scripts/stack.sh", &["clean"])?;
        s.script("scripts/stack.sh", &["up", "--no-demo"])?;
        let file = s.dir.join("env");
        let text = std::fs::read_to_string(&file).map_err(|e| StackError::Env(file.clone(), e))?;
        s.env = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            // The database URLs are single-quoted: shells source the file too.
            .map(|(k, v)| {
                let v = v
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .unwrap_or(v);
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Ok(s)
    }

    pub fn var(&self, key: &'static str) -> Result<&str, StackError> {
        self.env
            .get(key)
            .map(String::as_str)
            .ok_or(StackError::Missing(key))
    }

    /// Runs one of the project's stack scripts against this stack.
    pub fn script(&self, script: &str, args: &[&str]) -> Result<(), StackError> {
        let mut cmd = Command::new(self.root.join(script));
        cmd.args(args)
            .current_dir(&self.root)
            .env("STACK_DIR", &self.dir)
            .env("STRIPE_SIM_SEED", self.seed.to_string());
        for (k, v) in PORTS.iter().chain(SERVICE_SETTINGS.iter()) {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .map_err(|e| StackError::Spawn(script.to_owned(), e))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        Err(StackError::Script {
            script: script.to_owned(),
            args: args.join(" "),
            status: out.status.to_string(),
            tail: lines[lines.len().saturating_sub(15)..].join("\n"),
        })
    }

    /// Stops the stack, keeping its data and logs for a post-mortem.
    pub fn stop(&self) -> Result<(), StackError> {
        self.script("scripts/stack.sh", &["down"])
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// A pause that also gives the stack's processes a moment to notice.
pub async fn settle(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
