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
# The load generator and the command-line client see Tern only as users
# do, through its public API: they depend on no Tern crate.
for crate in tern-bench tern-cli; do
  deps=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  if grep -x 'tern.*' <<<"$deps" | grep -vqx "$crate"; then
    echo "dependency rule broken: $crate depends on a Tern crate" >&2
    fail=1
  fi
done
exit "$fail"
