#!/usr/bin/env bash
# Makes sure the servers the test suite talks to are installed and running
# on this machine: Redis (127.0.0.1:6379), MariaDB (root without password,
# database `test`) and PostgreSQL (user postgres, trusted on 127.0.0.1,
# database `test`), and the S3-compatible server the attachment tests start
# themselves (s3s-fs, installed from crates.io). Already-running servers are
# left alone. Debian only.
set -euo pipefail

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

install_missing() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v mariadbd >/dev/null || [[ -x /usr/sbin/mariadbd ]] || missing+=(mariadb-server)
  command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
  if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

wait_for() {
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$what did not come up" >&2
  return 1
}

redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && read -r -t 1 reply <&3 && [[ $reply == +PONG* ]]) 2>/dev/null; }
mariadb_up() { mariadb -uroot -h127.0.0.1 -e 'SELECT 1' >/dev/null 2>&1; }
postgres_up() { psql -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; }

install_missing

if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis redis_up

if ! mariadb_up; then
  echo "starting MariaDB"
  as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_for MariaDB mariadb_up
mariadb -uroot -h127.0.0.1 -e 'CREATE DATABASE IF NOT EXISTS test'

if ! postgres_up; then
  echo "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  # Test machines only: trust local TCP connections, as the suite expects.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
wait_for PostgreSQL postgres_up
psql -h 127.0.0.1 -U postgres -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test'
# The attachment tests start their own S3 server over a temporary folder.
if ! command -v s3s-fs >/dev/null && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]]; then
  echo "installing s3s-fs (the S3 server of the attachment tests)"
  cargo install --locked s3s-fs --version 0.14.1 --features binary
fi
echo "Redis, MariaDB and PostgreSQL are up; s3s-fs is installed"
