#!/usr/bin/env bash
# nginx in front of the API instances, the webhook service and the read replicas.
#   nginx.sh up | down | status
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

export NGINX_PREFIX=$STACK_DIR/nginx
export NGINX_LOG_DIR=$LOG_DIR
export NGINX_MODULES_DIR=${NGINX_MODULES_DIR:-/usr/lib/nginx/modules}
export NGINX_LOAD_STREAM="load_module $NGINX_MODULES_DIR/ngx_stream_module.so;"
export NGINX_LISTEN_HOST=127.0.0.1
export API_1_ADDR=127.0.0.1:$API_1_PORT API_2_ADDR=127.0.0.1:$API_2_PORT
export WEBHOOK_ADDR=127.0.0.1:$WEBHOOK_PORT
export REPLICA1_ADDR=127.0.0.1:$PG_REPLICA1_PORT REPLICA2_ADDR=127.0.0.1:$PG_REPLICA2_PORT
NGINX=${NGINX:-/usr/sbin/nginx}
CONF=$NGINX_PREFIX/nginx.conf

running() { kill -0 "$(cat "$NGINX_PREFIX/nginx.pid" 2>/dev/null)" 2>/dev/null; }

up() {
    [ -x "$NGINX" ] || die "nginx not found at $NGINX (apt-get install nginx libnginx-mod-stream)"
    [ -f "$NGINX_MODULES_DIR/ngx_stream_module.so" ] || die "nginx stream module missing (apt-get install libnginx-mod-stream)"
    mkdir -p "$NGINX_PREFIX/tmp" "$LOG_DIR"
    render "$ROOT/nginx/nginx.conf" "$CONF"
    "$NGINX" -t -q -p "$NGINX_PREFIX" -c "$CONF" 2>"$LOG_DIR/nginx-test.log" ||
        die "nginx config invalid: $(cat "$LOG_DIR/nginx-test.log")"
    if running; then
        "$NGINX" -p "$NGINX_PREFIX" -c "$CONF" -s reload 2>/dev/null
    else
        for p in "$NGINX_HTTP_PORT" "$NGINX_PG_PORT"; do
            if port_open "$p"; then die "nginx: port $p is taken by a process this stack did not start"; fi
        done
        "$NGINX" -p "$NGINX_PREFIX" -c "$CONF" 2>>"$LOG_DIR/nginx-error.log" || die "nginx did not start; see $LOG_DIR/nginx-error.log"
    fi
    wait_for "nginx on :$NGINX_HTTP_PORT and :$NGINX_PG_PORT" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NGINX_HTTP_PORT && exec 4<>/dev/tcp/127.0.0.1/$NGINX_PG_PORT" ||
        die "nginx is not listening; see $LOG_DIR/nginx-error.log"
}

down() {
    if running; then
        "$NGINX" -p "$NGINX_PREFIX" -c "$CONF" -s quit 2>/dev/null
        for _ in $(seq 1 50); do running || return 0; sleep 0.1; done
    fi
}

case ${1:-} in
up) up ;;
down) down ;;
status)
    if running; then s=up; else s=down; fi
    printf '  %-19s %-15s %s\n' nginx "127.0.0.1:$NGINX_HTTP_PORT" "$s (http), replicas on 127.0.0.1:$NGINX_PG_PORT"
    ;;
*) die "usage: $0 up|down|status" ;;
esac
