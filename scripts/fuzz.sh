#!/usr/bin/env bash
# Coverage-guided fuzzing of the request, URL and signature parsers (fuzz/fuzz_targets) with
# libFuzzer through cargo-fuzz, AddressSanitizer and debug assertions on.
#
#   bash scripts/fuzz.sh                      # every target, 15 s each (what CI runs)
#   FUZZ_SECONDS=3600 bash scripts/fuzz.sh v1_callback legacy_create   # longer, chosen targets
#
# The corpus each target grows is kept in ~/.cache/fluxcb/fuzz-corpus/<target> (outside the
# clone), so later runs start where earlier ones stopped; fuzz/seeds holds the committed seeds.
# A crash stops the run with a non-zero status and leaves the input in fuzz/artifacts/<target>/;
# `cargo fuzz run <target> <that file>` replays it. Each crash found becomes a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-15}"
cache="${FLUXCB_CACHE:-$HOME/.cache/fluxcb}"
tools="$cache/tools"
# The sanitizer and coverage flags cargo-fuzz passes are unstable rustc options; the machine's
# one toolchain is stable, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
export PATH="$tools/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools"
fi
# A target dir of its own: instrumented builds share nothing with the ordinary ones.
fuzz_args=(-O --debug-assertions --target-dir "$cache/fuzz-target")

cargo fuzz build "${fuzz_args[@]}"
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
for target in "${targets[@]}"; do
  corpus="$cache/fuzz-corpus/$target"
  mkdir -p "$corpus"
  log="$(mktemp)"
  if ! cargo fuzz run "${fuzz_args[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -dict=fuzz/dicts/json.dict -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    rm -f "$log"
    exit 1
  fi
  runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
  cover="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)"
  echo "fuzz: $target: $runs inputs in ${seconds} s, ${cover:-cov: ?}, corpus $(find "$corpus" -type f | wc -l) files, no crash"
  rm -f "$log"
done
