#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn test cases (through `kosoku`, a
# Python 3 runner of Autobahn's own case files) against the gateway's frame
# stack at /ws/echo, every section but compression (12, 13). Passes when
# every case is OK, NON-STRICT or INFORMATIONAL.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/autobahn-venv
report=target/autobahn-report
bin=target/debug/tern
[[ -x $bin ]] || { echo "$bin is missing: run cargo build -p tern first" >&2; exit 1; }
if [[ ! -x $venv/bin/kosoku ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'kosoku==0.1.0'
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
TERN__HTTP_ADDR=127.0.0.1:$port TERN__DATA_DIR=$data TERN__GATEWAY__ECHO_ENDPOINT=true \
  TERN__GATEWAY__LIMITS__HTTP_PER_IP_PER_SECOND=0 RUST_LOG=warn "$bin" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

rm -rf "$report"
"$venv/bin/kosoku" "ws://127.0.0.1:$port/ws/echo" -x '12.*' -x '13.*' -p 4 -o "$report"
python3 - "$report/index.json" <<'PY'
import collections, json, sys
index = json.load(open(sys.argv[1]))
behaviors = collections.Counter()
bad = []
for cases in index.values():
    for case, result in cases.items():
        behaviors[result["behavior"]] += 1
        if result["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL"):
            bad.append((case, result["behavior"]))
print("Autobahn:", dict(behaviors))
if bad or not behaviors:
    print("failing cases:", sorted(bad))
    sys.exit(1)
PY
