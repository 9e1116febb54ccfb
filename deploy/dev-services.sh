#!/usr/bin/env bash
# PostgreSQL and Redis for development and tests, from Debian's packages, on 127.0.0.1 and
# non-default ports.
#
#   deploy/dev-services.sh start|stop|status|where
#
# Ports: AGENTSTREAM_DEV_PG_PORT (55432), AGENTSTREAM_DEV_REDIS_PORT (56379). Idempotent.
#
# Where the data lives: run as a normal user, everything is under deploy/dev-services/ of this
# clone (PostgreSQL runs as you). Run as root, PostgreSQL must run as the `postgres` user, which
# may not be allowed to enter the clone's parents (a clone under /root, mode 0700): its data and
# log then live under /var/tmp/agentstream-dev-services/<clone key>/, a directory `postgres` owns,
# keyed by this clone's absolute path so two clones never share a cluster; deploy/dev-services/
# postgres-data links to it. Redis always runs as the caller, under deploy/dev-services/.
set -euo pipefail
cd "$(dirname "$0")"
HERE="$(pwd)/dev-services"
PG_PORT="${AGENTSTREAM_DEV_PG_PORT:-55432}"
REDIS_PORT="${AGENTSTREAM_DEV_REDIS_PORT:-56379}"
REDIS_DIR="$HERE/data/redis-$REDIS_PORT"
LOGS="$HERE/logs"

if [[ "$(id -u)" == "0" ]]; then
  # 16 hex digits of the clone's path: unique per clone, stable across runs (stop finds start's data).
  KEY="$(printf '%s' "$(pwd)" | sha256sum | cut -c1-16)"
  PG_ROOT="${AGENTSTREAM_DEV_PG_ROOT:-/var/tmp/agentstream-dev-services}/$KEY"
else
  PG_ROOT="$HERE/postgres"
fi
PG_DATA="$PG_ROOT/data-$PG_PORT"
PG_LOG="$PG_ROOT/postgres-$PG_PORT.log"

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [[ -n "$dir" ]] && echo "$dir"
}

# As root, PostgreSQL's tools run as `postgres`, from / (the caller's directory may be closed to it).
as_postgres() {
  if [[ "$(id -u)" == "0" ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

install_missing() {
  local missing=()
  [[ -n "$(pg_bin || true)" ]] || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if ((${#missing[@]})); then
    if [[ "$(id -u)" != "0" ]]; then
      echo "missing ${missing[*]}: install them (apt-get install -y ${missing[*]})" >&2
      exit 1
    fi
    echo "installing ${missing[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

prepare_pg_root() {
  mkdir -p "$PG_ROOT" "$HERE"
  if [[ "$(id -u)" == "0" ]]; then
    mkdir -p "$(dirname "$PG_ROOT")"
    chmod 0755 "$(dirname "$PG_ROOT")"
    chown postgres: "$PG_ROOT"
    chmod 0700 "$PG_ROOT"
    ln -sfn "$PG_ROOT" "$HERE/postgres-data"
  fi
}

start_postgres() {
  local bin; bin="$(pg_bin)"
  prepare_pg_root
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    echo "postgres already running on 127.0.0.1:$PG_PORT"
    return
  fi
  # Another clone's (or an older layout's) cluster on the port: use it, as for Redis below; tests
  # make databases of their own. `stop` leaves it alone (it is not this clone's).
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then
    echo "postgres already answering on 127.0.0.1:$PG_PORT (not this clone's data: left as it is)"
    return
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k /tmp -c max_connections=300 -c fsync=off -c synchronous_commit=off" start >/dev/null; then
    echo "postgres did not start on 127.0.0.1:$PG_PORT; its log: $PG_LOG" >&2
    tail -5 "$PG_LOG" >&2 || true
    exit 1
  fi
  echo "postgres up on 127.0.0.1:$PG_PORT (data $PG_DATA)"
}

stop_postgres() {
  local bin; bin="$(pg_bin || true)"
  [[ -n "$bin" && -f "$PG_DATA/PG_VERSION" ]] || return 0
  as_postgres "$bin/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
}

redis_cli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

start_redis() {
  mkdir -p "$REDIS_DIR" "$LOGS"
  if redis_cli ping >/dev/null 2>&1; then
    echo "redis already running on 127.0.0.1:$REDIS_PORT"
    return
  fi
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --daemonize yes \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$LOGS/redis-$REDIS_PORT.log" --save "" --appendonly no
  for _ in $(seq 50); do redis_cli ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis_cli ping >/dev/null
  echo "redis up on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
  redis_cli shutdown nosave >/dev/null 2>&1 || true
}

case "${1:-start}" in
  start) install_missing; start_postgres; start_redis ;;
  stop) stop_redis; stop_postgres ;;
  status)
    as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DATA" status || true
    redis_cli ping || true ;;
  where) echo "$PG_ROOT" ;;  # `make clean` removes it
  *) echo "usage: $0 start|stop|status|where" >&2; exit 2 ;;
esac
