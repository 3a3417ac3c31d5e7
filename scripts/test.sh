#!/usr/bin/env bash
# Set up and run the whole test suite: lint, types, and pytest on SQLite and PostgreSQL.
# Uses AIEM_TEST_POSTGRES_URL when set; otherwise starts a throwaway PostgreSQL server when
# its binaries are installed (Debian: apt-get install postgresql).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

cleanup() { :; }
trap 'cleanup' EXIT
if [ -z "${AIEM_TEST_POSTGRES_URL:-}" ]; then
    source scripts/pg-temp.sh
    if pg_temp_start; then
        cleanup() { pg_temp_stop; }
    fi
fi

.venv/bin/ruff check .
.venv/bin/mypy
# Three workers (AIEM_TEST_WORKERS; 0 runs in this process), also on two cores: most tests wait
# on Chromium, servers and timers rather than use a core (measured here: 9.5 min with three,
# 10.5 with two). Whole modules go to one worker, so a module's shared gateway process or
# browser is started once; they are handed out in the order the suite collects them (the
# longest first: tests/conftest.py).
.venv/bin/python -m pytest -n "${AIEM_TEST_WORKERS:-3}" --dist loadscope --no-loadscope-reorder \
    --durations=25 "$@"
