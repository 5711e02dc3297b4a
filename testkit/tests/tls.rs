//! TLS on every PostgreSQL connection of the local stack (issue 15, item 3): the nodes take
//! nothing else (pg_hba `hostssl`), the services and Debezium verify the server with
//! `verify-full`, and both drivers (sqlx on the primary, tokio-postgres on the replicas)
//! refuse a server whose certificate does not match the name or comes from another CA.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use paystream_db::{Primary, Replica};
use paystream_testkit::Stack;
use sqlx::Row;

/// A TCP connection to a node, as pg_stat_activity and pg_stat_ssl see it.
#[derive(Debug)]
struct Conn {
    user: String,
    app: String,
    backend: String,
    ssl: bool,
}

/// Every TCP connection to the node `url_key` names (the test's own included).
async fn connections(url_key: &str) -> Vec<Conn> {
    let pool = Stack::get().pool(url_key).await;
    let rows = sqlx::query(
        "SELECT a.usename::text AS usename, a.application_name, a.backend_type, s.ssl
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.client_addr IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_else(|e| panic!("pg_stat_ssl on {url_key}: {e}"));
    pool.close().await;
    rows.iter()
        .map(|r| Conn {
            user: r.get("usename"),
            app: r.get("application_name"),
            backend: r.get("backend_type"),
            ssl: r.get("ssl"),
        })
        .collect()
}

fn assert_all_tls(node: &str, conns: &[Conn]) {
    let plain: Vec<&Conn> = conns.iter().filter(|c| !c.ssl).collect();
    assert!(
        plain.is_empty(),
        "{node}: connections without TLS: {plain:#?}"
    );
}

/// Makes each service use its pools now: readiness pings the primary, and analytics read
/// the replicas (through nginx), so an idle-closed connection is opened again.
async fn wake_services(stack: &Stack) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for key in ["API_1_URL", "API_2_URL", "WEBHOOK_URL", "RECONCILER_URL"] {
        let r = http
            .get(format!("{}/health/ready", stack.var(key)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(
            r.status().is_success(),
            "{key} is not ready: {}",
            r.status()
        );
    }
    for key in ["API_1_URL", "API_2_URL"] {
        // 200, or 503 when the replica lags: either way the answer was read there.
        let r = http
            .get(format!("{}/v1/analytics/summary", stack.var(key)))
            .bearer_auth(stack.var("PAYSTREAM_OPERATOR_KEY"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key} analytics: {e}"));
        assert!(
            r.status().is_success() || r.status().as_u16() == 503,
            "{key} analytics answered {}",
            r.status()
        );
    }
}

#[tokio::test]
async fn every_connection_to_every_node_is_tls() {
    let stack = Stack::get();
    // Who must be seen (application_name, set per service in its URLs by stack.sh), so the
    // check cannot pass on an empty list. Debezium's stream is its walsender.
    let on_primary = ["api-1", "api-2", "webhook", "reconciler"];
    let on_replicas = ["api-1", "api-2"];
    // Another test may restart Connect or a service: give them time to be back.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        wake_services(stack).await;
        let primary = connections("DATABASE_ADMIN_URL").await;
        let replicas = [
            connections("REPLICA_1_URL").await,
            connections("REPLICA_2_URL").await,
        ];
        // Plaintext is never acceptable, not even for a moment: no retry for this.
        assert_all_tls("primary", &primary);
        assert_all_tls("replica1", &replicas[0]);
        assert_all_tls("replica2", &replicas[1]);

        let apps = |conns: &[Conn]| -> BTreeSet<String> {
            conns
                .iter()
                .filter(|c| c.user == "paystream")
                .map(|c| c.app.clone())
                .collect()
        };
        let mut missing: Vec<String> = on_primary
            .iter()
            .filter(|a| !apps(&primary).contains(**a))
            .map(|a| format!("{a} on the primary"))
            .collect();
        let replica_apps: BTreeSet<String> = replicas.iter().flat_map(|r| apps(r)).collect();
        missing.extend(
            on_replicas
                .iter()
                .filter(|a| !replica_apps.contains(**a))
                .map(|a| format!("{a} on a replica")),
        );
        if !primary
            .iter()
            .any(|c| c.user == "debezium" && c.backend == "walsender")
        {
            missing.push("Debezium's walsender on the primary".into());
        }
        // The standbys stream from the primary over TLS too.
        let streams = primary
            .iter()
            .filter(|c| c.user == "replicator" && c.backend == "walsender")
            .count();
        if streams < 2 {
            missing.push(format!("2 replication streams (saw {streams})"));
        }
        if missing.is_empty() {
            // Each replica is reached (the test's own analyst connection at least).
            for (i, r) in replicas.iter().enumerate() {
                assert!(
                    r.iter().any(|c| c.user == "analyst"),
                    "replica{}: no analyst connection: {r:#?}",
                    i + 1
                );
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not connected (all connections seen use TLS): {missing:?}\nprimary: {primary:#?}\nreplicas: {replicas:#?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Which CA a URL made by `with_tls` trusts.
#[derive(Clone, Copy)]
enum Root<'a> {
    /// The stack's, as its URL names it.
    Stack,
    None,
    File(&'a Path),
}

/// `url` (one of the stack's) with another `sslmode` and root certificate.
fn with_tls(url: &str, mode: &str, root: Root<'_>) -> String {
    let (base, query) = url.split_once('?').expect("a URL with TLS parameters");
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.starts_with("sslmode="))
        .filter(|p| matches!(root, Root::Stack) || !p.starts_with("sslrootcert="))
        .map(str::to_owned)
        .collect();
    params.push(format!("sslmode={mode}"));
    if let Root::File(path) = root {
        params.push(format!("sslrootcert={}", path.display()));
    }
    format!("{base}?{}", params.join("&"))
}

/// `url` pointed at `addr` (host:port) instead of its own host and port.
fn via(url: &str, addr: &str) -> String {
    let (scheme_user, rest) = url.split_once('@').expect("user@host in the URL");
    let path = &rest[rest.find('/').expect("a database in the URL")..];
    format!("{scheme_user}@{addr}{path}")
}

fn host_port(url: &str) -> String {
    let rest = url.split_once('@').expect("user@host").1;
    rest[..rest.find('/').expect("a database")].to_owned()
}

/// A TCP relay from 127.0.0.2 (loopback, but not a name the server certificate holds) to
/// `target`: the server is the stack's own, only the name the client checks differs.
async fn relay(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// A CA of nobody's: a server certificate of the stack never chains to it.
fn other_ca() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paystream-other-ca-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Some other CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("ca.crt")
}

/// Connects to the primary with sqlx (through `Primary`): `Ok` or the error's text.
async fn primary(url: &str) -> Result<(), String> {
    let p = Primary::connect(url, 1).await.map_err(|e| e.to_string())?;
    p.ping().await.map_err(|e| e.to_string())
}

/// Reads a replica with tokio-postgres (through `Replica`): `Ok` or the error's text.
async fn replica(url: &str) -> Result<(), String> {
    let r = Replica::new(url, 1).map_err(|e| e.to_string())?;
    paystream_db::replica::runs(&r, 1)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn refused(what: &str, got: Result<(), String>, because: &[&str]) {
    match got {
        Ok(()) => panic!("{what}: connected, but must be refused"),
        Err(e) => assert!(
            because.iter().all(|b| e.contains(b)),
            "{what}: refused, but the error does not say {because:?}: {e}"
        ),
    }
}

#[tokio::test]
async fn a_plaintext_connection_is_refused() {
    let stack = Stack::get();
    let hba = ["no pg_hba.conf entry", "no encryption"];
    for key in ["DATABASE_URL", "DATABASE_ADMIN_URL"] {
        let url = with_tls(stack.var(key), "disable", Root::None);
        refused(
            &format!("{key}, sslmode=disable"),
            primary(&url).await,
            &hba,
        );
    }
    // Through nginx (TCP only: the refusal is the replica's) and straight to a replica.
    for key in ["REPLICA_URL", "REPLICA_1_URL", "REPLICA_2_URL"] {
        let url = with_tls(stack.var(key), "disable", Root::None);
        refused(
            &format!("{key}, sslmode=disable"),
            replica(&url).await,
            &hba,
        );
    }
    // The same URLs as the stack wrote them connect.
    primary(stack.var("DATABASE_URL")).await.unwrap();
    replica(stack.var("REPLICA_URL")).await.unwrap();
}

#[tokio::test]
async fn verify_full_refuses_another_name_or_another_ca() {
    let stack = Stack::get();
    let db = stack.var("DATABASE_URL");
    let rep = stack.var("REPLICA_URL");
    let db_relay = via(db, &relay(host_port(db)).await);
    let rep_relay = via(rep, &relay(host_port(rep)).await);

    // Another name: the chain is good, the name is not the certificate's.
    let name = ["not valid for name \"127.0.0.2\""];
    refused(
        "primary as 127.0.0.2, verify-full",
        primary(&with_tls(&db_relay, "verify-full", Root::Stack)).await,
        &name,
    );
    refused(
        "replica as 127.0.0.2, verify-full",
        replica(&with_tls(&rep_relay, "verify-full", Root::Stack)).await,
        &name,
    );
    // require without a root certificate checks nothing: both drivers connect there.
    primary(&with_tls(&db_relay, "require", Root::None))
        .await
        .unwrap_or_else(|e| panic!("primary as 127.0.0.2, require: {e}"));
    replica(&with_tls(&rep_relay, "require", Root::None))
        .await
        .unwrap_or_else(|e| panic!("replica as 127.0.0.2, require: {e}"));
    // verify-ca checks the chain only: the replicas' driver connects there. The primary's
    // driver (sqlx) trusts the public CAs beside the file, so chain-only checking is
    // refused there before connecting.
    replica(&with_tls(&rep_relay, "verify-ca", Root::Stack))
        .await
        .unwrap_or_else(|e| panic!("replica as 127.0.0.2, verify-ca: {e}"));
    refused(
        "primary as 127.0.0.2, verify-ca",
        primary(&with_tls(&db_relay, "verify-ca", Root::Stack)).await,
        &["only verify-full is safe there"],
    );

    // Another CA: refused under the right name, by every mode that verifies (with a root
    // certificate, require verifies the chain too, as in libpq).
    let other = other_ca();
    for mode in ["verify-full", "verify-ca", "require"] {
        // The primary refuses chain-only checking (require with a file is verify-ca).
        let primary_because: &[&str] = if mode == "verify-full" {
            &["invalid peer certificate", "UnknownIssuer"]
        } else {
            &["only verify-full is safe there"]
        };
        refused(
            &format!("primary, {mode} with another CA"),
            primary(&with_tls(db, mode, Root::File(&other))).await,
            primary_because,
        );
        refused(
            &format!("replica, {mode} with another CA"),
            replica(&with_tls(rep, mode, Root::File(&other))).await,
            &["invalid peer certificate", "UnknownIssuer"],
        );
    }
    std::fs::remove_dir_all(other.parent().unwrap()).unwrap();

    // A CA file that is not there fails when the pool is made, naming the file.
    let missing = Path::new("/nonexistent/ca.crt");
    for got in [
        primary(&with_tls(db, "verify-full", Root::File(missing))).await,
        replica(&with_tls(rep, "verify-full", Root::File(missing))).await,
    ] {
        refused(
            "a missing CA file",
            got,
            &["/nonexistent/ca.crt", "cannot read"],
        );
    }
}
