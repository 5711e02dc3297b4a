#!/usr/bin/env bash
# The whole local stack, in dependency order:
#   postgres primary + 2 replicas -> migrations -> tansu -> Kafka Connect (Debezium)
#   -> api x2, webhook, reconciler -> nginx -> exporter, Alertmanager, Prometheus
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

# db_url ROLE PASSWORD PORT [APPLICATION_NAME]: TLS verified against the stack's CA
# (lib.sh); the name tells a service's connections apart in pg_stat_activity.
db_url() { echo "postgres://$1:$2@127.0.0.1:$3/$PG_DB?$(pg_tls_params)${4:+&application_name=$4}"; }

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

healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$(service_port "$1")$(health_path "$1")" >/dev/null; }

# STRIPE=real's keys, as the environment gave them: load_secrets then sets the sim's.
REAL_STRIPE_SECRET_KEY=${STRIPE_SECRET_KEY:-}
REAL_STRIPE_WEBHOOK_SECRET=${STRIPE_WEBHOOK_SECRET:-}

# Sets STRIPE_API_BASE, STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET for this run's Stripe
# (STRIPE=sim|real, lib.sh); after load_secrets.
use_stripe() {
    case $STRIPE in
    sim) STRIPE_API_BASE=http://127.0.0.1:$STRIPE_SIM_PORT ;;
    real)
        local why
        why=$(stripe_real_refusal "$REAL_STRIPE_SECRET_KEY" "$REAL_STRIPE_WEBHOOK_SECRET")
        [ -z "$why" ] || die "$why"
        if [ "$REAL_STRIPE_SECRET_KEY" = "$STRIPE_SECRET_KEY" ] || [ "$REAL_STRIPE_WEBHOOK_SECRET" = "$STRIPE_WEBHOOK_SECRET" ]; then
            die "STRIPE_SECRET_KEY or STRIPE_WEBHOOK_SECRET is stripe-sim's (from $STACK_DIR/secrets.env, a sourced .stack/env?): export your Stripe test account's"
        fi
        STRIPE_API_BASE=$STRIPE_REAL_API_BASE
        STRIPE_SECRET_KEY=$REAL_STRIPE_SECRET_KEY
        STRIPE_WEBHOOK_SECRET=$REAL_STRIPE_WEBHOOK_SECRET
        ;;
    *) die "STRIPE=$STRIPE: sim (stripe-sim, the default) or real (a Stripe account in test mode)" ;;
    esac
    export STRIPE_API_BASE STRIPE_SECRET_KEY STRIPE_WEBHOOK_SECRET
}

# What a service was started with, Stripe-wise: a service started for another Stripe (or
# other keys) is restarted. Keys enter only as a truncated SHA-256.
stripe_fingerprint() {
    if [ "$STRIPE" = real ]; then
        echo "real:$(printf '%s\n' "$STRIPE_API_BASE" "$STRIPE_SECRET_KEY" "$STRIPE_WEBHOOK_SECRET" | sha256sum | cut -c1-16)"
    else
        echo sim
    fi
}

# The Stripe the stack's last `up` chose: "sim|real BASE" ($RUN_DIR/stripe; sim before any).
stack_stripe() { cat "$RUN_DIR/stripe" 2>/dev/null || echo "sim http://127.0.0.1:$STRIPE_SIM_PORT"; }

start_service() {
    local name=$1 port bin
    port=$(service_port "$name")
    bin=$(service_bin "$name")
    if [ "$name" = stripe-sim ] && [ "$STRIPE" = real ]; then die "stripe-sim is not part of a STRIPE=real stack"; fi
    if is_running "$name"; then
        # A process from an older build, or another profile's, keeps running old code; one
        # started for another Stripe (STRIPE=sim|real, other keys) talks to the wrong one.
        if [ "$bin" -nt "$(pid_file "$name")" ] || [ "$(cat "$RUN_DIR/$name.bin" 2>/dev/null)" != "$bin" ] ||
            [ "$(cat "$RUN_DIR/$name.stripe" 2>/dev/null || echo sim)" != "$(stripe_fingerprint)" ]; then
            stop_pid "$name"
        else
            return 0
        fi
    fi
    [ -x "$bin" ] || die "$name: binary $bin missing (cargo build failed?)"
    if port_open "$port"; then die "$name: port $port is taken by a process this stack did not start"; fi
    if [ "$name" = stripe-sim ]; then
        # Keys come from the environment (STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET), not argv.
        # The endpoint is subscribed to what the receiver reads, as a production one is.
        local events
        events=$("$(service_bin webhook)" enabled-events | paste -sd,) || die "paystream-webhook enabled-events failed"
        start_bg "$name" "$ROOT" "$bin" --addr "127.0.0.1:$port" ${STRIPE_SIM_SEED:+--seed "$STRIPE_SIM_SEED"} \
            --webhook-url "http://127.0.0.1:$NGINX_HTTP_PORT/webhook/stripe" --enabled-events "$events"
    else
        # Secrets through the environment of a subshell, never argv (which `ps` shows).
        (
            export APP_DATABASE__URL APP_REPLICA__URL APP_STRIPE__SECRET_KEY APP_WEBHOOK__SECRETS
            APP_DATABASE__URL=$(db_url paystream "$PG_APP_PASSWORD" "$PG_PRIMARY_PORT" "$name")
            APP_REPLICA__URL=$(db_url paystream "$PG_APP_PASSWORD" "$NGINX_PG_PORT" "$name")
            APP_STRIPE__SECRET_KEY=$STRIPE_SECRET_KEY
            APP_WEBHOOK__SECRETS=$STRIPE_WEBHOOK_SECRET
            start_bg "$name" "$ROOT" env \
                APP_LISTEN_ADDR="127.0.0.1:$port" APP_INSTANCE="$name" APP_LOG_FORMAT=json \
                APP_STRIPE__API_BASE="$STRIPE_API_BASE" \
                APP_CATCHUP_INTERVAL_SECS="${APP_CATCHUP_INTERVAL_SECS:-15}" \
                APP_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT" \
                APP_POLL__FIRST_MS="${APP_POLL__FIRST_MS:-5000}" APP_POLL__FREQUENT_MS="${APP_POLL__FREQUENT_MS:-15000}" \
                "$bin"
        )
    fi
    echo "$bin" >"$RUN_DIR/$name.bin"
    stripe_fingerprint >"$RUN_DIR/$name.stripe"
    wait_for "$name on :$port" 30 healthy "$name" || die "$name is not healthy; see $LOG_DIR/$name.log"
}

write_env() {
    local f=$STACK_DIR/env
    rm -f "$f.tmp"
    (umask 077 && : >"$f.tmp")
    # Keys go in (a STRIPE=real stack's too) only because the file is private.
    [ "$(stat -c %a "$f.tmp")" = 600 ] || die "$f.tmp is not private (mode 600): not writing keys into it"
    cat >"$f.tmp" <<EOF
# Written by \`make up\` ($(date -u +%Y-%m-%dT%H:%M:%SZ)). Everything a client or a test needs.
PAYSTREAM_API_URL=http://127.0.0.1:$NGINX_HTTP_PORT
PAYSTREAM_CLIENT_KEY=$PAYSTREAM_CLIENT_KEY
PAYSTREAM_OPERATOR_KEY=$PAYSTREAM_OPERATOR_KEY
STRIPE_MODE=$STRIPE
STRIPE_API_BASE=$STRIPE_API_BASE
STRIPE_SECRET_KEY=$STRIPE_SECRET_KEY
STRIPE_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET
# Quoted where a value holds '&' (the URLs' query strings): shells source this file too.
DATABASE_URL='$(db_url paystream "$PG_APP_PASSWORD" "$PG_PRIMARY_PORT")'
DATABASE_ADMIN_URL='$(db_url postgres "$PG_SUPERUSER_PASSWORD" "$PG_PRIMARY_PORT")'
REPLICA_URL='$(db_url analyst "$PG_ANALYST_PASSWORD" "$NGINX_PG_PORT")'
REPLICA_1_URL='$(db_url analyst "$PG_ANALYST_PASSWORD" "$PG_REPLICA1_PORT")'
REPLICA_2_URL='$(db_url analyst "$PG_ANALYST_PASSWORD" "$PG_REPLICA2_PORT")'
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
PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT
ALERTMANAGER_URL=http://127.0.0.1:$ALERTMANAGER_PORT
EXPORTER_URL=http://127.0.0.1:$EXPORTER_PORT
STACK_DIR=$STACK_DIR
EOF
    # Only a sim stack has stripe-sim (and its /_sim control endpoints).
    if [ "$STRIPE" = sim ]; then echo "STRIPE_SIM_URL=http://127.0.0.1:$STRIPE_SIM_PORT" >>"$f.tmp"; fi
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
    use_stripe
    local was
    was=$(stack_stripe)
    [ "${was%% *}" = "$STRIPE" ] || log "Stripe: switching this stack from STRIPE=${was%% *} to STRIPE=$STRIPE (its services restart)"
    echo "$STRIPE $STRIPE_API_BASE" >"$RUN_DIR/stripe"
    build
    # 9>&-: long-lived children must not inherit the lock, or the next `up` waits forever.
    "$ROOT/postgres-replication/cluster.sh" up 9>&-
    migrate
    "$ROOT/kafka/broker.sh" up 9>&-
    "$ROOT/debezium/connect.sh" up 9>&-
    for s in "${SERVICES[@]}"; do
        # STRIPE=real: Stripe itself answers the API calls and sends the webhooks.
        if [ "$s" = stripe-sim ] && [ "$STRIPE" = real ]; then
            stop_pid "$s"
            continue
        fi
        start_service "$s" 9>&-
    done
    "$ROOT/nginx/nginx.sh" up 9>&-
    write_env
    # Reads .stack/env: it watches the stack as an operator would.
    "$ROOT/monitoring/monitoring.sh" up 9>&-
    flock -u 9
    status
    log "environment for clients and tests: $STACK_DIR/env"
    if [ "$STRIPE" = real ]; then
        log "Stripe test mode: its webhooks reach this stack only through \`stripe listen --forward-to http://127.0.0.1:$NGINX_HTTP_PORT/webhook/stripe\` (or a public endpoint); without them, the reconciler's polls and the webhook service's catch-up resolve payments"
    fi
    if [ "$demo" = 1 ]; then demo; fi
}

down() {
    mkdir -p "$STACK_DIR"
    "$ROOT/monitoring/monitoring.sh" down
    "$ROOT/nginx/nginx.sh" down
    for s in "${SERVICES[@]}"; do stop_pid "$s"; done
    "$ROOT/debezium/connect.sh" stop-watch
    "$ROOT/debezium/connect.sh" down
    "$ROOT/kafka/broker.sh" down
    "$ROOT/postgres-replication/cluster.sh" down
    log "stopped (data kept in $STACK_DIR; \`make clean\` deletes it)"
}

status() {
    local stripe stripe_base
    read -r stripe stripe_base <<<"$(stack_stripe)"
    echo "Paystream local stack ($STACK_DIR):"
    "$ROOT/postgres-replication/cluster.sh" status
    "$ROOT/kafka/broker.sh" status
    "$ROOT/debezium/connect.sh" status
    for s in "${SERVICES[@]}"; do
        local port state
        port=$(service_port "$s")
        if is_running "$s"; then
            if healthy "$s"; then state=ready; else state="up, not ready"; fi
        elif [ "$s" = stripe-sim ] && [ "$stripe" = real ]; then
            state="not used (STRIPE=real)"
        else
            state=down
        fi
        printf '  %-19s %-15s %s\n' "$s" "127.0.0.1:$port" "$state"
    done
    "$ROOT/nginx/nginx.sh" status
    "$ROOT/monitoring/monitoring.sh" status
    if [ "$stripe" = real ]; then
        printf '  %-19s %s\n' stripe "Stripe test mode at $stripe_base (STRIPE=real); its webhooks: stripe listen --forward-to http://127.0.0.1:$NGINX_HTTP_PORT/webhook/stripe"
    else
        printf '  %-19s %s\n' stripe "stripe-sim at $stripe_base (STRIPE=sim)"
    fi
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
    curl -fsS --max-time 3 "http://127.0.0.1:$RECONCILER_PORT/metrics" | grep -Eq '^reconciler_partitions [1-9]'
}

demo() {
    [ -f "$STACK_DIR/env" ] || die "no $STACK_DIR/env: run \`make up\` first"
    # Its polls are what the demo's dropped webhook waits for.
    wait_for "reconciler in its consumer group" 60 reconciler_owns_partitions ||
        die "the reconciler holds no CDC partition; see $LOG_DIR/reconciler.log"
    log "demo: sending payments through the stack"
    local since
    since=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
    # The demo reads STRIPE_MODE from .stack/env: with real Stripe it skips what only
    # stripe-sim can do (and says so).
    "$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream-demo" || die "demo failed"
    local against="stripe-sim"
    if grep -qx 'STRIPE_MODE=real' "$STACK_DIR/env"; then against="Stripe test mode"; fi
    log "reconciliation report of the demo's payments (replicas against $against)"
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
    # make bench leaves its bulk cluster running between runs: stopped before its files go.
    if [ -d "$STACK_DIR/bench-cluster" ]; then bench_cluster down; fi
    rm -rf "$STACK_DIR"
    log "removed $STACK_DIR"
    ;;
status) status ;;
logs) logs "${2:-}" ;;
demo) demo ;;
kill | start)
    [ -n "${2:-}" ] && [[ " ${SERVICES[*]} " == *" $2 "* ]] || die "$1: one of ${SERVICES[*]}"
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    if [ "$1" = kill ]; then
        stop_pid "$2" KILL
    else
        was=$(stack_stripe)
        [ "${was%% *}" = "$STRIPE" ] || die "start: this stack runs with STRIPE=${was%% *}; start its services with the same"
        load_secrets && use_stripe && start_service "$2"
    fi
    ;;
*) die "usage: $0 up [--no-demo]|down|clean|status|logs [NAME]|demo|kill NAME|start NAME" ;;
esac
