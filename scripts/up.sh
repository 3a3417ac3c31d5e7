#!/usr/bin/env bash
# Set up and start the console and the API on http://127.0.0.1:8001 (SQLite under ./data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/aiem up "$@"
