#!/usr/bin/env bash
# Tern's whole test suite: formatting, lints, unit and integration tests.
# Integration tests start the real `tern` binary on free ports and talk to
# it over real HTTP and WebSocket connections.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== services (Redis, MariaDB, PostgreSQL)"
deploy/services.sh

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== dependency rules"
deploy/check-deps.sh

echo "== build"
# Cluster tests start the separate service binaries, so build them all.
cargo build --workspace --bins --locked

echo "== test (SQLite)"
cargo test --workspace --all-targets --locked

# The integration suite again with every service on MariaDB, then on
# PostgreSQL: the store layer runs unchanged on all three. The message
# store's own tests too: on a server its writer overlaps two batches.
echo "== test (MariaDB)"
TERN_TEST_DATABASE=mysql cargo test -p tern --tests --locked
TERN_TEST_DATABASE=mysql cargo test -p tern-message --lib --locked store::
echo "== test (PostgreSQL)"
TERN_TEST_DATABASE=postgres cargo test -p tern --tests --locked
TERN_TEST_DATABASE=postgres cargo test -p tern-message --lib --locked store::

echo "== deployment files (Dockerfile, compose, Kubernetes), offline"
deploy/validate-deploy.sh

echo "== OpenAPI document of the HTTP API (openapi-spec-validator)"
deploy/check-openapi.sh

echo "== WebSocket conformance (Autobahn cases)"
deploy/autobahn.sh

echo "== web app in Chromium (Playwright)"
deploy/web-test.sh

echo "== fuzzing (time-boxed)"
deploy/fuzz.sh

echo "== local cluster script"
trap 'deploy/local-cluster.sh down >/dev/null 2>&1 || true' EXIT
TERN_PROFILE=debug deploy/local-cluster.sh up
deploy/local-cluster.sh down
