# shellcheck shell=bash
# A throwaway PostgreSQL server for the tests: pg_temp_start exports AIEM_TEST_POSTGRES_URL.

pg_temp_bindir() {
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir; return
    fi
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

pg_temp_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_temp_start() {
    local bindir
    bindir="$(pg_temp_bindir || true)"
    if [ -z "$bindir" ]; then
        echo "tests: PostgreSQL not installed; PostgreSQL store tests will be skipped" >&2
        return 1
    fi
    PG_TEMP_DIR="$(mktemp -d /tmp/aiem-pg.XXXXXX)"
    # A port the OS says is free right now (no fixed default that another server may hold).
    PG_TEMP_PORT="${PG_TEMP_PORT:-$(pg_temp_free_port)}"
    local run=()
    if [ "$(id -u)" = "0" ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$PG_TEMP_DIR"
        run=(runuser -u postgres --)
    fi
    "${run[@]}" "$bindir/initdb" -D "$PG_TEMP_DIR/data" -U aiem --auth=trust -E UTF8 >/dev/null
    # Room for three test workers, each with several instances holding connection pools.
    "${run[@]}" "$bindir/pg_ctl" -D "$PG_TEMP_DIR/data" -l "$PG_TEMP_DIR/log" -w \
        -o "-p $PG_TEMP_PORT -k $PG_TEMP_DIR -c listen_addresses=127.0.0.1 -c fsync=off \
            -c max_connections=300" start >/dev/null
    PG_TEMP_RUN=("${run[@]}")
    PG_TEMP_BIN="$bindir"
    export AIEM_TEST_POSTGRES_URL="postgresql://aiem@127.0.0.1:$PG_TEMP_PORT/postgres"
    echo "tests: PostgreSQL started on 127.0.0.1:$PG_TEMP_PORT" >&2
}

pg_temp_stop() {
    if [ -n "${PG_TEMP_DIR:-}" ]; then
        "${PG_TEMP_RUN[@]}" "$PG_TEMP_BIN/pg_ctl" -D "$PG_TEMP_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_TEMP_DIR"
    fi
}
