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
exporter_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$EXPORTER_PORT/metrics" >/dev/null; }

# A process from another build of the exporter, or one left from another config, is
# restarted; one running with this stack's is kept.
start_exporter() {
    local bin=$CARGO_TARGET_DIR/$PAYSTREAM_PROFILE/paystream
    if is_running exporter && [ ! "$bin" -nt "$(pid_file exporter)" ] && [ "$(cat "$RUN_DIR/exporter.bin" 2>/dev/null)" = "$bin" ]; then
        return 0
    fi
    stop_pid exporter
    [ -x "$bin" ] || die "exporter: binary $bin missing (cargo build failed?)"
    if port_open "$EXPORTER_PORT"; then die "exporter: port $EXPORTER_PORT is taken by a process this stack did not start"; fi
    # Secrets (the database URLs) through the environment, never argv.
    (
        set -a
        # shellcheck disable=SC1091
        . "$STACK_DIR/env"
        set +a
        start_bg exporter "$ROOT" env APP_LOG_FORMAT=json "$bin" exporter \
            --listen "127.0.0.1:$EXPORTER_PORT" --source-timeout 3s
    )
    echo "$bin" >"$RUN_DIR/exporter.bin"
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
    # Targets are re-read on their own (file_sd). A changed config or rule file restarts
    # Prometheus rather than reloading it: after a SIGHUP, Prometheus 2.42 was seen to
    # lose its discovered Alertmanager until the next restart.
    local sum
    sum=$(cat "$PROM_DIR/prometheus.yml" "$HERE"/prometheus/rules/*.yml | sha256sum)
    if is_running prometheus && [ "$sum" != "$(cat "$PROM_DIR/config.sum" 2>/dev/null)" ]; then
        stop_pid prometheus
    fi
    if ! is_running prometheus; then
        if port_open "$PROMETHEUS_PORT"; then die "prometheus: port $PROMETHEUS_PORT is taken by a process this stack did not start"; fi
        start_bg prometheus "$PROM_DIR" "$PROMETHEUS" --config.file="$PROM_DIR/prometheus.yml" \
            --storage.tsdb.path="$PROM_DIR/data" --storage.tsdb.retention.time=7d \
            --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle
        echo "$sum" >"$PROM_DIR/config.sum"
    fi
    wait_for "prometheus on :$PROMETHEUS_PORT" 30 prometheus_ready || die "prometheus is not ready; see $LOG_DIR/prometheus.log"
}

start_alertmanager() {
    [ -x "$ALERTMANAGER" ] || die "alertmanager not found at $ALERTMANAGER (apt-get install prometheus-alertmanager; make deps)"
    mkdir -p "$AM_DIR/data"
    local sum
    sum=$(sha256sum <"$HERE/alertmanager/alertmanager.yml")
    if is_running alertmanager && [ "$sum" != "$(cat "$AM_DIR/config.sum" 2>/dev/null)" ]; then
        stop_pid alertmanager
    fi
    if ! is_running alertmanager; then
        if port_open "$ALERTMANAGER_PORT"; then die "alertmanager: port $ALERTMANAGER_PORT is taken by a process this stack did not start"; fi
        # No cluster listener: one instance, and no port 9094 to collide on.
        start_bg alertmanager "$AM_DIR" "$ALERTMANAGER" --config.file="$HERE/alertmanager/alertmanager.yml" \
            --storage.path="$AM_DIR/data" --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" \
            --cluster.listen-address=
        echo "$sum" >"$AM_DIR/config.sum"
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
