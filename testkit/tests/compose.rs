//! docker-compose.yml cannot be started here (no Docker engine), so it is checked against
//! what the local stack knows works: every Rust service loads its config from exactly
//! the environment compose gives it, and each setting the official images are known to
//! need (their own docs; the issue that found them) is there. Needs python3 with PyYAML
//! to read the YAML (`.ci/run` installs it); a missing one is a failed test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// The compose file with YAML anchors and merge keys resolved.
fn compose() -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(root().join("docker-compose.yml"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reading docker-compose.yml (python3 with PyYAML): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// A service's environment as compose would pass it, `${VAR...}` interpolated with a
/// stand-in value (or the default it names).
fn env_of(c: &Value, service: &str) -> HashMap<String, String> {
    let env = c["services"][service]["environment"]
        .as_object()
        .unwrap_or_else(|| panic!("{service} has an environment map"));
    env.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => interpolate(s),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("closed ${") + i;
        let inner = &rest[i + 2..end];
        out.push_str(match inner.split_once(":-") {
            Some((_, default)) => default,
            None => "set",
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_rust_service_loads_its_config_from_the_compose_environment() {
    use paystream_service::config::load_from_vars;
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for name in [
        "postgres-primary",
        "postgres-replica-1",
        "postgres-replica-2",
        "migrate",
        "kafka",
        "kafka-topics",
        "connect",
        "connect-register",
        "nginx",
        "api-1",
        "api-2",
        "webhook",
        "reconciler",
        "stripe-sim",
        "schema-registry",
    ] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml lacks {name}"
        );
    }
    for api in ["api-1", "api-2"] {
        let cfg: paystream_api::config::ApiConfig =
            load_from_vars(env_of(&c, api)).unwrap_or_else(|e| panic!("{api}: {e}"));
        assert!(
            cfg.replica.is_some(),
            "{api}: reports and analytics need the replicas"
        );
    }
    let webhook: paystream_webhook::config::WebhookConfig =
        load_from_vars(env_of(&c, "webhook")).unwrap_or_else(|e| panic!("webhook: {e}"));
    assert!(
        !webhook.webhook.secrets.trim().is_empty(),
        "webhook: APP_WEBHOOK__SECRETS"
    );
    let reconciler: paystream_reconciler::config::ReconcilerConfig =
        load_from_vars(env_of(&c, "reconciler")).unwrap_or_else(|e| panic!("reconciler: {e}"));
    // The registry the reconciler registers with is the compose one, on its listener, and
    // the reconciler waits for it (a start without it fails).
    let registry = reconciler
        .kafka
        .schema_registry
        .expect("reconciler: APP_KAFKA__SCHEMA_REGISTRY__URL");
    let listener = c["services"]["schema-registry"]["environment"]["SCHEMA_REGISTRY_LISTENERS"]
        .as_str()
        .expect("the registry's listener");
    let port = |url: &str| {
        url.rsplit_once(':')
            .map(|(_, p)| p.trim_end_matches('/').to_owned())
    };
    assert_eq!(
        port(&registry.url),
        port(listener),
        "{} vs {listener}",
        registry.url
    );
    assert!(
        registry.url.contains("//schema-registry:"),
        "{}",
        registry.url
    );
    assert!(
        c["services"]["reconciler"]["depends_on"]["schema-registry"].is_object(),
        "the reconciler waits for the registry"
    );
    assert!(
        c["services"]["reconciler"]["depends_on"]["migrate"].is_object(),
        "its own depends_on replaces the shared one: migrate must stay"
    );
}

/// Compose's command line for the primary.
fn primary_command(c: &Value) -> &str {
    c["services"]["postgres-primary"]["command"]
        .as_str()
        .unwrap()
}

/// The replicas' entrypoint script, its continued lines joined: their command line.
fn replica_command() -> String {
    std::fs::read_to_string(root().join("postgres-replication/docker-replica.sh"))
        .unwrap()
        .replace("\\\n", " ")
}

/// `-c name=value` settings of a postgres command line.
fn pg_flags(command: &str) -> HashMap<String, String> {
    command
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "-c")
        .filter_map(|w| {
            let (k, v) = w[1].split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The numeric ones of `pg_flags`.
fn pg_settings(command: &str) -> HashMap<String, i64> {
    pg_flags(command)
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect()
}

/// `name = value` settings of one of the local stack's postgresql.conf includes.
fn conf_settings(file: &str) -> HashMap<String, String> {
    std::fs::read_to_string(root().join("postgres-replication").join(file))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split('#').next()?.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('\'').to_owned()))
        })
        .collect()
}

/// Compose's postgres runs as the local stack's does (the settings the benchmarks were
/// measured with: memory, WAL, checkpoints, connections), apart from what only the local
/// stack needs: its addresses, TLS files and logging.
#[test]
fn compose_postgres_runs_with_the_local_stacks_settings() {
    let c = compose();
    let primary = pg_flags(primary_command(&c));
    let local_only = [
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "ssl",
        "ssl_cert_file",
        "ssl_key_file",
        "password_encryption",
        "log_line_prefix",
        "log_min_duration_statement",
    ];
    let local = conf_settings("primary.conf");
    assert!(local.contains_key("shared_buffers"), "{local:?}");
    for (k, v) in &local {
        if !local_only.contains(&k.as_str()) {
            assert_eq!(primary.get(k), Some(v), "primary's {k}");
        }
    }
    let replica_script = replica_command();
    let standby = pg_flags(&replica_script);
    let local = conf_settings("replica.conf");
    for k in [
        "shared_buffers",
        "max_connections",
        "hot_standby_feedback",
        "max_standby_streaming_delay",
        "max_wal_senders",
        "max_replication_slots",
    ] {
        assert_eq!(standby.get(k), local.get(k), "replicas' {k}");
    }
}

#[test]
fn the_standbys_have_at_least_the_primarys_limits_and_healthchecks_that_can_pass() {
    let c = compose();
    let primary = pg_settings(primary_command(&c));
    let replica_script = replica_command();
    let standby = pg_settings(&replica_script);
    // PostgreSQL refuses to start a hot standby with less of these than its primary.
    for key in [
        "max_connections",
        "max_wal_senders",
        "max_worker_processes",
        "max_prepared_transactions",
        "max_locks_per_transaction",
    ] {
        if let Some(p) = primary.get(key) {
            let s = standby.get(key).copied().unwrap_or(0);
            assert!(s >= *p, "{key}: primary {p}, standbys {s}");
        }
    }
    for (name, svc) in c["services"].as_object().unwrap() {
        let check = svc["healthcheck"]["test"].to_string();
        // A role other than the image's superuser, over TCP, authenticates with scram.
        if check.contains("psql") && check.contains("-h") {
            assert!(check.contains("PGPASSWORD"), "{name}: {check}");
        }
        // During the image's init a server answers on the socket only.
        if check.contains("pg_isready") && name == "postgres-primary" {
            assert!(check.contains("127.0.0.1"), "{name}: {check}");
        }
    }
}

#[test]
fn ports_listeners_mounts_and_the_build_context_agree() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    // Kafka: the HOST listener's advertised port is the one published on the host.
    let kafka = &services["kafka"];
    let advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap();
    let host_port = advertised
        .split(',')
        .find_map(|l| l.strip_prefix("HOST://"))
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("a HOST listener");
    let published: Vec<String> = kafka["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(
        published
            .iter()
            .any(|p| p.ends_with(&format!(":{host_port}:{host_port}"))),
        "advertised {host_port}, published {published:?}"
    );
    // Connect: the image writes offset.flush.interval.ms from this variable only.
    // The registry stores schemas in a topic of the one broker.
    let registry = &services["schema-registry"]["environment"];
    assert_eq!(
        registry["SCHEMA_REGISTRY_KAFKASTORE_TOPIC_REPLICATION_FACTOR"],
        "1"
    );
    assert!(
        registry["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]
            .as_str()
            .is_some_and(|b| b.ends_with("kafka:9092")),
        "the registry reaches the broker's internal listener"
    );
    let connect = &services["connect"]["environment"];
    assert!(connect.get("CONNECT_OFFSET_FLUSH_INTERVAL_MS").is_none());
    assert!(connect.get("OFFSET_FLUSH_INTERVAL_MS").is_some());
    // Every file or folder mounted from the repository exists.
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if let Some(rel) = src.strip_prefix("./") {
                assert!(
                    root().join(rel).exists(),
                    "{name} mounts {src}, which is missing"
                );
            }
        }
    }
    // stripe-sim's endpoint is subscribed to what the receiver reads, as the stack's is.
    let sim = services["stripe-sim"]["command"].to_string();
    assert!(
        sim.contains("--enabled-events") && sim.contains("paystream-webhook enabled-events"),
        "stripe-sim's command: {sim}"
    );
    // nginx: the official image has the stream module compiled in; nothing may load it.
    let conf = std::fs::read_to_string(root().join("nginx/nginx.conf")).unwrap();
    assert!(
        !conf
            .lines()
            .any(|l| l.trim_start().starts_with("load_module")),
        "nginx.conf loads a module itself"
    );
    let entry = std::fs::read_to_string(root().join("nginx/docker-entrypoint.sh")).unwrap();
    assert!(
        entry.contains("NGINX_LOAD_STREAM=\n") || entry.contains("NGINX_LOAD_STREAM=''"),
        "the container loads no module"
    );
    // The image builds what Cargo.lock says.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked"));
    // The build context leaves out the stack's secrets and data, and build output.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for must in [".stack", "target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore lacks {must}"
        );
    }
}

/// The port a compose service listens on inside its container: its `APP_LISTEN_ADDR`,
/// an `--addr`/`--listen` argument, or the container side of its published port.
fn listen_port(svc: &Value) -> Option<String> {
    let port_of = |addr: &str| addr.rsplit_once(':').map(|(_, p)| p.to_owned());
    if let Some(addr) = svc["environment"]["APP_LISTEN_ADDR"].as_str() {
        return port_of(addr);
    }
    let args: Vec<&str> = svc["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(w) = args
        .windows(2)
        .find(|w| w[0] == "--addr" || w[0] == "--listen")
    {
        return port_of(w[1]);
    }
    svc["ports"]
        .as_array()?
        .first()?
        .as_str()
        .and_then(|p| p.rsplit(':').next().map(str::to_owned))
}

#[test]
fn prometheus_scrapes_compose_services_on_their_ports_with_the_local_stacks_jobs() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    let dir = root().join("monitoring/prometheus/compose-targets");
    let config = std::fs::read_to_string(root().join("monitoring/prometheus/prometheus.yml"))
        .expect("prometheus.yml");
    let jobs: Vec<&str> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- job_name: "))
        .collect();
    assert!(jobs.len() >= 7, "jobs: {jobs:?}");
    let local = std::fs::read_to_string(root().join("monitoring/monitoring.sh")).unwrap();
    for job in &jobs {
        assert!(
            config.contains(&format!("files: [targets/{job}.yml]")),
            "{job} reads targets/{job}.yml"
        );
        assert!(
            local.contains(&format!("targets {job}")),
            "monitoring.sh writes no targets for {job}"
        );
        let file = dir.join(format!("{job}.yml"));
        let out = Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            ])
            .arg(&file)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "reading {}", file.display());
        let groups: Value = serde_json::from_slice(&out.stdout).unwrap();
        let groups = groups.as_array().expect("a list of target groups");
        assert!(!groups.is_empty(), "{job}: no targets");
        for g in groups {
            for t in g["targets"].as_array().expect("targets") {
                let (host, port) = t.as_str().unwrap().rsplit_once(':').unwrap();
                let svc = services
                    .get(host)
                    .unwrap_or_else(|| panic!("{job} scrapes {host}, not a compose service"));
                assert_eq!(
                    listen_port(svc).as_deref(),
                    Some(port),
                    "{job} scrapes {host}:{port}"
                );
            }
        }
    }
    let grafana = std::fs::read_to_string(
        root().join("monitoring/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    let prometheus_port = listen_port(&services["prometheus"]).expect("prometheus's port");
    assert!(
        grafana.contains(&format!("url: http://prometheus:{prometheus_port}")),
        "Grafana's data source is compose's Prometheus: {grafana}"
    );
    // Every dashboard panel names the provisioned data source.
    let uid = "uid: paystream-prometheus";
    assert!(grafana.contains(uid), "{grafana}");
    for d in ["payment-flow", "pipeline-health"] {
        let text =
            std::fs::read_to_string(root().join(format!("monitoring/grafana/dashboards/{d}.json")))
                .unwrap();
        let dash: Value = serde_json::from_str(&text).unwrap();
        for p in dash["panels"].as_array().unwrap() {
            assert_eq!(
                p["datasource"]["uid"], "paystream-prometheus",
                "{d}: {}",
                p["title"]
            );
        }
    }
}
