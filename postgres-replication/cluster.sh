#!/usr/bin/env bash
# One PostgreSQL 15 primary (wal_level=logical) and two hot-standby replicas made with
# pg_basebackup -R, each with its own data dir and port.
#
#   cluster.sh up       create what is missing, repair what is half-made, start all three
#   cluster.sh down     stop all three (data kept)
#   cluster.sh status   one line per node
#   cluster.sh stop-primary | start-primary   (tests: analytics must survive a dead primary)
set -euo pipefail
# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

HERE=$ROOT/postgres-replication
# The postgres OS user must reach its data and log files. A clone under a directory it
# cannot traverse (e.g. /root, or a mktemp -d) gets its data dir under postgres's home.
# The choice sticks once made: a data dir found in either place is used.
mkdir -p "$STACK_DIR"
PG_HOME_DIR=/var/lib/postgresql/paystream-$(printf '%s' "$STACK_DIR" | sha1sum | cut -c1-12)
if [ -d "$PG_HOME_DIR" ] && [ ! -d "$STACK_DIR/pg" ]; then
    PG_DIR=$PG_HOME_DIR
elif [ "$(id -u)" = 0 ] && [ ! -d "$STACK_DIR/pg" ] && ! runuser -u postgres -- test -x "$STACK_DIR" 2>/dev/null; then
    PG_DIR=$PG_HOME_DIR
else
    PG_DIR=$STACK_DIR/pg
fi
PRIMARY=$PG_DIR/primary
# The nodes' copy of the stack's certificates ($PG_TLS_DIR), where the postgres user can
# read them: the server key must belong to it (mode 0600), and a replica's walreceiver
# verifies the primary with the CA there.
export PG_SERVER_TLS_DIR=$PG_DIR/tls
READY_MARK=.paystream-ready
# pg_basebackup copies the primary's files, markers included: replicas need their own.
REPLICA_MARK=.paystream-replica-ready

psql_admin() {
    PGSSLMODE=verify-full PGSSLROOTCERT=$PG_CA_FILE PGPASSWORD=$PG_SUPERUSER_PASSWORD "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -q \
        -h 127.0.0.1 -U postgres "$@"
}

node_dir() { echo "$PG_DIR/$1"; }

# Server logs live beside the data (written by the postgres user) and are linked into
# $LOG_DIR with the other logs.
node_log() {
    mkdir -p "$LOG_DIR"
    pg_owned_dir "$PG_DIR/logs"
    local f=$PG_DIR/logs/$1.log
    as_pg touch "$f"
    ln -sfn "$f" "$LOG_DIR/pg-$1.log"
    echo "$f"
}

# Copies a file the postgres user may not be able to read into its data dir.
install_as_pg() { as_pg tee "$2" <"$1" >/dev/null; }
node_port() {
    case $1 in
    primary) echo "$PG_PRIMARY_PORT" ;;
    replica1) echo "$PG_REPLICA1_PORT" ;;
    replica2) echo "$PG_REPLICA2_PORT" ;;
    esac
}

# install_tls: copies the certificates into $PG_SERVER_TLS_DIR as the postgres user; says
# (exit 0) whether any changed, so that running nodes reload them.
install_tls() {
    local f changed=1
    make_pg_tls
    pg_owned_dir "$PG_DIR"
    pg_owned_dir "$PG_SERVER_TLS_DIR"
    for f in ca.crt server.crt server.key; do
        if ! cmp -s "$PG_TLS_DIR/$f" "$PG_SERVER_TLS_DIR/$f"; then
            as_pg sh -c 'umask 077 && cat >"$1.tmp" && mv "$1.tmp" "$1"' sh "$PG_SERVER_TLS_DIR/$f" <"$PG_TLS_DIR/$f"
            changed=0
        fi
    done
    return $changed
}

pg_running() { as_pg "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }

start_node() {
    local name=$1 dir port
    dir=$(node_dir "$name")
    port=$(node_port "$name")
    if pg_running "$dir"; then return 0; fi
    if port_open "$port"; then
        die "postgres $name: port $port is taken by another process (set PG_*_PORT to move the stack)"
    fi
    local logf
    logf=$(node_log "$name")
    # A crashed server leaves a stale postmaster.pid; pg_ctl copes with that itself.
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$logf" -w -t 60 start >/dev/null ||
        die "postgres $name did not start; see $logf: $(tail -n 5 "$logf")"
}

stop_node() {
    local dir
    dir=$(node_dir "$1")
    if [ -d "$dir" ] && pg_running "$dir"; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null
    fi
}

system_id() { as_pg "$PG_BIN/pg_controldata" "$1" 2>/dev/null | awk -F: '/system identifier/ {gsub(/ /,"",$2); print $2}'; }

init_primary() {
    if [ -f "$PRIMARY/$READY_MARK" ]; then return 0; fi
    if [ -d "$PRIMARY" ]; then
        warn "primary data dir is half-made (no $READY_MARK); rebuilding it and its replicas"
        stop_node primary || true
        rm -rf "$PG_DIR"
    fi
    log "initialising primary in $PRIMARY"
    pg_owned_dir "$PG_DIR"
    local pwfile=$PG_DIR/.pwfile
    (umask 077 && printf '%s\n' "$PG_SUPERUSER_PASSWORD" | as_pg tee "$pwfile" >/dev/null)
    as_pg "$PG_BIN/initdb" -D "$PRIMARY" -U postgres --pwfile="$pwfile" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$LOG_DIR/initdb.log" 2>&1 ||
        die "initdb failed: $(tail -n 5 "$LOG_DIR/initdb.log")"
    rm -f "$pwfile"
    echo "include_if_exists = 'paystream.conf'" | as_pg tee -a "$PRIMARY/postgresql.conf" >/dev/null
    as_pg touch "$PRIMARY/$READY_MARK.pending"
}

# configure NODE TEMPLATE: renders the node's settings into its data dir on every `up`,
# so an edited template takes effect; a running node whose settings changed restarts.
configure() {
    local name=$1 template=$2 dir tmp
    dir=$(node_dir "$name")
    tmp=$STACK_DIR/$name.conf.tmp
    PG_NAME=$name PG_PORT=$(node_port "$name") render "$template" "$tmp"
    cp "$HERE/pg_hba.conf" "$tmp.hba"
    if ! cmp -s "$tmp" "$dir/paystream.conf" || ! cmp -s "$tmp.hba" "$dir/pg_hba.conf"; then
        install_as_pg "$tmp" "$dir/paystream.conf"
        install_as_pg "$tmp.hba" "$dir/pg_hba.conf"
        if pg_running "$dir"; then
            log "postgres $name: settings changed, restarting"
            as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 60 restart -l "$(node_log "$name")" >/dev/null
        fi
    fi
    rm -f "$tmp" "$tmp.hba"
}

setup_roles() {
    psql_admin -p "$PG_PRIMARY_PORT" -d postgres \
        -v app_password="$PG_APP_PASSWORD" -v replicator_password="$PG_REPLICATOR_PASSWORD" \
        -v debezium_password="$PG_DEBEZIUM_PASSWORD" -v analyst_password="$PG_ANALYST_PASSWORD" \
        -v db="$PG_DB" -f "$HERE/setup.sql" >/dev/null
    if [ -f "$PRIMARY/$READY_MARK.pending" ]; then
        as_pg mv "$PRIMARY/$READY_MARK.pending" "$PRIMARY/$READY_MARK"
    fi
}

# A replica is usable when it finished its base backup (marker), is a standby, comes
# from this primary (same system identifier: a re-initialised primary orphans it), and
# verifies the primary's certificate (one made before TLS would stream unverified).
replica_ok() {
    local dir=$1
    [ -f "$dir/$REPLICA_MARK" ] && [ -f "$dir/standby.signal" ] &&
        [ "$(system_id "$dir")" = "$(system_id "$PRIMARY")" ] &&
        grep -Eq "sslmode=('')?verify-full" "$dir/postgresql.auto.conf" 2>/dev/null
}

build_replica() {
    local name=$1 dir port
    dir=$(node_dir "$name")
    port=$(node_port "$name")
    if [ -d "$dir" ]; then
        replica_ok "$dir" && return 0
        warn "$name is half-made or belongs to an older primary; rebuilding it"
        stop_node "$name" || true
        rm -rf "$dir"
    fi
    log "making $name with pg_basebackup -R (port $port)"
    # A physical slot per replica: the primary keeps WAL until the replica has it.
    psql_admin -p "$PG_PRIMARY_PORT" -d postgres -c \
        "SELECT pg_drop_replication_slot('$name') FROM pg_replication_slots WHERE slot_name = '$name' AND NOT active" >/dev/null
    # -R writes these TLS settings into primary_conninfo: the replica keeps verifying.
    as_pg env PGPASSWORD="$PG_REPLICATOR_PASSWORD" PGSSLMODE=verify-full PGSSLROOTCERT="$PG_SERVER_TLS_DIR/ca.crt" \
        "$PG_BIN/pg_basebackup" \
        -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U replicator -D "$dir" -R -X stream -c fast -C -S "$name" \
        >"$LOG_DIR/basebackup-$name.log" 2>&1 ||
        die "pg_basebackup for $name failed: $(tail -n 5 "$LOG_DIR/basebackup-$name.log")"
    as_pg touch "$dir/$REPLICA_MARK"
}

streaming() {
    local n
    n=$(psql_admin -p "$PG_PRIMARY_PORT" -d postgres -tAc \
        "SELECT count(*) FROM pg_stat_replication WHERE application_name IN ('replica1','replica2') AND state = 'streaming'")
    [ "$n" = 2 ]
}

in_recovery() {
    [ "$(psql_admin -p "$1" -d postgres -tAc 'SELECT pg_is_in_recovery()')" = t ]
}

up() {
    load_secrets
    mkdir -p "$LOG_DIR"
    [ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 server binaries not found in $PG_BIN (apt-get install postgresql-15)"
    init_primary
    local tls_changed=0
    if install_tls; then tls_changed=1; fi
    configure primary "$HERE/primary.conf"
    start_node primary
    setup_roles
    for r in replica1 replica2; do
        build_replica "$r"
        configure "$r" "$HERE/replica.conf"
        start_node "$r"
        wait_for "postgres $r in recovery" 30 in_recovery "$(node_port "$r")" ||
            die "postgres $r is up but not a standby; see $LOG_DIR/pg-$r.log"
    done
    if [ "$tls_changed" = 1 ]; then
        # New certificates take effect on reload (a node just started has them already).
        for n in primary replica1 replica2; do
            if pg_running "$(node_dir "$n")"; then as_pg "$PG_BIN/pg_ctl" -D "$(node_dir "$n")" reload >/dev/null; fi
        done
    fi
    wait_for "replicas streaming" 30 streaming ||
        die "replicas are not streaming from the primary; see $LOG_DIR/pg-replica*.log"
}

down() {
    for n in replica2 replica1 primary; do stop_node "$n"; done
}

status() {
    load_secrets
    for n in primary replica1 replica2; do
        local dir port state
        dir=$(node_dir "$n")
        port=$(node_port "$n")
        if [ -d "$dir" ] && pg_running "$dir"; then
            state=up
            if [ "$n" != primary ]; then
                state="up, standby=$(psql_admin -p "$port" -d postgres -tAc 'SELECT pg_is_in_recovery()' 2>/dev/null || echo '?')"
            fi
        else
            state=down
        fi
        printf '  %-19s %-15s %s\n' "postgres-$n" "127.0.0.1:$port" "$state"
    done
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
stop-primary) stop_node primary ;;
start-primary) load_secrets && start_node primary ;;
clean)
    down
    rm -rf "$PG_DIR"
    ;;
*) die "usage: $0 up|down|status|clean|stop-primary|start-primary" ;;
esac
