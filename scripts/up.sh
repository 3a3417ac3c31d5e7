#!/usr/bin/env bash
# Set up and start the console and the API on http://127.0.0.1:8001 (SQLite under ./data).
# The install step runs only when the project's dependencies changed since the last one: the
# package is installed editable, so code changes need no reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.aiem-installed
wanted="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/aiem ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    bash scripts/setup.sh
    echo "$wanted" > "$stamp"
fi
exec .venv/bin/aiem up "$@"
