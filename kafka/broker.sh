#!/usr/bin/env bash
# The Kafka-protocol broker: tansu with sqlite storage (topics, data and consumer-group
# offsets survive a restart; memory:// loses them and misreports high watermarks).
#   broker.sh up | down | kill | status | topics
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

BROKER_URL=tcp://127.0.0.1:$KAFKA_PORT
DATA=$STACK_DIR/tansu

list_topics() { "$TANSU_BIN" topic list --broker "$BROKER_URL" 2>/dev/null | jq -r '.[].name'; }

# Topics are not auto-created by tansu (a producer to an unknown topic just times out),
# so every topic the system uses is created here with its partition count.
ensure_topics() {
    local existing name parts
    existing=$(list_topics) || die "tansu does not answer a topic listing on $BROKER_URL"
    render "$ROOT/kafka/topics.txt" "$DATA/topics.txt"
    while read -r name parts _; do
        case $name in '' | '#'*) continue ;; esac
        if grep -qxF -- "$name" <<<"$existing"; then continue; fi
        log "creating topic $name ($parts partitions)"
        "$TANSU_BIN" topic create --broker "$BROKER_URL" --partitions "$parts" "$name" >/dev/null ||
            die "could not create topic $name"
    done <"$DATA/topics.txt"
}

up() {
    [ -x "$TANSU_BIN" ] || die "tansu not installed at $TANSU_BIN (run scripts/install.sh)"
    mkdir -p "$DATA"
    if is_running tansu; then
        # A rebuilt broker (install.sh replaces the binary when its patch changed) takes
        # over: the running one's executable is then deleted or another build's. Its data
        # stays; clients reconnect. A pid that is no tansu at all (a stale pid file,
        # reused) is not ours to signal.
        local exe
        exe=$(readlink "/proc/$(cat "$(pid_file tansu)")/exe" 2>/dev/null || true)
        case $exe in
        "$(readlink -f "$TANSU_BIN")") ;;
        "$(readlink -f "$PAYSTREAM_CACHE")"/tansu-*/bin/tansu*)
            log "tansu's binary was rebuilt: restarting the broker"
            stop_pid tansu TERM
            ;;
        *)
            warn "tansu's pid file names a process that is not tansu ($exe): ignoring it"
            rm -f "$(pid_file tansu)"
            ;;
        esac
    fi
    if ! is_running tansu; then
        if port_open "$KAFKA_PORT"; then die "port $KAFKA_PORT is taken by a process this stack did not start"; fi
        log "starting tansu on $BROKER_URL"
        # tansu reads a .env in its working directory; an empty one keeps stray settings out.
        : >"$DATA/.env"
        start_bg tansu "$DATA" "$TANSU_BIN" broker --listener-url "$BROKER_URL" \
            --advertised-listener-url "$BROKER_URL" --storage-engine "sqlite://tansu.db"
        wait_for "tansu on :$KAFKA_PORT" 20 port_open "$KAFKA_PORT" || die "tansu did not open $KAFKA_PORT; see $LOG_DIR/tansu.log"
    fi
    ensure_topics
}

case ${1:-} in
up) up ;;
down) stop_pid tansu TERM ;;
kill) stop_pid tansu KILL ;;
topics) list_topics ;;
status)
    if is_running tansu; then s=up; else s=down; fi
    printf '  %-19s %-15s %s\n' tansu "127.0.0.1:$KAFKA_PORT" "$s"
    ;;
*) die "usage: $0 up|down|kill|status|topics" ;;
esac
