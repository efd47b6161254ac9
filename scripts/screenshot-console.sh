#!/usr/bin/env bash
# Regenerates the console screenshots the README shows, from a real run of `fluxcb demo`:
#   docs/img/console-overview.png   the overview (charts, figures, dead letters, failing hosts)
#   docs/img/console-callback.png   a callback delivered on a retry: its attempt timeline
#
#   scripts/screenshot-console.sh [SECONDS]    # traffic before the pictures; default 180
#
# It builds the release binary, starts `fluxcb demo --port 0 --rate 20` (its own temporary
# store and receivers), waits SECONDS while the demo sends callbacks, then runs
# tests/console/screenshot.mjs: Debian's headless chromium (/usr/bin/chromium, or CHROMIUM=...)
# driven by playwright-core, as in the console's end-to-end test, logs in with the key the
# demo printed and saves the pictures at 1280x800. The demo is stopped with SIGINT (Ctrl-C) at
# the end, which also removes its store. Needs chromium (apt-get install chromium) and node;
# runs `npm ci` in tests/console when its packages are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-180}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fluxcb/target}"

cargo build --release -p fluxcb
if [ ! -d tests/console/node_modules/playwright-core ]; then
  (cd tests/console && npm ci --cache "$HOME/.cache/fluxcb/npm" --no-audit --no-fund)
fi

work="$(mktemp -d)"
"$CARGO_TARGET_DIR/release/fluxcb" demo --port 0 --rate 20 >"$work/out" 2>"$work/err" &
demo=$!
stop() {
  kill -INT "$demo" 2>/dev/null && wait "$demo" || true
  rm -rf "$work"
}
trap stop EXIT

for _ in $(seq 1 120); do
  grep -q '^  API key:' "$work/out" && break
  sleep 0.5
done
console=$(awk '$1 == "Console:" { print $2; exit }' "$work/out")
key=$(awk '$1 == "API" && $2 == "key:" { print $3; exit }' "$work/out")
if [ -z "$console" ] || [ -z "$key" ]; then
  echo "the demo printed no console URL or key:" >&2
  cat "$work/out" "$work/err" >&2
  exit 1
fi
echo "demo at $console; ${seconds}s of traffic before the screenshots"
sleep "$seconds"
node tests/console/screenshot.mjs "${console%/console}" "$key" docs/img
