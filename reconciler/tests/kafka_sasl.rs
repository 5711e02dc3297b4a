//! The reconciler's Kafka settings against a real broker requiring SASL: tansu 0.6 with
//! `--authentication`, which takes SCRAM-SHA-512 credentials. The client is built by the
//! same `KafkaConfig::client_config` the workers use, from properties as the environment
//! gives them. TLS is not tested against a broker here: tansu 0.6.0's CLI declares
//! `--cert` and `--key` in one exclusive group, so no TLS listener can be started
//! (the TLS build of librdkafka is checked in `config`'s unit tests).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paystream_reconciler::config::KafkaConfig;
use paystream_testkit::registry::tansu_bin;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

struct Broker {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn broker(dir: &PathBuf, port: u16, authentication: bool) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(tansu_bin());
    cmd.current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if authentication {
        cmd.arg("--authentication");
    }
    let mut child = cmd.spawn().expect("tansu starts");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tansu did not listen on {port}");
}

fn cli(args: &[&str]) {
    let out = Command::new(tansu_bin())
        .args(args)
        .output()
        .expect("tansu runs");
    assert!(
        out.status.success(),
        "tansu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A broker that requires SCRAM, holding user `paystream` and topic `sasl-check`. tansu's
/// own CLI cannot authenticate, so the user and topic are made before authentication is
/// turned on (both live in the broker's storage).
fn sasl_broker() -> Broker {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("paystream-sasl-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut open = broker(&dir, port, false);
    cli(&["user", "create", "--broker", &url, "paystream", "s3cret-pw"]);
    cli(&[
        "topic",
        "create",
        "--broker",
        &url,
        "--partitions",
        "1",
        "sasl-check",
    ]);
    let _ = open.kill();
    let _ = open.wait();
    Broker {
        child: broker(&dir, port, true),
        addr: format!("127.0.0.1:{port}"),
        dir,
    }
}

fn config(brokers: &str, properties: serde_json::Value) -> KafkaConfig {
    serde_json::from_value(serde_json::json!({"brokers": brokers, "properties": properties}))
        .unwrap()
}

/// As `APP_KAFKA__PROPERTIES__...` variables would give them.
fn scram(brokers: &str, password: &str) -> KafkaConfig {
    config(
        brokers,
        serde_json::json!({
            "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SASL_MECHANISMS": "SCRAM-SHA-512",
            "SASL_USERNAME": "paystream",
            "SASL_PASSWORD": password,
            "MESSAGE_TIMEOUT_MS": "5000",
        }),
    )
}

async fn produce(cfg: &KafkaConfig) -> Result<(), String> {
    let producer: FutureProducer = cfg.client_config().unwrap().create().unwrap();
    producer
        .send(
            FutureRecord::to("sasl-check")
                .key("k")
                .payload("authenticated"),
            Duration::from_secs(5),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

#[tokio::test]
async fn scram_credentials_from_properties_reach_a_broker_that_requires_them() {
    let b = sasl_broker();

    produce(&scram(&b.addr, "s3cret-pw"))
        .await
        .expect("the right credentials produce");
    let consumer: BaseConsumer = scram(&b.addr, "s3cret-pw")
        .client_config()
        .unwrap()
        .set("group.id", "sasl-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["sasl-check"]).unwrap();
    let mut got = None;
    for _ in 0..300 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            got = m.payload().map(|p| String::from_utf8_lossy(p).into_owned());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some("authenticated"));

    let refused = produce(&scram(&b.addr, "wrong")).await;
    assert!(refused.is_err(), "a wrong password must not produce");
    let anonymous = produce(&config(
        &b.addr,
        serde_json::json!({"message.timeout.ms": "5000"}),
    ))
    .await;
    assert!(anonymous.is_err(), "no credentials must not produce");
}
