#!/usr/bin/env bash
# Runs Tern's distributed topology on this machine as separate processes:
# auth, group, message and offline services plus two gateways on
# 127.0.0.1:8081 and 127.0.0.1:8082, on the local Redis and MariaDB (started
# when they are not running).
#
#   deploy/local-cluster.sh up      build, start, wait until every part is ready
#   deploy/local-cluster.sh down    stop what `up` started
#   deploy/local-cluster.sh status  process list with resident memory
#
# State (pids, logs, the JWT key and the service token) lives in
# target/local-cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=target/local-cluster
profile=${TERN_PROFILE:-release}
bin=target/$profile
db_url=${TERN_CLUSTER_MYSQL_URL:-mysql://root@127.0.0.1:3306}
redis_url=${TERN_CLUSTER_REDIS_URL:-redis://127.0.0.1:6379}
services=(auth group message offline)
declare -A port=([auth]=50051 [group]=50052 [message]=50053 [offline]=50054)

start() {
  local name=$1; shift
  env "$@" RUST_LOG="${RUST_LOG:-info}" "$bin/$name" >"$dir/$name${node:+-$node}.log" 2>&1 &
  echo $! >"$dir/$name${node:+-$node}.pid"
}

# GET /ready with bash alone (no curl needed): true on HTTP 200.
http_ok() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1" \
    && printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&3 \
    && read -r -t 2 line <&3 && [[ $line == *" 200 "* ]]) 2>/dev/null
}

ready() {
  for _ in $(seq 1 150); do
    if http_ok "$1" /ready; then return 0; fi
    sleep 0.2
  done
  echo "gateway on :$1 is not ready; see $dir/*.log" >&2
  return 1
}

up() {
  if [[ -e $dir/gateway-1.pid ]]; then
    echo "already up (deploy/local-cluster.sh down first)" >&2
    exit 1
  fi
  deploy/services.sh >/dev/null
  mkdir -p "$dir"
  if [[ $profile == release ]]; then
    cargo build --release --bins --workspace --quiet
  else
    cargo build --bins --workspace --quiet
  fi
  for svc in "${services[@]}"; do
    mariadb -uroot -h127.0.0.1 -e "CREATE DATABASE IF NOT EXISTS tern_$svc"
  done
  [[ -s $dir/jwt.key ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/jwt.key"
  [[ -s $dir/service.token ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/service.token"
  chmod 600 "$dir/jwt.key" "$dir/service.token"
  urls=(TERN__AUTH_URL=http://127.0.0.1:50051 TERN__GROUP_URL=http://127.0.0.1:50052
        TERN__MESSAGE_URL=http://127.0.0.1:50053 TERN__OFFLINE_URL=http://127.0.0.1:50054
        TERN__REDIS_URL=$redis_url TERN__SERVICE_TOKEN="$(cat "$dir/service.token")")
  node=
  start tern-auth TERN__GRPC_ADDR=127.0.0.1:50051 TERN__AUTH__DATABASE_URL="$db_url/tern_auth" "${urls[@]}" \
    TERN__AUTH__JWT__SECRET="$(cat "$dir/jwt.key")"
  start tern-offline TERN__GRPC_ADDR=127.0.0.1:50054 TERN__OFFLINE__DATABASE_URL="$db_url/tern_offline" "${urls[@]}"
  start tern-group TERN__GRPC_ADDR=127.0.0.1:50052 TERN__GROUP__DATABASE_URL="$db_url/tern_group" "${urls[@]}"
  start tern-message TERN__GRPC_ADDR=127.0.0.1:50053 TERN__MESSAGE__DATABASE_URL="$db_url/tern_message" "${urls[@]}"
  for n in 1 2; do
    node=$n start tern-gateway TERN__HTTP_ADDR=127.0.0.1:808$n TERN__GATEWAY__NODE_ID=gw-$n "${urls[@]}" \
      TERN__GATEWAY__JWT__SECRET="$(cat "$dir/jwt.key")"
    mv "$dir/tern-gateway-$n.pid" "$dir/gateway-$n.pid"
  done
  ready 8081
  ready 8082
  echo "Tern cluster is up: gateways at http://127.0.0.1:8081 and http://127.0.0.1:8082"
  status
}

down() {
  shopt -s nullglob
  local pids=()
  for f in "$dir"/*.pid; do
    pids+=("$(cat "$f")")
  done
  ((${#pids[@]})) || { echo "nothing running"; return 0; }
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.2
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  rm -f "$dir"/*.pid
  echo "Tern cluster stopped"
}

status() {
  shopt -s nullglob
  printf '%-16s %8s %10s\n' PROCESS PID RSS_KIB
  for f in "$dir"/*.pid; do
    local p name
    p=$(cat "$f"); name=$(basename "$f" .pid)
    printf '%-16s %8s %10s\n' "$name" "$p" "$(ps -o rss= -p "$p" 2>/dev/null | tr -d ' ' || echo gone)"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 64 ;;
esac
