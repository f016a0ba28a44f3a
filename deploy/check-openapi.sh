#!/usr/bin/env bash
# Validates the HTTP API's OpenAPI document with a standard validator,
# offline: the document the gateway serves at `GET /api/openapi.json`,
# printed by the gateway binary itself (`tern-gateway --print-openapi`, the
# same string it serves), against the OpenAPI 3.1 schema with
# openapi-spec-validator. That the document lists exactly the gateway's
# routes is a unit test of tern-gateway (`route_docs`).
#
#   deploy/check-openapi.sh
#
# Needs cargo, python3 with venv, and the package index once: the validator
# is installed into target/openapi-venv. Writes target/openapi/openapi.json.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned validator (PyPI), so an upgrade changes nothing silently.
REQUIREMENTS=(openapi-spec-validator==0.9.0)

venv=target/openapi-venv
out=target/openapi

die() { echo "FAIL: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is needed for the validator"
wanted="${REQUIREMENTS[*]}"
if [[ ! -x $venv/bin/python || "$(cat "$venv/.requirements" 2>/dev/null)" != "$wanted" ]]; then
  echo "installing ${REQUIREMENTS[*]} into $venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" \
    || die "pip could not install ${REQUIREMENTS[*]}"
  echo "$wanted" >"$venv/.requirements"
fi

mkdir -p "$out"
cargo run --quiet --locked -p tern-gateway --bin tern-gateway -- --print-openapi \
  >"$out/openapi.json" || die "tern-gateway --print-openapi failed"
echo "document: $out/openapi.json ($(wc -c <"$out/openapi.json") bytes)"
echo "validator: $("$venv/bin/openapi-spec-validator" --version)"
"$venv/bin/openapi-spec-validator" --schema 3.1 --validation-errors all "$out/openapi.json" \
  || die "the OpenAPI document is not valid OpenAPI 3.1"
echo "ok   the HTTP API's OpenAPI document is valid OpenAPI 3.1"
