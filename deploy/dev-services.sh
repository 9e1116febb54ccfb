#!/usr/bin/env bash
# PostgreSQL and Redis for development and tests, from Debian's packages, on 127.0.0.1 and
# non-default ports, with data in git-ignored folders under deploy/dev-services/.
#
#   deploy/dev-services.sh start|stop|status
#
# Ports: AGENTSTREAM_DEV_PG_PORT (55432), AGENTSTREAM_DEV_REDIS_PORT (56379). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
HERE="$(pwd)/dev-services"
PG_PORT="${AGENTSTREAM_DEV_PG_PORT:-55432}"
REDIS_PORT="${AGENTSTREAM_DEV_REDIS_PORT:-56379}"
PG_DATA="$HERE/data/postgres-$PG_PORT"
REDIS_DIR="$HERE/data/redis-$REDIS_PORT"
LOGS="$HERE/logs"

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [[ -n "$dir" ]] && echo "$dir"
}

as_postgres() {
  if [[ "$(id -u)" == "0" ]]; then runuser -u postgres -- "$@"; else "$@"; fi
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

start_postgres() {
  local bin; bin="$(pg_bin)"
  mkdir -p "$LOGS" "$(dirname "$PG_DATA")"
  if [[ "$(id -u)" == "0" ]]; then chown postgres "$(dirname "$PG_DATA")" "$LOGS"; fi
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if as_postgres "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    echo "postgres already running on 127.0.0.1:$PG_PORT"
    return
  fi
  as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$LOGS/postgres-$PG_PORT.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k /tmp -c max_connections=300 -c fsync=off -c synchronous_commit=off" start >/dev/null
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
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
