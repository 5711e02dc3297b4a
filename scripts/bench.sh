#!/usr/bin/env bash
# make bench: the services as release builds on the local stack, then every benchmark.
#   scripts/bench.sh [--quick]     (--quick: short runs of the stack benchmark only)
# Bulk fills (1 M and 10 M payments) go to a cluster of their own (ports 25633-25635,
# kept in .stack/bench-cluster between runs): on the stack's primary their WAL would
# outgrow max_slot_wal_keep_size and invalidate Debezium's replication slot.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "${1:-}" != --quick ]; then bench_disk_check; fi
PAYSTREAM_PROFILE=release "$ROOT/scripts/stack.sh" up --no-demo
bin=$CARGO_TARGET_DIR/release
set -a
# shellcheck disable=SC1091
. "$STACK_DIR/env"
set +a

"$bin/paystream-bench" "$@"
if [ "${1:-}" = --quick ]; then exit 0; fi

log "a pooled statement: released without a ping (third_party/sqlx-core), then with sqlx's ping"
"$bin/pool-bench"
PAYSTREAM_SQLX_PING_ON_RELEASE=1 "$bin/pool-bench"

log "reconciler throughput: 1,000,000 changes (the first run fills the topic)"
"$bin/throughput-bench" "$KAFKA_BROKERS" 1000000 3 20

bench_cluster up
pw=$(sed -n 's/^PG_SUPERUSER_PASSWORD=//p' "$STACK_DIR/bench-cluster/secrets.env")
admin="postgres://postgres:$pw@127.0.0.1:25633/postgres?sslmode=verify-full&sslrootcert=$STACK_DIR/bench-cluster/tls/ca.crt"
log "recovery: 1,000,000 pending payments (reconciler state rebuilt from a replica)"
REPLICA_PORT=25634 "$bin/recovery-bench" "$admin" 1000000 3
log "reconciliation report: windows of 100,000 and 1,000,000 payments (Stripe's side from one report run)"
REPLICA_PORT=25634 "$bin/report-bench" "$admin" 100000 1000000
log "analytics: 10,000,000 payments (the first run fills them: about 5 minutes)"
REPLICA_PORT=25634 "$bin/analytics-bench" "$admin" 10000000 5
