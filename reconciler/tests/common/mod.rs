//! What the reconciler's test files share: reconcilers as real processes (the built
//! binary) in a consumer group and with an output topic of each test's own.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use paystream_testkit::sim::{SIM_KEY, SimWorld};
use uuid::Uuid;

pub const EXPIRE_AFTER_MS: u64 = 25_000;

/// One reconciler process.
pub struct Reconciler {
    pub name: String,
    pub child: Child,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Reconciler {
    pub fn start(name: &str, env: Vec<(String, String)>) -> Reconciler {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_paystream-reconciler"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("APP_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("APP_INSTANCE", name)
            .env("APP_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the reconciler binary");
        Reconciler {
            name: name.into(),
            child,
            port,
            env,
            log,
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn restart(&mut self) {
        *self = Reconciler::start(&self.name, self.env.clone());
    }

    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(s) = self.child.try_wait().expect("wait") {
                assert!(
                    s.success(),
                    "{} exited {s} on SIGTERM; see {}",
                    self.name,
                    self.log.display()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not stop within 30 s of SIGTERM", self.name);
    }

    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Until it holds state for at least one partition (a group join plus a state load).
    pub async fn wait_loaded(&mut self) {
        self.wait_metrics("loaded no partition", |m| m.contains("reconciler_pending{"))
            .await;
    }

    /// Until its refund worker holds at least one partition too. A partition new to a
    /// group starts at the topic's end, so a refund resolved before that is never
    /// published by this group.
    pub async fn wait_refunds_loaded(&mut self) {
        self.wait_metrics("loaded no refund partition", |m| {
            m.lines()
                .filter_map(|l| l.strip_prefix("reconciler_refund_partitions "))
                .any(|v| v.parse::<i64>().is_ok_and(|n| n > 0))
        })
        .await;
    }

    async fn wait_metrics(&mut self, failure: &str, ready: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(s) = self.child.try_wait().expect("wait") {
                panic!("{} exited {s}; see {}", self.name, self.log.display());
            }
            if ready(&self.metrics().await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} {failure} in 60 s; see {}",
            self.name,
            self.log.display()
        );
    }
}

impl Drop for Reconciler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reconciler group of a test's own: its consumer group, output topic and Stripe.
pub struct Group {
    pub env: Vec<(String, String)>,
    pub status_topic: String,
}

pub async fn group(stack: &Stack, world: &SimWorld) -> Group {
    let tag = Uuid::now_v7().simple().to_string();
    let status_topic = format!("payment-status-update-test-{tag}");
    stack.create_topic(&status_topic, 4).await;
    let env = [
        ("APP_DATABASE__URL", stack.var("DATABASE_URL")),
        ("APP_REPLICA__URL", stack.var("REPLICA_URL")),
        ("APP_KAFKA__BROKERS", stack.var("KAFKA_BROKERS")),
        ("APP_KAFKA__GROUP_ID", &format!("reconciler-test-{tag}")),
        ("APP_KAFKA__STATUS_TOPIC", &status_topic),
        ("APP_STRIPE__API_BASE", &world.sim),
        ("APP_STRIPE__SECRET_KEY", SIM_KEY),
        ("APP_POLL__FIRST_MS", "1000"),
        ("APP_POLL__FREQUENT_MS", "3000"),
        ("APP_POLL__FREQUENT_FOR_MS", "60000"),
        ("APP_POLL__SLOW_MS", "5000"),
        ("APP_POLL__EXPIRE_AFTER_MS", &EXPIRE_AFTER_MS.to_string()),
        ("APP_POLL__CREATE_AFTER_MS", "3000"),
        ("APP_POLL__RATE_PER_SEC", "400"),
        ("APP_POLL__BURST", "100"),
        ("APP_POLL__MAX_IN_FLIGHT", "16"),
        // Test reconcilers share the database with the stack and other tests, whose
        // payments their own Stripe does not know: they must never flag those.
        ("APP_POLL__MISSES_BEFORE_ATTENTION", "255"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Group { env, status_topic }
}
