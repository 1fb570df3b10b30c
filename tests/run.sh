#!/usr/bin/env bash
# The whole test suite: starts the services the tests need when they are down, then runs
# formatting and lint checks and every test against real Redis, MariaDB and PostgreSQL.
# Usage: bash tests/run.sh   (extra arguments go to `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

wait_until() { # wait_until SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then echo "timed out waiting for: $*" >&2; return 1; fi
    sleep 0.5
  done
}

log "services"
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_until 30 redis-cli -h 127.0.0.1 -p 6379 ping
if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
wait_until 60 pg_isready -h 127.0.0.1 -p 5432
if ! mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_until 60 mysqladmin -h 127.0.0.1 -uroot ping
echo "redis, postgresql, mariadb: up"

# Each test makes its own database (fct_*); drop those earlier runs left behind.
for db in $(mysql -h 127.0.0.1 -uroot -N -e "SHOW DATABASES LIKE 'fct\_%'"); do
  mysql -h 127.0.0.1 -uroot -e "DROP DATABASE \`$db\`"
done
for db in $(psql -h 127.0.0.1 -U postgres -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'fct\_%'"); do
  psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE \"$db\""
done

log "format"
cargo fmt --all -- --check

log "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests"
cargo test --workspace --locked "$@"
