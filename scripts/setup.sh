#!/usr/bin/env bash
# Create .venv and install the project (with test extras when asked: setup.sh --test).
# Finds a Chromium for web chat endpoints: Playwright's own when installed, else the system one.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: Python 3.11 or newer is required (set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"

# A browser for web chat endpoints: the system Chromium, or Playwright's download.
if [ -z "${AIEM_BROWSER_EXECUTABLE:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Chromium from the system packages" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        .venv/bin/python -m playwright install chromium || \
            echo "setup: no Chromium found; web chat endpoints need AIEM_BROWSER_EXECUTABLE" >&2
    fi
fi
