//! The local stack is real: replication, nginx, Debezium and the broker, checked end to end.

use std::collections::HashSet;
use std::time::Duration;

use paystream_db::Primary;
use paystream_db::keys::{self, Role};
use paystream_db::payments;
use paystream_testkit::Stack;
use paystream_testkit::cdc::{self, Record};
use paystream_testkit::cluster::ScratchCluster;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

const CLIENT: &str = "00000000-0000-7000-8000-0000000000aa";

/// The Connect restart test takes this for writing; tests that need Connect running
/// take it for reading, so they never see it stopped half-way.
static CONNECT: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn insert_payment(db: &PgPool, key: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO payments (id, client_id, idempotency_key, amount, currency) VALUES ($1, $2::uuid, $3, 1250, 'usd')")
        .bind(id)
        .bind(CLIENT)
        .bind(key)
        .execute(db)
        .await
        .expect("insert on the primary");
    id
}

async fn wait_visible(replica: &PgPool, id: Uuid) -> bool {
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE id = $1")
            .bind(id)
            .fetch_one(replica)
            .await
            .expect("query replica");
        if n == 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_row_written_on_the_primary_reaches_both_replicas() {
    let stack = Stack::get();
    let primary = stack.pool("DATABASE_URL").await;
    let id = insert_payment(&primary, &format!("repl-{}", Uuid::now_v7())).await;
    for key in ["REPLICA_1_URL", "REPLICA_2_URL"] {
        let replica = stack.pool(key).await;
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&replica)
            .await
            .unwrap();
        assert!(standby, "{key} is not a standby");
        assert!(
            wait_visible(&replica, id).await,
            "payment {id} did not reach {key} within 10 s"
        );
    }
    let streaming: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            .fetch_one(&stack.pool("DATABASE_ADMIN_URL").await)
            .await
            .unwrap();
    assert!(
        streaming >= 2,
        "the primary streams to {streaming} replicas, expected 2"
    );
}

#[tokio::test]
async fn the_nginx_replica_port_serves_standbys_only_and_refuses_writes() {
    let stack = Stack::get();
    let primary = stack.pool("DATABASE_URL").await;
    let id = insert_payment(&primary, &format!("nginx-{}", Uuid::now_v7())).await;
    let via_nginx = stack.pool("REPLICA_URL").await;
    // Several connections held open at once: nginx balances by least connections, and
    // other services (the reconciler) hold connections of their own to one replica.
    let mut servers = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut conn = sqlx::pool::PoolConnection::detach(
            via_nginx.acquire().await.expect("connect through nginx"),
        );
        let row = sqlx::query("SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(
            row.get::<bool, _>("standby"),
            "nginx's replica port reached a primary"
        );
        servers.insert(row.get::<i32, _>("port"));
        held.push(conn);
    }
    let expected: HashSet<i32> = ["REPLICA_1_URL", "REPLICA_2_URL"]
        .iter()
        .map(|k| {
            stack
                .var(k)
                .rsplit(':')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        servers, expected,
        "nginx should balance across both replicas"
    );
    assert!(
        wait_visible(&via_nginx, id).await,
        "payment not visible through nginx"
    );
    let write = sqlx::query("UPDATE payments SET amount = amount WHERE id = $1")
        .bind(id)
        .execute(&via_nginx)
        .await;
    let err = write
        .expect_err("a write through the replica port must fail")
        .to_string();
    assert!(
        err.contains("read-only") || err.contains("permission denied"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn the_debezium_task_is_running() {
    let stack = Stack::get();
    let _running = CONNECT.read().await;
    let url = format!(
        "{}/connectors/{}/status",
        stack.var("KAFKA_CONNECT_URL"),
        stack.var("DEBEZIUM_CONNECTOR")
    );
    let status: Value = reqwest::get(&url)
        .await
        .expect("Connect REST")
        .json()
        .await
        .expect("JSON status");
    assert_eq!(status["connector"]["state"], "RUNNING", "{status}");
    let tasks = status["tasks"].as_array().expect("tasks");
    assert!(!tasks.is_empty(), "no tasks: {status}");
    assert!(
        tasks.iter().all(|t| t["state"] == "RUNNING"),
        "a task is not RUNNING: {status}"
    );
}

#[tokio::test]
async fn topics_exist_with_the_designed_partition_counts() {
    let stack = Stack::get();
    for topic in [stack.var("CDC_TOPIC"), stack.var("STATUS_TOPIC")] {
        let n = stack.partition_count(topic);
        assert!(
            n > 1,
            "{topic} has {n} partition(s): reconcilers could not scale out"
        );
    }
}

#[tokio::test]
async fn insert_update_delete_arrive_as_debezium_envelopes() {
    let stack = Stack::get();
    let _running = CONNECT.read().await;
    let consumer = stack.consumer_at_end(stack.var("CDC_TOPIC"));
    let primary = stack.pool("DATABASE_URL").await;
    let id = insert_payment(&primary, &format!("cdc-{}", Uuid::now_v7())).await;
    sqlx::query("UPDATE payments SET status = 'succeeded', stripe_status = 'succeeded', resolution_source = 'poll', resolved_at = now(), version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&primary)
        .await
        .unwrap();
    sqlx::query("DELETE FROM payments WHERE id = $1")
        .bind(id)
        .execute(&primary)
        .await
        .unwrap();

    let want = id.to_string();
    let seen = cdc::collect(
        &consumer,
        Duration::from_secs(60),
        |k| k == want,
        |s| s.get(&want).is_some_and(|r| r.len() >= 4),
    )
    .await;
    let records: &[Record] = seen.get(&want).map(Vec::as_slice).unwrap_or_default();
    let ops: Vec<Option<&str>> = records.iter().map(Record::op).collect();
    assert_eq!(
        ops,
        [Some("c"), Some("u"), Some("d"), None],
        "ops for {id} (None = tombstone): {records:?}"
    );
    assert!(
        records.iter().all(|r| r.partition == records[0].partition),
        "one payment's changes must share a partition"
    );

    let [create, update, delete, _] = records else {
        unreachable!()
    };
    let env = |r: &Record| r.envelope.clone().unwrap();
    let (c, u, d) = (env(create), env(update), env(delete));
    assert_eq!(c["before"], Value::Null);
    assert_eq!(c["after"]["status"], "pending");
    assert_eq!(c["after"]["amount"], 1250);
    assert_eq!(c["after"]["currency"], "usd");
    // The connector's column.include.list: the columns the reconciler reads, client_id
    // (the bench's CDC probe selects by it), and no customer data (email, description,
    // metadata) in Kafka.
    for image in [&c["after"], &u["before"], &u["after"], &d["before"]] {
        let mut columns: Vec<&str> = image
            .as_object()
            .expect("a row image")
            .keys()
            .map(String::as_str)
            .collect();
        columns.sort_unstable();
        assert_eq!(
            columns,
            [
                "amount",
                "attention",
                "client_id",
                "created_at",
                "currency",
                "id",
                "resolution_source",
                "status",
                "stripe_payment_intent_id",
                "version"
            ]
        );
    }
    // REPLICA IDENTITY FULL: the update carries the before-image of every column listed.
    assert_eq!(u["before"]["status"], "pending");
    assert_eq!(u["after"]["status"], "succeeded");
    assert_eq!(u["after"]["version"], 2);
    assert_eq!(d["before"]["status"], "succeeded");
    assert_eq!(d["after"], Value::Null);
    let lsns: Vec<i64> = [&c, &u, &d]
        .iter()
        .map(|e| e["source"]["lsn"].as_i64().expect("source.lsn"))
        .collect();
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "source.lsn must grow: {lsns:?}"
    );
    assert!(
        c["source"]["ts_ms"].as_i64().is_some(),
        "source.ts_ms (commit time) missing"
    );
}

#[tokio::test]
async fn restarting_kafka_connect_loses_no_change_made_while_it_was_down() {
    let stack = Stack::get();
    let _exclusive = CONNECT.write().await;
    let consumer = stack.consumer_at_end(stack.var("CDC_TOPIC"));
    let primary = stack.pool("DATABASE_URL").await;

    let before = insert_payment(&primary, &format!("restart-before-{}", Uuid::now_v7())).await;
    stack.script("debezium/connect.sh", &["down"]);
    let mut while_down = Vec::new();
    for i in 0..50 {
        while_down.push(insert_payment(&primary, &format!("restart-{i}-{}", Uuid::now_v7())).await);
    }
    stack.script("debezium/connect.sh", &["up"]);
    let after = insert_payment(&primary, &format!("restart-after-{}", Uuid::now_v7())).await;

    let wanted: HashSet<String> = while_down
        .iter()
        .chain([&before, &after])
        .map(Uuid::to_string)
        .collect();
    let seen = cdc::collect(
        &consumer,
        Duration::from_secs(120),
        |k| wanted.contains(k),
        |s| {
            wanted.iter().all(|id| {
                s.get(id)
                    .is_some_and(|r| r.iter().any(|r| r.op() == Some("c")))
            })
        },
    )
    .await;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|id| {
            !seen
                .get(*id)
                .is_some_and(|r| r.iter().any(|r| r.op() == Some("c")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} inserts never reached the topic: {missing:?}",
        missing.len(),
        wanted.len()
    );
}

#[tokio::test]
async fn nginx_balances_the_api_and_routes_webhooks_to_the_webhook_service() {
    let stack = Stack::get();
    let base = stack.var("PAYSTREAM_API_URL");
    let client = reqwest::Client::new();
    let mut instances = HashSet::new();
    for _ in 0..20 {
        let res = client
            .get(format!("{base}/health/live"))
            .send()
            .await
            .expect("nginx answers");
        assert!(res.status().is_success(), "{}", res.status());
        instances.insert(res.headers()["x-served-by"].to_str().unwrap().to_owned());
    }
    assert_eq!(
        instances,
        HashSet::from(["api-1".to_owned(), "api-2".to_owned()])
    );
    let res = client
        .post(format!("{base}/webhook/stripe"))
        .body("{}")
        .send()
        .await
        .expect("nginx answers");
    assert_eq!(
        res.headers()["x-served-by"],
        "webhook",
        "/webhook/stripe must reach the webhook service"
    );
}

#[test]
fn a_missing_component_fails_loudly_naming_it() {
    let stack = Stack::get();
    let scratch = std::env::temp_dir().join(format!("paystream-missing-{}", Uuid::now_v7()));
    let out = std::process::Command::new(stack.root().join("postgres-replication/cluster.sh"))
        .arg("up")
        .env("STACK_DIR", &scratch)
        .env("PG_BIN", "/nonexistent/postgresql/bin")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        !out.status.success(),
        "cluster.sh must fail without PostgreSQL binaries"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PostgreSQL 15 server binaries not found"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_stacks_stripe_sim_takes_the_stacks_key_only() {
    let stack = Stack::get();
    let base = stack.var("STRIPE_API_BASE");
    let client = reqwest::Client::new();
    let create = |key: &str| {
        client
            .post(format!("{base}/v1/payment_intents"))
            .bearer_auth(key)
            .form(&[("amount", "1250"), ("currency", "usd")])
            .send()
    };
    let ok = create(stack.var("STRIPE_SECRET_KEY"))
        .await
        .expect("stripe-sim answers");
    assert_eq!(ok.status(), 200);
    let pi: Value = ok.json().await.unwrap();
    assert_eq!(pi["status"], "requires_payment_method");
    let wrong = create("sk_test_not_this_stack").await.unwrap();
    assert_eq!(wrong.status(), 401);
    let endpoints: Value = client
        .get(format!("{base}/v1/webhook_endpoints"))
        .bearer_auth(stack.var("STRIPE_SECRET_KEY"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{}/webhook/stripe", stack.var("PAYSTREAM_API_URL"));
    assert_eq!(
        endpoints["data"][0]["url"],
        url.as_str(),
        "stripe-sim must send webhooks through nginx"
    );
}

/// A second, throw-away cluster on other ports (below the ephemeral range): `cluster.sh up` twice is harmless, and a
/// half-made replica (its base backup never finished) is detected and rebuilt.
#[test]
fn cluster_setup_is_idempotent_and_repairs_a_half_made_replica() {
    let scratch = ScratchCluster::new("repair", 25433);
    let cluster = |arg: &str| scratch.run(arg);
    let first = cluster("up");
    let second = cluster("up");
    // Simulate a base backup that died half-way: the replica's completion marker is gone.
    // (The log link points into the cluster's data dir, wherever cluster.sh put it.)
    let pg_dir = std::fs::read_link(scratch.dir().join("logs/pg-replica2.log"))
        .ok()
        .and_then(|log| log.parent()?.parent().map(std::path::Path::to_path_buf));
    let removed = pg_dir
        .as_ref()
        .map(|d| std::fs::remove_file(d.join("replica2/.paystream-replica-ready")));
    let repair = cluster("up");
    let status = cluster("status");
    let clean = cluster("clean");

    assert!(first.0, "first up failed: {}", first.1);
    assert!(second.0, "second up failed: {}", second.1);
    assert!(
        !second.1.contains("rebuilding") && !second.1.contains("initialising"),
        "a second up must change nothing: {}",
        second.1
    );
    assert!(
        matches!(removed, Some(Ok(()))),
        "could not find replica2's marker under {pg_dir:?}"
    );
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if root {
        assert!(
            pg_dir
                .as_ref()
                .is_some_and(|d| !d.starts_with(scratch.dir())),
            "the postgres user cannot enter {:?}, yet the data went there: {pg_dir:?}",
            scratch.dir()
        );
    }
    assert!(repair.0, "repairing up failed: {}", repair.1);
    assert!(repair.1.contains("replica2 is half-made"), "{}", repair.1);
    assert!(
        repair.1.contains("replicas streaming: ready"),
        "{}",
        repair.1
    );
    assert!(status.1.contains("standby=t"), "{}", status.1);
    assert!(clean.0, "{}", clean.1);
}

/// Readiness has a connection of its own: while every pooled connection of a service
/// waits (here on a row lock), the probe still answers at once. A probe queued behind
/// the requests once kept a restarted, busy webhook receiver unready for its whole start.
#[tokio::test]
async fn readiness_answers_while_every_pooled_connection_waits() {
    let stack = Stack::get();
    let db = stack.pool("DATABASE_URL").await;
    let primary = Primary::connect_lazy(stack.var("DATABASE_URL"), 1).unwrap();
    let (client, key) = keys::create(&primary, &format!("ready-{}", Uuid::now_v7()), Role::Client)
        .await
        .unwrap();
    let mut lock = db.begin().await.unwrap();
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM api_keys WHERE client_id = $1 FOR UPDATE")
        .bind(Uuid::from(client))
        .execute(&mut *lock)
        .await
        .unwrap();
    let revoking = tokio::spawn({
        let primary = primary.clone();
        async move { keys::revoke(&primary, &key).await }
    });
    let mut waiting = false;
    for _ in 0..100 {
        // Waiting on this test's lock, not any other session's.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
        )
        .bind(holder)
        .fetch_one(&db)
        .await
        .unwrap();
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waiting, "the revoke never reached the row lock");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), primary.wal_position())
            .await
            .is_err(),
        "the pool's one connection is held by the waiting revoke"
    );
    tokio::time::timeout(Duration::from_secs(2), primary.ping())
        .await
        .expect("readiness queued behind the busy pool")
        .expect("the primary answers");
    lock.rollback().await.unwrap();
    revoking
        .await
        .unwrap()
        .expect("the revoke goes on once the lock is gone");
}

/// A migration that changes a column's type while services run (0017 turned columns into
/// domains) makes PostgreSQL refuse each statement a connection prepared before it, on every
/// use while that connection lives. The first refusal retires the pool's connections: one
/// call fails, the next prepares afresh. Run on a copy of `payments` in a schema of its
/// own, which the pool's search path puts first.
#[tokio::test]
async fn a_column_type_change_fails_one_call_not_every_later_one() {
    let stack = Stack::get();
    let admin = stack.pool("DATABASE_URL").await;
    let schema = format!("stale_plans_{}", Uuid::now_v7().simple());
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.payments (LIKE public.payments INCLUDING DEFAULTS)"),
    ] {
        sqlx::query(&sql).execute(&admin).await.unwrap();
    }
    let url = stack.var("DATABASE_URL");
    let sep = if url.contains('?') { '&' } else { '?' };
    let primary = Primary::connect(&format!("{url}{sep}options=-csearch_path%3D{schema}"), 1)
        .await
        .unwrap();
    let absent = paystream_core::PaymentId::generate();
    assert!(payments::by_id(&primary, absent).await.unwrap().is_none());

    sqlx::query(&format!(
        "ALTER TABLE {schema}.payments ALTER COLUMN currency TYPE text"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let refused = payments::by_id(&primary, absent)
        .await
        .expect_err("a stale plan ran");
    assert!(
        refused
            .to_string()
            .contains("cached plan must not change result type"),
        "{refused}"
    );
    for _ in 0..3 {
        assert!(payments::by_id(&primary, absent).await.unwrap().is_none());
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}

/// What an API instance loads into its key gate's fast lane at start: active keys, the
/// newest last, never a revoked one.
#[tokio::test]
async fn active_key_hashes_are_the_newest_unrevoked_keys() {
    let stack = Stack::get();
    let primary = Primary::connect_lazy(stack.var("DATABASE_URL"), 2).unwrap();
    let run = Uuid::now_v7();
    let (_, older) = keys::create(&primary, &format!("active-a-{run}"), Role::Client)
        .await
        .unwrap();
    let (_, revoked) = keys::create(&primary, &format!("active-r-{run}"), Role::Client)
        .await
        .unwrap();
    keys::revoke(&primary, &revoked).await.unwrap();
    keys::create(&primary, &format!("active-m-{run}"), Role::Client)
        .await
        .unwrap();
    let (_, newest) = keys::create(&primary, &format!("active-n-{run}"), Role::Operator)
        .await
        .unwrap();
    // Other tests make keys meanwhile: only this test's keys' order is asserted.
    let all = keys::active_hashes(&primary, 1_000_000).await.unwrap();
    let at = |key: &str| all.iter().position(|h| *h == keys::hash(key));
    let (older_at, newest_at) = (at(&older).unwrap(), at(&newest).unwrap());
    assert!(older_at < newest_at, "oldest first");
    assert_eq!(at(&revoked), None, "a revoked key is never loaded");
    let newest_two = keys::active_hashes(&primary, 2).await.unwrap();
    assert_eq!(newest_two.len(), 2);
    assert!(
        !newest_two.contains(&keys::hash(&older)),
        "a limit keeps the newest: two keys were made after this one"
    );
}

/// One connection, pooled as the services pool theirs (no ping before acquire), so that
/// every statement below runs on the connection the one before released.
async fn one_connection(stack: &Stack) -> PgPool {
    let options = paystream_db::tls::connect_options(stack.var("DATABASE_URL")).unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap()
}

async fn backend(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The patched release (third_party/sqlx-core) flushes instead of pinging; what the ping
/// did still happens. A transaction dropped uncommitted is rolled back, and a statement
/// dropped mid-way is drained, before the connection serves anyone else.
#[tokio::test]
async fn a_released_connection_is_rolled_back_and_drained_before_its_next_use() {
    let stack = Stack::get();
    let pool = one_connection(stack).await;
    let pid = backend(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE dropped_uncommitted (x int)")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    let (same, in_tx, table): (i32, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT pg_backend_pid(), pg_current_xact_id_if_assigned()::text,
                to_regclass('pg_temp.dropped_uncommitted')::text",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((same, in_tx, table), (pid, None, None));

    // Dropped while PostgreSQL is still working on it: its answer must not reach the next
    // statement on that connection.
    let slow = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query_scalar::<_, i32>("SELECT 7 FROM pg_sleep(0.6)").fetch_one(&pool),
    )
    .await;
    assert!(slow.is_err(), "the slow statement should have been dropped");
    let (same, answer): (i32, i32) = sqlx::query_as("SELECT pg_backend_pid(), 42")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((same, answer), (pid, 42));
}

/// A connection whose backend dies mid-statement is closed on release, not handed out
/// again: the next statement runs on a new connection.
#[tokio::test]
async fn a_connection_broken_mid_statement_is_not_handed_out_again() {
    let stack = Stack::get();
    let admin = stack.pool("DATABASE_ADMIN_URL").await;
    let pool = one_connection(stack).await;
    let pid = backend(&pool).await;
    let sleeping = {
        let pool = pool.clone();
        tokio::spawn(async move {
            sqlx::query("SELECT pg_sleep(30)")
                .execute(&pool)
                .await
                .map(|_| ())
        })
    };
    let mut terminated = false;
    for _ in 0..100 {
        terminated = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE pid = $1 AND query LIKE 'SELECT pg_sleep(30)%'",
        )
        .bind(pid)
        .fetch_optional(&admin)
        .await
        .unwrap()
        .unwrap_or(false);
        if terminated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(terminated, "backend {pid} never ran the sleep");
    let failed = sleeping.await.unwrap();
    assert!(failed.is_err(), "the statement's backend was terminated");
    let next = backend(&pool).await;
    assert_ne!(next, pid, "the broken connection was handed out again");
}
