#!/usr/bin/env bash
# The whole local stack, in dependency order:
#   postgres primary + 2 replicas -> migrations -> tansu -> Kafka Connect (Debezium)
#   -> api x2, webhook, reconciler -> nginx
#
#   stack.sh up [--no-demo]   install what is missing, start everything, wait until healthy,
#                             write .stack/env, print where everything is (and run the demo)
#   stack.sh down             stop what `up` started (by pid); data is kept
#   stack.sh clean            down, then delete all data (.stack)
#   stack.sh status           one line per component
#   stack.sh logs [NAME]      tail the logs in .stack/logs
#   stack.sh demo             send a few payments through the running stack
#   stack.sh kill NAME        SIGKILL one service (stripe-sim, api-1, api-2, webhook, reconciler)
#   stack.sh start NAME       start one service again (no install, no build): chaos tests
#
# Services take their settings from APP_* variables; the stack's defaults below apply only
# to those not already set in the environment (a chaos stack shortens expiry, say).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVICES=(stripe-sim api-1 api-2 webhook reconciler)

service_port() {
    case $1 in
    stripe-sim) echo "$STRIPE_SIM_PORT" ;;
    api-1) echo "$API_1_PORT" ;;
    api-2) echo "$API_2_PORT" ;;
    webhook) echo "$WEBHOOK_PORT" ;;
    reconciler) echo "$RECONCILER_PORT" ;;
    esac
}
service_bin() {
    case $1 in
    stripe-sim) echo "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/stripe-sim" ;;
    *) echo "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream-${1%-[0-9]}" ;;
    esac
}
health_path() {
    case $1 in
    stripe-sim) echo /_sim/health ;;
    *) echo /health/ready ;;
    esac
}

db_url() { echo "postgres://$1:$2@127.0.0.1:$3/$PG_DB"; }

build() {
    local flags=(--quiet --bins)
    if [ "$PAYSTREAM_PROFILE" = release ]; then flags+=(--release); fi
    log "building the workspace binaries (cargo build ${flags[*]})"
    (cd "$ROOT" && cargo build "${flags[@]}") || die "cargo build failed"
}

migrate() {
    DATABASE_URL=$(db_url paystream "$PG_APP_PASSWORD" "$PG_PRIMARY_PORT") \
        "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream" migrate 2>>"$LOG_DIR/migrate.log" ||
        die "migrations failed; see $LOG_DIR/migrate.log"
    log "migrations: applied"
    # The stack's own client and operator keys (generated once in secrets.env).
    local db
    db=$(db_url paystream "$PG_APP_PASSWORD" "$PG_PRIMARY_PORT")
    PAYSTREAM_KEY=$PAYSTREAM_CLIENT_KEY DATABASE_URL=$db "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream" keys register \
        --name stack-client --role client 2>>"$LOG_DIR/migrate.log" || die "registering the stack's client key failed"
    PAYSTREAM_KEY=$PAYSTREAM_OPERATOR_KEY DATABASE_URL=$db "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream" keys register \
        --name stack-operator --role operator 2>>"$LOG_DIR/migrate.log" || die "registering the stack's operator key failed"
}

healthy() { curl -fsS --max-time 1 "http://127.0.0.1:$(service_port "$1")$(health_path "$1")" >/dev/null; }

start_service() {
    local name=$1 port bin
    port=$(service_port "$name")
    bin=$(service_bin "$name")
    if is_running "$name"; then
        # A process from an older build, or another profile's, keeps running old code.
        if [ "$bin" -nt "$(pid_file "$name")" ] || [ "$(cat "$RUN_DIR/$name.bin" 2>/dev/null)" != "$bin" ]; then
            stop_pid "$name"
        else
            return 0
        fi
    fi
    [ -x "$bin" ] || die "$name: binary $bin missing (cargo build failed?)"
    if port_open "$port"; then die "$name: port $port is taken by a process this stack did not start"; fi
    if [ "$name" = stripe-sim ]; then
        # Keys come from the environment (STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET), not argv.
        start_bg "$name" "$ROOT" "$bin" --addr "127.0.0.1:$port" ${STRIPE_SIM_SEED:+--seed "$STRIPE_SIM_SEED"} \
            --webhook-url "http://127.0.0.1:$NGINX_HTTP_PORT/webhook/stripe"
    else
        start_bg "$name" "$ROOT" env \
            APP_LISTEN_ADDR="127.0.0.1:$port" APP_INSTANCE="$name" APP_LOG_FORMAT=json \
            APP_DATABASE__URL="$(db_url paystream "$PG_APP_PASSWORD" "$PG_PRIMARY_PORT")" \
            APP_STRIPE__API_BASE="http://127.0.0.1:$STRIPE_SIM_PORT" APP_STRIPE__SECRET_KEY="$STRIPE_SECRET_KEY" \
            APP_WEBHOOK__SECRETS="$STRIPE_WEBHOOK_SECRET" APP_CATCHUP_INTERVAL_SECS="${APP_CATCHUP_INTERVAL_SECS:-15}" \
            APP_REPLICA__URL="$(db_url paystream "$PG_APP_PASSWORD" "$NGINX_PG_PORT")" \
            APP_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT" \
            APP_POLL__FIRST_MS="${APP_POLL__FIRST_MS:-5000}" APP_POLL__FREQUENT_MS="${APP_POLL__FREQUENT_MS:-15000}" \
            "$bin"
    fi
    echo "$bin" >"$RUN_DIR/$name.bin"
    wait_for "$name on :$port" 30 healthy "$name" || die "$name is not healthy; see $LOG_DIR/$name.log"
}

write_env() {
    local f=$STACK_DIR/env
    (umask 077 && : >"$f.tmp")
    cat >"$f.tmp" <<EOF
# Written by \`make up\` ($(date -u +%Y-%m-%dT%H:%M:%SZ)). Everything a client or a test needs.
PAYSTREAM_API_URL=http://127.0.0.1:$NGINX_HTTP_PORT
PAYSTREAM_CLIENT_KEY=$PAYSTREAM_CLIENT_KEY
PAYSTREAM_OPERATOR_KEY=$PAYSTREAM_OPERATOR_KEY
STRIPE_API_BASE=http://127.0.0.1:$STRIPE_SIM_PORT
STRIPE_SECRET_KEY=$STRIPE_SECRET_KEY
STRIPE_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET
DATABASE_URL=$(db_url paystream "$PG_APP_PASSWORD" "$PG_PRIMARY_PORT")
DATABASE_ADMIN_URL=postgres://postgres:$PG_SUPERUSER_PASSWORD@127.0.0.1:$PG_PRIMARY_PORT/$PG_DB
REPLICA_URL=$(db_url analyst "$PG_ANALYST_PASSWORD" "$NGINX_PG_PORT")
REPLICA_1_URL=$(db_url analyst "$PG_ANALYST_PASSWORD" "$PG_REPLICA1_PORT")
REPLICA_2_URL=$(db_url analyst "$PG_ANALYST_PASSWORD" "$PG_REPLICA2_PORT")
KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
KAFKA_CONNECT_URL=http://127.0.0.1:$CONNECT_PORT
DEBEZIUM_CONNECTOR=paystream-payments
CDC_TOPIC=$CDC_TOPIC
STATUS_TOPIC=$STATUS_TOPIC
REFUND_CDC_TOPIC=$REFUND_CDC_TOPIC
REFUND_STATUS_TOPIC=$REFUND_STATUS_TOPIC
API_1_URL=http://127.0.0.1:$API_1_PORT
API_2_URL=http://127.0.0.1:$API_2_PORT
WEBHOOK_URL=http://127.0.0.1:$WEBHOOK_PORT
RECONCILER_URL=http://127.0.0.1:$RECONCILER_PORT
STRIPE_SIM_URL=http://127.0.0.1:$STRIPE_SIM_PORT
STACK_DIR=$STACK_DIR
EOF
    mv "$f.tmp" "$f"
}

up() {
    local demo=1
    [ "${1:-}" = --no-demo ] && demo=0
    mkdir -p "$STACK_DIR" "$LOG_DIR" "$RUN_DIR"
    # One `up` at a time: tests in parallel processes all call it.
    exec 9>"$STACK_DIR/.lock"
    flock 9
    "$ROOT/scripts/install.sh"
    load_secrets
    build
    # 9>&-: long-lived children must not inherit the lock, or the next `up` waits forever.
    "$ROOT/postgres-replication/cluster.sh" up 9>&-
    migrate
    "$ROOT/kafka/broker.sh" up 9>&-
    "$ROOT/debezium/connect.sh" up 9>&-
    for s in "${SERVICES[@]}"; do start_service "$s" 9>&-; done
    "$ROOT/nginx/nginx.sh" up 9>&-
    flock -u 9
    write_env
    status
    log "environment for clients and tests: $STACK_DIR/env"
    if [ "$demo" = 1 ]; then demo; fi
}

down() {
    mkdir -p "$STACK_DIR"
    "$ROOT/nginx/nginx.sh" down
    for s in "${SERVICES[@]}"; do stop_pid "$s"; done
    "$ROOT/debezium/connect.sh" stop-watch
    "$ROOT/debezium/connect.sh" down
    "$ROOT/kafka/broker.sh" down
    "$ROOT/postgres-replication/cluster.sh" down
    log "stopped (data kept in $STACK_DIR; \`make clean\` deletes it)"
}

status() {
    echo "Paystream local stack ($STACK_DIR):"
    "$ROOT/postgres-replication/cluster.sh" status
    "$ROOT/kafka/broker.sh" status
    "$ROOT/debezium/connect.sh" status
    for s in "${SERVICES[@]}"; do
        local port state
        port=$(service_port "$s")
        if is_running "$s"; then
            if healthy "$s"; then state=ready; else state="up, not ready"; fi
        else
            state=down
        fi
        printf '  %-19s %-15s %s\n' "$s" "127.0.0.1:$port" "$state"
    done
    "$ROOT/nginx/nginx.sh" status
}

logs() {
    if [ -n "${1:-}" ]; then
        tail -n 100 -F "$LOG_DIR/$1.log"
    else
        tail -n 20 -F "$LOG_DIR"/*.log
    fi
}

# The reconciler holds CDC partitions (it has joined its group and loaded its state).
reconciler_owns_partitions() {
    curl -fsS --max-time 1 "http://127.0.0.1:$RECONCILER_PORT/metrics" | grep -Eq '^reconciler_partitions [1-9]'
}

demo() {
    [ -f "$STACK_DIR/env" ] || die "no $STACK_DIR/env: run \`make up\` first"
    # Its polls are what the demo's dropped webhook waits for.
    wait_for "reconciler in its consumer group" 60 reconciler_owns_partitions ||
        die "the reconciler holds no CDC partition; see $LOG_DIR/reconciler.log"
    log "demo: sending payments through the stack"
    local since
    since=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
    "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream-demo" || die "demo failed"
    log "reconciliation report of the demo's payments (replicas against stripe-sim)"
    # Exit 2 means discrepancies: shown, not fatal (a payment Stripe has not finished is
    # not one; a webhook still in flight can be).
    local rc=0
    (set -a && . "$STACK_DIR/env" && "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream" report --since "$since") || rc=$?
    [ "$rc" -le 2 ] || die "the reconciliation report failed"
}

case ${1:-} in
up) up "${2:-}" ;;
down) down ;;
clean)
    down
    "$ROOT/postgres-replication/cluster.sh" clean
    rm -rf "$STACK_DIR"
    log "removed $STACK_DIR"
    ;;
status) status ;;
logs) logs "${2:-}" ;;
demo) demo ;;
kill | start)
    [ -n "${2:-}" ] && [[ " ${SERVICES[*]} " == *" $2 "* ]] || die "$1: one of ${SERVICES[*]}"
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    if [ "$1" = kill ]; then stop_pid "$2" KILL; else load_secrets && start_service "$2"; fi
    ;;
*) die "usage: $0 up [--no-demo]|down|clean|status|logs [NAME]|demo|kill NAME|start NAME" ;;
esac
