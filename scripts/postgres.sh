#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite, on 127.0.0.1 only.
#
#   scripts/postgres.sh        install Debian's postgresql if missing, start (or reuse) the
#                              cluster, create the test database, print its SQLAlchemy URL
#   scripts/postgres.sh stop   stop the cluster and delete its data directory
#
# Only the URL goes to stdout, so a Makefile can do
#   FORGETBENCH_TEST_PG_URL="$$(scripts/postgres.sh)" && export FORGETBENCH_TEST_PG_URL && ...
# Idempotent: a second call finds the running cluster and prints the same URL.
# FORGETBENCH_PG_PORT (default 55432) and FORGETBENCH_PG_DIR choose the port and data directory.
set -euo pipefail

PORT="${FORGETBENCH_PG_PORT:-55432}"
DATA="${FORGETBENCH_PG_DIR:-${TMPDIR:-/tmp}/forgetbench-pg-$PORT}"
ROLE=forgetbench
DATABASE=forgetbench_test

log() { echo "postgres.sh: $*" >&2; }

bindir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1; }

# initdb and the server refuse to run as root: as root, run them as Debian's postgres user.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install_postgres() {
  if [ -n "$(bindir)" ]; then
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL is not installed; run as root or: sudo apt-get install -y postgresql"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show postgresql >/dev/null 2>&1; then
    log "apt-get update (no package lists yet)"
    apt-get update >&2
  fi
  log "apt-get install postgresql"
  apt-get install -y --no-install-recommends postgresql >&2
}

init_cluster() {
  local bin=$1
  if [ -f "$DATA/PG_VERSION" ]; then
    return
  fi
  log "initdb $DATA"
  mkdir -p "$DATA"
  chmod 700 "$DATA"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$DATA"
  fi
  as_owner "$bin/initdb" -D "$DATA" -U "$ROLE" --auth=trust --no-locale -E UTF8 --no-sync >/dev/null
  # Throwaway data: durability settings off make the tests faster.
  cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

start_cluster() {
  local bin=$1
  if as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "reusing the server running in $DATA"
    return
  fi
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    log "port $PORT is taken by another server; set FORGETBENCH_PG_PORT"
    exit 1
  fi
  log "starting PostgreSQL on 127.0.0.1:$PORT"
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 start >&2
}

create_database() {
  local bin=$1
  local exists
  exists=$("$bin/psql" -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")
  if [ "$exists" != 1 ]; then
    "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U "$ROLE" "$DATABASE"
  fi
}

stop_cluster() {
  local bin
  bin=$(bindir)
  if [ -n "$bin" ] && [ -f "$DATA/PG_VERSION" ]; then
    as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
  fi
  rm -rf "$DATA"
  log "stopped and removed $DATA"
}

main() {
  if [ "${1:-}" = stop ]; then
    stop_cluster
    return
  fi
  install_postgres
  local bin
  bin=$(bindir)
  init_cluster "$bin"
  start_cluster "$bin"
  create_database "$bin"
  echo "postgresql+psycopg://$ROLE@127.0.0.1:$PORT/$DATABASE"
}

main "$@"
