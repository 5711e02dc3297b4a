//! A test's own schema registry: Karapace (`third_party/karapace`, installed by
//! `scripts/install.sh`) on a private tansu broker, both on free ports, in a fresh
//! temporary directory. Nothing is shared with the stack or with other tests; dropping the
//! [`SchemaRegistry`] kills both processes and removes the directory.
//!
//! A missing binary fails the test with the install script's name: nothing is skipped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long Karapace may take to elect itself and read `_schemas` (2-3 s as a rule).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long tansu may take to open its port (well under a second as a rule).
const BROKER_TIMEOUT: Duration = Duration::from_secs(20);

pub struct SchemaRegistry {
    /// The registry's base URL, `http://127.0.0.1:PORT` (Confluent Schema Registry API).
    pub url: String,
    /// The private broker's bootstrap address, `127.0.0.1:PORT`: Karapace keeps its
    /// schemas there (topic `_schemas`), and a test may produce there too.
    pub brokers: String,
    dir: PathBuf,
    tansu: Option<Child>,
    karapace: Option<Child>,
}

/// Starts a broker and a registry of the test's own and waits until the registry takes
/// requests: it has read `_schemas` and is its group's primary (so it accepts writes).
/// Panics, with the tail of the failing process's log, if either does not come up.
pub async fn start_schema_registry() -> SchemaRegistry {
    let tansu_bin = tansu_bin();
    let karapace_bin = tool_path(
        "KARAPACE_BIN",
        "karapace-3.15.2/bin/karapace",
        "Karapace 3.15.2 (third_party/karapace)",
    );

    let dir = std::env::temp_dir().join(format!("paystream-registry-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let broker_port = free_port();
    let registry_port = free_port();
    // From here on a panic drops the registry, which stops whatever was started.
    let mut registry = SchemaRegistry {
        url: format!("http://127.0.0.1:{registry_port}"),
        brokers: format!("127.0.0.1:{broker_port}"),
        dir,
        tansu: None,
        karapace: None,
    };

    // tansu reads a .env in its working directory and CLUSTER_ID, SCHEMA_REGISTRY, ... from
    // the environment: an empty .env and a cleaned environment keep stray settings out.
    std::fs::write(registry.dir.join(".env"), "").expect("tansu .env");
    let listener = format!("tcp://{}", registry.brokers);
    let mut tansu = Command::new(&tansu_bin);
    tansu
        .args(["broker", "--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .args(["--storage-engine", "sqlite://tansu.db"]);
    for var in [
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        tansu.env_remove(var);
    }
    registry.tansu = Some(registry.spawn(tansu, "tansu.log"));
    registry.wait_for_broker(broker_port).await;

    let config = json!({
        "bootstrap_uri": registry.brokers,
        "host": "127.0.0.1",
        "port": registry_port,
        "advertised_hostname": "127.0.0.1",
        "karapace_registry": true,
        "karapace_rest": false,
        "topic_name": "_schemas",
        "replication_factor": 1,
        "compatibility": "BACKWARD",
        "log_level": "INFO",
    });
    let config_file = registry.dir.join("karapace.json");
    std::fs::write(&config_file, config.to_string()).expect("karapace.json");
    let mut karapace = Command::new(&karapace_bin);
    karapace.arg(&config_file);
    // Every KARAPACE_* variable overrides the configuration file: only ours count. A group
    // id of its own on every start: Karapace never leaves its group, and tansu would keep a
    // departed member of the same group for its session timeout, electing no primary.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("KARAPACE_") {
            karapace.env_remove(var);
        }
    }
    karapace
        .env(
            "KARAPACE_GROUP_ID",
            format!("schema-registry-{}", uuid::Uuid::now_v7()),
        )
        .env_remove("SENTRY_DSN");
    registry.karapace = Some(registry.spawn(karapace, "karapace.log"));
    registry.wait_until_ready().await;
    registry
}

impl SchemaRegistry {
    fn spawn(&self, mut cmd: Command, log: &str) -> Child {
        let out = File::create(self.dir.join(log)).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
    }

    async fn wait_for_broker(&mut self, port: u16) {
        let deadline = Instant::now() + BROKER_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(status) = exited(&mut self.tansu) {
                panic!(
                    "tansu exited ({status}) before opening {}:\n{}",
                    self.brokers,
                    self.log_tail("tansu.log")
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "tansu did not open {} within {BROKER_TIMEOUT:?}:\n{}",
                    self.brokers,
                    self.log_tail("tansu.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_until_ready(&mut self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let health = format!("{}/_health", self.url);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match http.get(&health).send().await {
                Ok(res) => match res.json::<Value>().await {
                    Ok(body)
                        if body["schema_registry_ready"] == true
                            && body["schema_registry_is_primary"] == true =>
                    {
                        return;
                    }
                    Ok(body) => body.to_string(),
                    Err(e) => format!("unreadable answer: {e}"),
                },
                Err(e) => e.to_string(),
            };
            if let Some(status) = exited(&mut self.karapace) {
                panic!(
                    "Karapace exited ({status}) before it was ready:\n{}",
                    self.log_tail("karapace.log")
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "Karapace was not ready within {READY_TIMEOUT:?} (last /_health: {last}):\n{}",
                    self.log_tail("karapace.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last 40 lines of a log in the registry's directory.
    fn log_tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        for child in [self.karapace.take(), self.tansu.take()]
            .into_iter()
            .flatten()
        {
            stop(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The exit status of a process that has exited, `None` while it runs.
fn exited(child: &mut Option<Child>) -> Option<std::process::ExitStatus> {
    child.as_mut().and_then(|c| c.try_wait().ok().flatten())
}

/// A port free right now (the OS's choice; a race with another process is possible but
/// shows as a bind error in the log).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The local broker `scripts/install.sh` builds (`TANSU_BIN` there, in `scripts/lib.sh`).
pub fn tansu_bin() -> PathBuf {
    tool_path(
        "TANSU_BIN",
        "tansu-0.6.0-paystream3/bin/tansu",
        "tansu 0.6.0 with third_party/tansu's patches (the local broker)",
    )
}

/// `$VAR` if set, else the tool's place in the cache `scripts/install.sh` fills
/// (`$PAYSTREAM_CACHE`, by default `${XDG_CACHE_HOME:-$HOME/.cache}/paystream`).
fn tool_path(var: &str, in_cache: &str, what: &str) -> PathBuf {
    let path = match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => cache_dir().join(in_cache),
    };
    assert!(
        is_executable(&path),
        "{what} is not installed at {} ({var}): run scripts/install.sh",
        path.display()
    );
    path
}

fn cache_dir() -> PathBuf {
    let nonempty = |v: &str| std::env::var_os(v).filter(|v| !v.is_empty());
    if let Some(dir) = nonempty("PAYSTREAM_CACHE") {
        return PathBuf::from(dir);
    }
    let base = nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("neither PAYSTREAM_CACHE nor XDG_CACHE_HOME nor HOME is set");
    base.join("paystream")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
