#!/usr/bin/env bash
# The stack's monitoring: `paystream exporter`, Prometheus (scraping every service, the
# exporter, itself and Alertmanager; evaluating the alert rules) and Alertmanager, from
# Debian's packages. Started by scripts/stack.sh after everything it watches.
#   monitoring.sh up | down | status
# `up` reads the stack's URLs from $STACK_DIR/env, as an operator would.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

PROMETHEUS=${PROMETHEUS:-/usr/bin/prometheus}
ALERTMANAGER=${ALERTMANAGER:-/usr/bin/prometheus-alertmanager}
PROM_DIR=$STACK_DIR/prometheus
AM_DIR=$STACK_DIR/alertmanager
HERE=$ROOT/monitoring

# targets JOB NAME=PORT...: the file Prometheus reads JOB's targets from (file_sd), one
# instance label per target, the same names as in compose-targets/.
targets() {
    local job=$1 f=$PROM_DIR/targets/$1.yml
    shift
    {
        echo "# Written by monitoring/monitoring.sh for the local stack."
        for t in "$@"; do printf -- '- targets: ["127.0.0.1:%s"]\n  labels: { instance: %s }\n' "${t#*=}" "${t%%=*}"; done
    } >"$f.tmp"
    mv "$f.tmp" "$f"
}

prometheus_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null; }
alertmanager_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" >/dev/null; }
# Longer than the exporter's per-source timeout: a slow source is what it reports, not a
# reason to call it down.
exporter_ready() { curl -fsS --max-time 5 "http://127.0.0.1:$EXPORTER_PORT/metrics" >/dev/null; }

# only_env VAR...: from here on (call it in a subshell), only these variables and the
# basics are exported: the stack's scripts hold every secret of secrets.env in theirs.
only_env() {
    local v keep=" PATH HOME LANG LC_ALL TZ $* "
    for v in $(compgen -e); do
        [[ $keep == *" $v "* ]] || export -n "$v"
    done
}

# fresh NAME FINGERPRINT: whether NAME runs as FINGERPRINT says (binary, config, ports);
# one started otherwise is stopped, to be started again.
fresh() {
    if is_running "$1" && [ "$2" = "$(cat "$RUN_DIR/$1.fingerprint" 2>/dev/null)" ]; then return 0; fi
    stop_pid "$1"
    return 1
}

start_exporter() {
    local bin=$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream
    [ -x "$bin" ] || die "exporter: binary $bin missing (cargo build failed?)"
    local print
    print="$(stat -c %Y "$bin") $bin $EXPORTER_PORT $(grep -v "^#" "$STACK_DIR/env" | sha256sum)"
    if ! fresh exporter "$print"; then
        if port_open "$EXPORTER_PORT"; then die "exporter: port $EXPORTER_PORT is taken by a process this stack did not start"; fi
        # The URLs it reads, from .stack/env, through its environment (never argv), and
        # nothing else of the stack's secrets.
        (
            # shellcheck disable=SC1091
            . "$STACK_DIR/env"
            only_env
            export DATABASE_URL REPLICA_URL KAFKA_CONNECT_URL KAFKA_BROKERS CDC_TOPIC REFUND_CDC_TOPIC
            start_bg exporter "$ROOT" env APP_LOG_FORMAT=json "$bin" exporter \
                --listen "127.0.0.1:$EXPORTER_PORT" --source-timeout 3s
        )
        echo "$print" >"$RUN_DIR/exporter.fingerprint"
    fi
    wait_for "exporter on :$EXPORTER_PORT" 30 exporter_ready || die "the exporter does not serve /metrics; see $LOG_DIR/exporter.log"
}

start_prometheus() {
    [ -x "$PROMETHEUS" ] || die "prometheus not found at $PROMETHEUS (apt-get install prometheus; make deps)"
    mkdir -p "$PROM_DIR/targets" "$PROM_DIR/data"
    cp "$HERE/prometheus/prometheus.yml" "$PROM_DIR/prometheus.yml"
    ln -sfn "$HERE/prometheus/rules" "$PROM_DIR/rules"
    targets api "api-1=$API_1_PORT" "api-2=$API_2_PORT"
    targets webhook "webhook=$WEBHOOK_PORT"
    targets reconciler "reconciler=$RECONCILER_PORT"
    # STRIPE=real: no stripe-sim to scrape.
    if grep -qx 'STRIPE_MODE=real' "$STACK_DIR/env"; then targets stripe-sim; else targets stripe-sim "stripe-sim=$STRIPE_SIM_PORT"; fi
    targets exporter "exporter=$EXPORTER_PORT"
    targets prometheus "prometheus=$PROMETHEUS_PORT"
    targets alertmanager "alertmanager=$ALERTMANAGER_PORT"
    # Targets are re-read on their own (file_sd). A changed config, rule file or port
    # restarts Prometheus rather than reloading it: after a SIGHUP, Prometheus 2.42 was
    # seen to lose its discovered Alertmanager until the next restart.
    local print
    print="$PROMETHEUS_PORT $(cat "$PROM_DIR/prometheus.yml" "$HERE"/prometheus/rules/*.yml | sha256sum)"
    if ! fresh prometheus "$print"; then
        if port_open "$PROMETHEUS_PORT"; then die "prometheus: port $PROMETHEUS_PORT is taken by a process this stack did not start"; fi
        (
            only_env
            start_bg prometheus "$PROM_DIR" "$PROMETHEUS" --config.file="$PROM_DIR/prometheus.yml" \
                --storage.tsdb.path="$PROM_DIR/data" --storage.tsdb.retention.time=7d \
                --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle
        )
        echo "$print" >"$RUN_DIR/prometheus.fingerprint"
    fi
    wait_for "prometheus on :$PROMETHEUS_PORT" 30 prometheus_ready || die "prometheus is not ready; see $LOG_DIR/prometheus.log"
}

start_alertmanager() {
    [ -x "$ALERTMANAGER" ] || die "alertmanager not found at $ALERTMANAGER (apt-get install prometheus-alertmanager; make deps)"
    mkdir -p "$AM_DIR/data"
    local print
    print="$ALERTMANAGER_PORT $(sha256sum <"$HERE/alertmanager/alertmanager.yml")"
    if ! fresh alertmanager "$print"; then
        if port_open "$ALERTMANAGER_PORT"; then die "alertmanager: port $ALERTMANAGER_PORT is taken by a process this stack did not start"; fi
        # No cluster listener: one instance, and no port 9094 to collide on.
        (
            only_env
            start_bg alertmanager "$AM_DIR" "$ALERTMANAGER" --config.file="$HERE/alertmanager/alertmanager.yml" \
                --storage.path="$AM_DIR/data" --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" \
                --cluster.listen-address=
        )
        echo "$print" >"$RUN_DIR/alertmanager.fingerprint"
    fi
    wait_for "alertmanager on :$ALERTMANAGER_PORT" 30 alertmanager_ready || die "alertmanager is not ready; see $LOG_DIR/alertmanager.log"
}

up() {
    [ -f "$STACK_DIR/env" ] || die "no $STACK_DIR/env: the stack writes it before starting its monitoring"
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    start_exporter
    start_alertmanager
    start_prometheus
}

down() {
    stop_pid prometheus
    stop_pid alertmanager
    stop_pid exporter
}

line() {
    local name=$1 port=$2 ready=$3 s=down
    if is_running "$name"; then
        if $ready; then s=ready; else s="up, not ready"; fi
    fi
    printf '  %-19s %-15s %s\n' "$name" "127.0.0.1:$port" "$s"
}

case ${1:-} in
up) up ;;
down) down ;;
status)
    line exporter "$EXPORTER_PORT" exporter_ready
    line prometheus "$PROMETHEUS_PORT" prometheus_ready
    line alertmanager "$ALERTMANAGER_PORT" alertmanager_ready
    ;;
*) die "usage: $0 up|down|status" ;;
esac
