#!/usr/bin/env bash
# End-to-end tests of the web app: Debian's Chromium, driven by
# playwright-core, against the real `tern` binary (see web-tests/).
# Installs Chromium (apt) and the npm packages when they are missing; expects
# target/debug/tern to be built already (deploy/test.sh builds it first).
# Extra arguments go to `node --test`, e.g. `--test-name-pattern=group`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x target/debug/tern ]]; then
  echo "target/debug/tern is missing: run 'cargo build -p tern' first." >&2
  exit 1
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "Node.js 20.10 or newer (with npm) is needed to run the web tests." >&2
  exit 1
fi

chromium="${TERN_TEST_CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  echo "== installing Chromium (Debian package)"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  # Try the package lists we have first; refresh them only if that fails.
  if ! "${sudo[@]}" apt-get install -y -q chromium; then
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q chromium
  fi
fi

cd web-tests
# `npm ci` records what it installed in node_modules/.package-lock.json; a
# newer package.json or lockfile means the installed packages are stale.
if [[ ! -f node_modules/.package-lock.json ||
      package-lock.json -nt node_modules/.package-lock.json ||
      package.json -nt node_modules/.package-lock.json ]]; then
  echo "== npm ci (web-tests)"
  npm ci --no-audit --no-fund
fi

echo "== web tests"
# One scenario at a time: each starts its own server and browser, and
# running them side by side only makes timing-sensitive steps slower.
exec node --test --test-concurrency=1 "$@" tests/*.test.js
