#!/usr/bin/env bash
# Checks the dependency rules of ARCHITECTURE.md with `cargo tree`.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
services=(tern-auth tern-group tern-message tern-offline)
for crate in "${services[@]}"; do
  deps=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  for other in "${services[@]}" tern-gateway fastwebsockets; do
    [[ "$other" == "$crate" ]] && continue
    if grep -qx "$other" <<<"$deps"; then
      echo "dependency rule broken: $crate depends on $other" >&2
      fail=1
    fi
  done
done
for crate in tern-proto tern-runtime tern-bus tern-webhook; do
  deps=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  for other in "${services[@]}" tern-gateway; do
    if grep -qx "$other" <<<"$deps"; then
      echo "dependency rule broken: $crate depends on $other" >&2
      fail=1
    fi
  done
done
# The command-line client sees Tern only as users do, through its public
# API: it depends on no Tern crate. So does the test kit, which starts the
# built binaries and talks to them over sockets; the load generator may
# depend on the test kit and on nothing else of Tern's.
tern_deps() {
  cargo tree -p "$1" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u |
    grep -x 'tern.*' | grep -vx "$1" || true
}
for crate in tern-cli tern-testkit; do
  if [[ -n "$(tern_deps "$crate")" ]]; then
    echo "dependency rule broken: $crate depends on a Tern crate" >&2
    fail=1
  fi
done
if [[ -n "$(tern_deps tern-bench | grep -vx tern-testkit)" ]]; then
  echo "dependency rule broken: tern-bench depends on a Tern crate other than tern-testkit" >&2
  fail=1
fi
exit "$fail"
