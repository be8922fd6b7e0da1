#!/usr/bin/env bash
# Make sure Redis and PostgreSQL answer, starting local servers that are installed but stopped,
# and create Clara's database. Prints what to run when a service is missing altogether.
set -euo pipefail

REDIS_HOST=${CLARA_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${CLARA_REDIS_PORT:-6379}
PG_HOST=${CLARA_PG_HOST:-127.0.0.1}
PG_PORT=${CLARA_PG_PORT:-5432}
PG_DATABASE=${CLARA_PG_DATABASE:-clara}

redis_up() { (exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

wait_for() {  # wait_for NAME CHECK
  for _ in $(seq 1 30); do "$2" && return 0; sleep 1; done
  echo "$1 did not come up." >&2; return 1
}

missing=()
if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "Starting the local Redis server."
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis_up
  else
    missing+=(redis)
  fi
fi
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "Starting the local PostgreSQL server."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_for PostgreSQL pg_up
  else
    missing+=(postgres)
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "Not running and not installed here: ${missing[*]}. Start them with:" >&2
  echo "  cp .env.example .env   # then fill in its secrets" >&2
  echo "  docker compose up -d redis postgres" >&2
  echo "and point Clara at them: CLARA_DATABASE_URL=postgresql://clara:<POSTGRES_PASSWORD>@127.0.0.1:5432/clara" >&2
  exit 1
fi
# A local server with the postgres superuser (as in development and CI) gets Clara's database made
# for it; a server from docker compose already has it, owned by its own user.
exists=$(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'" postgres 2>/dev/null || echo unknown)
if [ -z "$exists" ]; then
  echo "Creating database $PG_DATABASE."
  psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE \"$PG_DATABASE\"" postgres
fi
echo "Redis and PostgreSQL are up."
