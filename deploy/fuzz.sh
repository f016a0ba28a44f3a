#!/usr/bin/env bash
# Time-boxed fuzzing of every parser of untrusted input (targets in fuzz/).
# A crash fails the run; its input is left in fuzz/artifacts/<target>/ and
# belongs in a regression test. Needs a nightly toolchain (cargo-fuzz uses
# sanitizers); cargo-fuzz itself is installed when missing.
#   TERN_FUZZ_SECONDS  time per target (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${TERN_FUZZ_SECONDS:-20}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "SKIP fuzzing: no nightly toolchain here (rustup toolchain install nightly)"
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
  mkdir -p "fuzz/corpus/$target"
  seeds=()
  [[ -d fuzz/seeds/$target ]] && seeds=("fuzz/seeds/$target")
  echo "-- $target: ${seconds}s"
  log=fuzz/$target.log
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "FAIL: fuzzing $target failed; crashing inputs are in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "$log" || true
done
echo "fuzzing found no crash"
