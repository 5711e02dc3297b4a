#!/usr/bin/env bash
# Debezium's Postgres connector in Kafka Connect standalone mode.
#
#   connect.sh up       start Connect with the connector, wait until its TASK is RUNNING
#   connect.sh down     stop it (SIGTERM; offsets are flushed)
#   connect.sh kill     SIGKILL it (tests of crash recovery)
#   connect.sh health   exit 0 only if the connector and every task are RUNNING
#   connect.sh watch    (background, started by `up`) restart a FAILED connector or task
#   connect.sh status   one line
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

HERE=$ROOT/debezium
export CONNECT_DATA_DIR=$STACK_DIR/connect
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export PG_HOST=127.0.0.1
CONNECT_URL=http://127.0.0.1:$CONNECT_PORT
CONNECTOR=$(jq -r .name "$HERE/connector.json")

# The wheel ships mixed Jetty 9.4.12/9.4.56 jars, which make every REST call fail with
# HTTP 500; Debian's libjetty9-java (9.4.57) replaces all of them but jetty-client.
classpath() {
    [ -d "$DEBEZIUM_LIBS" ] || die "Debezium jars missing at $DEBEZIUM_LIBS (run scripts/install.sh)"
    local cp="" j
    for j in "$DEBEZIUM_LIBS"/*.jar; do
        case $(basename "$j") in
        jetty-client-*) ;;
        jetty-*) continue ;;
        esac
        cp="$cp:$j"
    done
    for j in continuation http io security server servlet servlets util util-ajax jmx; do
        [ -f "/usr/share/java/jetty9-$j.jar" ] || die "/usr/share/java/jetty9-$j.jar missing (apt-get install libjetty9-java)"
        cp="$cp:/usr/share/java/jetty9-$j.jar"
    done
    echo "${cp#:}"
}

# connector.json is the one source of truth (docker-compose POSTs it to Connect's REST
# API); standalone mode takes the same settings as a properties file (OUT), plus TLS to
# the primary, verified against the stack's CA (docker-compose's primary has no TLS).
connector_properties() {
    local rendered=$CONNECT_DATA_DIR/connector.json out=$1
    (umask 077 && render "$HERE/connector.json" "$rendered")
    (umask 077 && jq -r --arg ca "$PG_CA_FILE" \
        '"name=\(.name)", (.config + {"database.sslmode": "verify-full", "database.sslrootcert": $ca} | to_entries[] | "\(.key)=\(.value)")' \
        "$rendered" >"$out")
    chmod 600 "$out"
    rm -f "$rendered"
}

health() {
    local s
    s=$(curl -fsS --max-time 2 "$CONNECT_URL/connectors/$CONNECTOR/status") || return 1
    # A connector can be RUNNING while its task has FAILED: require both.
    jq -e '.connector.state == "RUNNING" and (.tasks | length > 0) and all(.tasks[]; .state == "RUNNING")' <<<"$s" >/dev/null
}

task_trace() {
    curl -fsS --max-time 2 "$CONNECT_URL/connectors/$CONNECTOR/status" 2>/dev/null |
        jq -r '[.connector.state] + [.tasks[] | "\(.state) \(.trace // "" | split("\n")[0] // "")"] | join(" | ")' 2>/dev/null ||
        echo "REST not answering"
}

# A slot the primary invalidated (it held more WAL than max_slot_wal_keep_size, e.g. while
# Debezium was down during a bulk load) cannot stream again: Debezium would retry it for
# half an hour. Drop it with the offsets that point into it; the connector then takes a
# new initial snapshot, which the reconciler reads like any change.
primary_sql() {
    PGSSLMODE=verify-full PGSSLROOTCERT=$PG_CA_FILE PGPASSWORD=$PG_SUPERUSER_PASSWORD \
        "$PG_BIN/psql" -X -Atq -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U postgres -d "$PG_DB" -c "$1"
}

# A slot that is gone altogether (dropped by hand, or a primary rebuilt or failed over:
# PG 15 has no failover slots) while Connect still holds offsets into it is the same loss:
# Debezium would refuse to start. The same recovery applies.
recover_lost_slot() {
    local status
    status=$(primary_sql "SELECT coalesce((SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'paystream_debezium'), 'missing')" 2>/dev/null || true)
    case $status in
    lost)
        warn "Debezium's replication slot was invalidated (wal_status=lost); dropping it and re-snapshotting"
        stop_pid connect TERM
        primary_sql "SELECT pg_drop_replication_slot('paystream_debezium')" >/dev/null ||
            die "cannot drop the lost slot paystream_debezium"
        rm -f "$CONNECT_DATA_DIR/offsets.dat"
        ;;
    missing)
        # Only while Connect is down: a running Connect may be creating the slot right now.
        if [ -s "$CONNECT_DATA_DIR/offsets.dat" ] && ! is_running connect; then
            warn "Debezium's replication slot is gone but Connect has offsets into it; re-snapshotting"
            rm -f "$CONNECT_DATA_DIR/offsets.dat"
        fi
        ;;
    esac
}

# Kafka Connect never restarts a failed task by itself: a broker that answers one produce
# with an error while it shuts down (tansu does) kills the task for good, and the change
# stream stops. The watcher restarts failed tasks (Connect 3.x's onlyFailed restart),
# so a broker restart costs seconds of CDC latency, not the stream.
watch() {
    local s
    while sleep "${CONNECT_WATCH_SECS:-3}"; do
        s=$(curl -fsS --max-time 2 "$CONNECT_URL/connectors/$CONNECTOR/status" 2>/dev/null) || continue
        if jq -e '.connector.state == "FAILED" or any(.tasks[]; .state == "FAILED")' <<<"$s" >/dev/null; then
            warn "Debezium connector or task FAILED: $(task_trace); restarting it"
            curl -fsS --max-time 10 -X POST \
                "$CONNECT_URL/connectors/$CONNECTOR/restart?includeTasks=true&onlyFailed=true" >/dev/null ||
                warn "restart request refused"
        fi
    done
}

start_watch() {
    is_running connect-watch && return 0
    start_bg connect-watch "$ROOT" "$HERE/connect.sh" watch
}

up() {
    load_secrets
    start_watch
    recover_lost_slot
    mkdir -p "$CONNECT_DATA_DIR"
    if is_running connect; then
        # Standalone mode reads the worker's and the connector's settings only at start.
        connector_properties "$CONNECT_DATA_DIR/connector.properties.next"
        render "$HERE/worker.properties" "$CONNECT_DATA_DIR/worker.properties.next"
        if cmp -s "$CONNECT_DATA_DIR/connector.properties.next" "$CONNECT_DATA_DIR/connector.properties" &&
            cmp -s "$CONNECT_DATA_DIR/worker.properties.next" "$CONNECT_DATA_DIR/worker.properties"; then
            rm -f "$CONNECT_DATA_DIR/connector.properties.next" "$CONNECT_DATA_DIR/worker.properties.next"
        else
            log "Kafka Connect or Debezium settings changed: restarting Kafka Connect (offsets are kept)"
            stop_pid connect TERM
        fi
    fi
    if is_running connect; then
        wait_for "debezium task RUNNING" 90 health || die "Kafka Connect runs but the Debezium task is not RUNNING: $(task_trace)"
        return 0
    fi
    port_open "$KAFKA_PORT" || die "Kafka Connect needs the broker on 127.0.0.1:$KAFKA_PORT, which is not listening"
    if port_open "$CONNECT_PORT"; then die "port $CONNECT_PORT is taken by a process this stack did not start"; fi
    render "$HERE/worker.properties" "$CONNECT_DATA_DIR/worker.properties"
    connector_properties "$CONNECT_DATA_DIR/connector.properties"
    rm -f "$CONNECT_DATA_DIR/connector.properties.next" "$CONNECT_DATA_DIR/worker.properties.next"
    local cp
    cp=$(classpath)
    log "starting Kafka Connect (Debezium) on $CONNECT_URL"
    start_bg connect "$CONNECT_DATA_DIR" java -Xmx512m -XX:+UseSerialGC \
        -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$cp" \
        org.apache.kafka.connect.cli.ConnectStandalone \
        "$CONNECT_DATA_DIR/worker.properties" "$CONNECT_DATA_DIR/connector.properties"
    if ! wait_for "debezium task RUNNING" 120 health; then
        die "Debezium task not RUNNING after 120 s: $(task_trace); see $LOG_DIR/connect.log"
    fi
}

case ${1:-} in
up) up ;;
down) stop_pid connect TERM ;;
kill) stop_pid connect KILL ;;
stop-watch) stop_pid connect-watch TERM ;;
watch) watch ;;
health) health ;;
status)
    if is_running connect; then
        printf '  %-19s %-15s %s\n' kafka-connect "127.0.0.1:$CONNECT_PORT" "up, $(task_trace)"
    else
        printf '  %-19s %-15s %s\n' kafka-connect "127.0.0.1:$CONNECT_PORT" down
    fi
    if is_running connect-watch; then w=up; else w=down; fi
    printf '  %-19s %-15s %s\n' connect-watch - "$w (restarts failed Debezium tasks)"
    ;;
*) die "usage: $0 up|down|kill|watch|stop-watch|health|status" ;;
esac
