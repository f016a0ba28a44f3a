#!/usr/bin/env bash
# Tern's whole test suite: formatting, lints, unit and integration tests.
# Integration tests start the real `tern` binary on free ports and talk to
# it over real HTTP and WebSocket connections.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== dependency rules"
deploy/check-deps.sh

echo "== test"
cargo test --workspace --all-targets --locked
