#!/usr/bin/env bash
# Install what the integration tests need: Debian build packages for passerelle and a
# Python venv with a pinned Synapse. Idempotent; returns quickly when all is in place.
#
#   PASSERELLE_CACHE   cache root (default: $HOME/.cache/passerelle)
#   The venv goes to $PASSERELLE_CACHE/synapse-venv (the tests also honour
#   PASSERELLE_SYNAPSE_VENV to point elsewhere).
set -euo pipefail

SYNAPSE_VERSION="1.163.2"
CACHE="${PASSERELLE_CACHE:-$HOME/.cache/passerelle}"
VENV="$CACHE/synapse-venv"

# Debian packages. No openssl-sys in Cargo.lock (TLS is rustls + aws-lc-sys, built with
# the cc builder, so no cmake either); sqlite is bundled.
DEB_PACKAGES=(build-essential pkg-config python3 python3-venv ca-certificates curl)

missing=()
if command -v dpkg >/dev/null 2>&1; then
    for p in "${DEB_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
else
    echo "install-test-deps: no dpkg here; skipping Debian packages" >&2
fi
if ((${#missing[@]})); then
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "install-test-deps: need root or sudo to install: ${missing[*]}" >&2
            exit 1
        }
        SUDO=(sudo)
    fi
    echo "install-test-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

installed_version() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m
print(m.version("matrix-synapse"))
PY
}

if [ "$(installed_version || true)" = "$SYNAPSE_VERSION" ]; then
    echo "install-test-deps: matrix-synapse $SYNAPSE_VERSION already in $VENV"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "install-test-deps: $PYTHON is older than 3.10; Synapse $SYNAPSE_VERSION needs >= 3.10" >&2
    exit 1
fi

mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    # Missing or broken (e.g. its base interpreter went away): build it afresh.
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "install-test-deps: installing matrix-synapse $SYNAPSE_VERSION into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "matrix-synapse==$SYNAPSE_VERSION"

got="$(installed_version || true)"
if [ "$got" != "$SYNAPSE_VERSION" ]; then
    echo "install-test-deps: expected matrix-synapse $SYNAPSE_VERSION in $VENV, found '${got:-none}'" >&2
    exit 1
fi
echo "install-test-deps: matrix-synapse $SYNAPSE_VERSION ready in $VENV"
