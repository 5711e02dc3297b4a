//! The integration tests' door to the real stack. `Stack::get()` runs the project's own
//! `scripts/stack.sh up --no-demo` once per test process (it is idempotent and takes a
//! lock, so parallel test processes are safe), then reads `.stack/env`. A component that
//! cannot start fails the test with the script's own message: nothing is ever skipped.

use paystream_db::Primary;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub mod cdc;
pub mod cluster;
pub mod registry;
pub mod sim;

/// A Kafka record as tests read it: key and value.
pub type Record = (Option<Vec<u8>>, Option<Vec<u8>>);

pub struct Stack {
    root: PathBuf,
    env: HashMap<String, String>,
}

static STACK: OnceLock<Stack> = OnceLock::new();

impl Stack {
    /// The running stack, started if needed. Panics with the failing component's message.
    pub fn get() -> &'static Stack {
        STACK.get_or_init(|| {
            run_script(&workspace_root(), "scripts/stack.sh", &["up", "--no-demo"]);
            Stack::from_env_file()
        })
    }

    /// The stack `make up` already started, as described by `.stack/env`.
    pub fn from_env_file() -> Stack {
        let root = workspace_root();
        let env_file = stack_dir(&root).join("env");
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
            panic!(
                "{} is unreadable ({e}): run `make up` first",
                env_file.display()
            )
        });
        let env = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), unquote(v).to_owned()))
            .collect();
        Stack { root, env }
    }

    /// A value from `.stack/env`; a missing key is a broken stack, so it panics.
    pub fn var(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| {
            panic!("{key} is missing from .stack/env: is `make up` older than this test?")
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs one of the project's stack scripts (e.g. `debezium/connect.sh down`), panicking
    /// with its output if it fails.
    pub fn script(&self, script: &str, args: &[&str]) {
        run_script(&self.root, script, args);
    }

    /// A pool for the tests' own SQL: what they assert reads the tables themselves. TLS as
    /// the URL says (`sslmode`, `sslrootcert`), read the way the services read it.
    pub async fn pool(&self, url_key: &str) -> PgPool {
        let options = paystream_db::tls::connect_options(self.var(url_key))
            .unwrap_or_else(|e| panic!("{url_key}: {e}"));
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url_key}: {e}"))
    }

    pub fn kafka_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.var("KAFKA_BROKERS"));
        c
    }

    /// A consumer in a group of its own that commits nothing: the caller assigns it.
    fn own_consumer(&self) -> StreamConsumer {
        self.kafka_config()
            .set("group.id", format!("test-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            // The reconciler's own wait, so the bench's probe times what it sees (the
            // broker answers as soon as data is there; this bounds idle fetches).
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("kafka consumer")
    }

    /// A consumer positioned at the current end of every partition of `topic`, so it
    /// sees exactly what is produced after this call.
    pub fn consumer_at_end(&self, topic: &str) -> StreamConsumer {
        let consumer = self.own_consumer();
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("broker metadata for {topic}: {e}"));
        let partitions = meta
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        assert!(
            partitions > 0,
            "topic {topic} has no partitions: was it created by kafka/broker.sh?"
        );
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
            tpl.add_partition_offset(topic, p, Offset::Offset(high))
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        consumer
    }

    /// Payment `id` as the client sees it through the API (nginx, the client's key),
    /// read every 100 ms until its status is `status`: `Ok` with it then, `Err` with the
    /// last answer once `within` has passed.
    pub async fn await_payment(
        &self,
        id: &str,
        status: &str,
        within: Duration,
    ) -> Result<serde_json::Value, serde_json::Value> {
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + within;
        loop {
            let p: serde_json::Value = http
                .get(format!(
                    "{}/v1/payments/{id}",
                    self.var("PAYSTREAM_API_URL")
                ))
                .bearer_auth(self.var("PAYSTREAM_CLIENT_KEY"))
                .send()
                .await
                .expect("the API answers")
                .json()
                .await
                .expect("JSON");
            if p["status"] == status {
                return Ok(p);
            }
            if std::time::Instant::now() >= deadline {
                return Err(p);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The customer pays the PaymentIntent `intent` at the stack's Stripe (stripe-sim, or
    /// api.stripe.com in test mode) with one of Stripe's test payment methods
    /// (`pm_card_visa`, `pm_card_chargeDeclined`, ...), as a browser would after the API
    /// handed it the intent's `client_secret`: without a browser, server-side, with the
    /// secret key, which test mode accepts. `return_url`: an intent open to the
    /// dashboard's payment methods may redirect, and Stripe refuses to confirm one without
    /// it. Returns Stripe's answer: the intent, or an error carrying it.
    pub async fn pay(&self, intent: &str, payment_method: &str) -> serde_json::Value {
        reqwest::Client::new()
            .post(format!(
                "{}/v1/payment_intents/{intent}/confirm",
                self.var("STRIPE_API_BASE")
            ))
            .bearer_auth(self.var("STRIPE_SECRET_KEY"))
            .header("Stripe-Version", paystream_stripe::STRIPE_VERSION)
            .form(&[
                ("payment_method", payment_method),
                ("return_url", "https://example.com/paystream/return"),
            ])
            .send()
            .await
            .expect("Stripe answers")
            .json()
            .await
            .expect("JSON")
    }

    /// Creates a topic (tests give their reconcilers their own output topic).
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            self.kafka_config().create().expect("kafka admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    /// Every message of `topic` from the beginning, until `enough` says so or nothing
    /// new came for `quiet`.
    pub async fn read_topic(
        &self,
        topic: &str,
        quiet: Duration,
        enough: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        use rdkafka::Message;
        let consumer = self.own_consumer();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partition_count(topic) as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        while !enough(&out) {
            match tokio::time::timeout(quiet, consumer.recv()).await {
                Ok(Ok(m)) => {
                    out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)))
                }
                Ok(Err(e)) => panic!("reading {topic}: {e}"),
                Err(_) => break,
            }
        }
        out
    }

    /// Partition count as the broker reports it.
    pub fn partition_count(&self, topic: &str) -> usize {
        let c: BaseConsumer = self.kafka_config().create().expect("kafka client");
        let meta = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        meta.topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0)
    }
}

/// A primary that never answers (nothing listens on port 1): for "the database is down"
/// tests.
pub fn unreachable_primary() -> Primary {
    Primary::from_pool(
        PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy("postgres://paystream:x@127.0.0.1:1/paystream")
            .expect("a well-formed URL"),
    )
}

/// The value of one series (its name and labels exactly as rendered, e.g.
/// `x_count{phase="pool"}`) in a Prometheus text page; panics, showing the page, when the
/// series is missing or its value does not parse.
pub fn sample<T: std::str::FromStr>(text: &str, series: &str) -> T {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// A value of `.stack/env` as a shell that sources the file sees it: values holding `&`
/// (the database URLs) are single-quoted there.
fn unquote(v: &str) -> &str {
    v.strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(v)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn stack_dir(root: &Path) -> PathBuf {
    std::env::var_os("STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".stack"))
}

fn run_script(root: &Path, script: &str, args: &[&str]) {
    let out = Command::new(root.join(script))
        .args(args)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{script} {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.join("\n")
        );
    }
}
