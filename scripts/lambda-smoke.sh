#!/usr/bin/env bash
# Smoke test of the three Lambda functions as deployed: the release `bootstrap` binaries that
# `cargo lambda build` makes (what `sam build` packages), each started against cargo lambda's
# emulation of the Lambda runtime API (`cargo lambda watch --only-lambda-apis`, no Docker), with
# DynamoDB and SQS emulated by moto, and invoked through that API with the stored, AWS-shaped
# events in crates/lambda/tests/fixtures:
#   - fluxcb-api:       the API Gateway HTTP API (payload v2.0) POST, then the GET of what it made;
#   - fluxcb-deliverer: an SQS batch with a deliverable message (for the callback the API made),
#                       a poison message and one from a newer worker;
#   - fluxcb-sweeper:   the EventBridge "Scheduled Event".
# It checks each function's answer, the callback's delivery to a receiver on loopback, the
# poison message on the dead letter queue and the functions' EMF metric lines, and exits non-zero
# on the first failure. Everything it starts is stopped on exit.
#
#   scripts/lambda-smoke.sh             build (cargo lambda build --release, x86-64), then test
#   scripts/lambda-smoke.sh --no-build  test the binaries already in $CARGO_TARGET_DIR/lambda
#
# Needs the CI venv (moto_server, cargo-lambda; $FLUXCB_VENV, default ~/.cache/fluxcb/venv),
# python3 and jq. `fluxcb aws bootstrap` creates the table and queues: the binary is
# $FLUXCB_BIN, or the debug build (`cargo build -p fluxcb`, which `cargo test` has usually made).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
case "${1:-}" in
  --no-build) build=0 ;;
  "") ;;
  *)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fluxcb/target}"
export FLUXCB_VENV="${FLUXCB_VENV:-$HOME/.cache/fluxcb/venv}"
export PATH="$FLUXCB_VENV/bin:$PATH"
fixtures=crates/lambda/tests/fixtures
functions=(fluxcb-api fluxcb-deliverer fluxcb-sweeper)
started=$SECONDS

work="$(mktemp -d)"
pids=()
cleanup() {
  local status=$? pid
  for pid in "${pids[@]}"; do
    # Each was started with setsid: its process group is its own.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  bash scripts/moto.sh stop "$work/moto" 2>/dev/null || true
  if [ "$status" -ne 0 ] && [ -d "$work" ]; then
    for f in "$work"/*.log; do
      [ -f "$f" ] || continue
      echo "--- $(basename "$f") (last 40 lines)" >&2
      tail -n 40 "$f" >&2
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "lambda-smoke: $*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}
# Runs a command in its own session (so cleanup can end it and its children), logging to a file.
spawn() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  pids+=("$!")
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
listening() { # listening PORT: something accepts connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2 n=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    n=$((n + 1))
    [ "$n" -le $((limit * 10)) ] || fail "$what: not within ${limit}s"
    sleep 0.1
  done
}

for tool in python3 jq; do
  command -v "$tool" >/dev/null || fail "$tool is needed"
done
command -v cargo-lambda >/dev/null || fail "cargo-lambda is not in $FLUXCB_VENV/bin or on PATH (pip install cargo-lambda)"

# --- Binaries -----------------------------------------------------------------------------------
if [ "$build" = 1 ]; then
  say "building the functions (cargo lambda build --release --x86-64)"
  cargo lambda build --release --locked -p fluxcb-lambda --x86-64
fi
for fn in "${functions[@]}"; do
  [ -x "$CARGO_TARGET_DIR/lambda/$fn/bootstrap" ] || fail "missing $CARGO_TARGET_DIR/lambda/$fn/bootstrap (run without --no-build)"
done
fluxcb="${FLUXCB_BIN:-}"
if [ -z "$fluxcb" ]; then
  say "building the fluxcb binary for aws bootstrap (cargo build -p fluxcb)"
  cargo build --locked --quiet -p fluxcb
  fluxcb="$CARGO_TARGET_DIR/debug/fluxcb"
fi

# --- AWS emulator, table and queues -------------------------------------------------------------
eval "$(bash scripts/moto.sh start "$work/moto")"
export AWS_ENDPOINT_URL="$FLUXCB_TEST_AWS_ENDPOINT"
unset AWS_PROFILE
# No ./fluxcb.toml or developer FLUXCB_* settings may leak into what the functions read.
for v in $(env | sed -n 's/^\(FLUXCB_[A-Z_]*\)=.*/\1/p'); do
  case "$v" in FLUXCB_VENV | FLUXCB_TEST_AWS_ENDPOINT | FLUXCB_BIN) ;; *) unset "$v" ;; esac
done
(cd "$work" && "$fluxcb" aws bootstrap --prefix smoke --log-format json) >"$work/resources.env" 2>"$work/bootstrap.log" ||
  fail "fluxcb aws bootstrap"
set -a
# shellcheck disable=SC1091
. "$work/resources.env"
set +a
if [ -z "${FLUXCB_DYNAMODB_TABLE:-}" ] || [ -z "${FLUXCB_SQS_QUEUE_URL:-}" ] || [ -z "${FLUXCB_SQS_DLQ_URL:-}" ]; then
  fail "bootstrap printed no resources: $(cat "$work/resources.env")"
fi
say "moto on $AWS_ENDPOINT_URL; table $FLUXCB_DYNAMODB_TABLE"

# --- A receiver on loopback: records each request as a JSON line --------------------------------
receiver_port="$(free_port)"
cat >"$work/receiver.py" <<'EOF'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = open(sys.argv[2], "a", buffering=1)

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        log.write(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                              "body": body.decode("utf-8", "replace")}) + "\n")
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
touch "$work/received.jsonl"
spawn "$work/receiver.log" python3 "$work/receiver.py" "$receiver_port" "$work/received.jsonl"
wait_for 10 "receiver" listening "$receiver_port"

# --- The runtime API emulator and the three functions -------------------------------------------
rt_port="$(free_port)"
spawn "$work/watch.log" cargo lambda watch --only-lambda-apis --ignore-changes -A 127.0.0.1 -P "$rt_port"
# (Not an HTTP request: any path it does not know is an invocation of a function named `_`.)
wait_for 30 "cargo lambda watch" listening "$rt_port"

# What the template gives each function (FLUXCB_BACKEND is forced to aws by the functions), and
# what the Lambda service sets.
export FLUXCB_API_KEY=fxk_lambda_fixture_admin_key_4f0c2a9e # the key in the API Gateway fixtures
export FLUXCB_ALLOW_PRIVATE_TARGETS=127.0.0.0/8              # the receiver is on loopback
export FLUXCB_RETRY_SCHEDULE=1s,2s FLUXCB_TIMEOUT_MS=5000
export AWS_LAMBDA_FUNCTION_VERSION=1 AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256
for fn in "${functions[@]}"; do
  # The emulator serves each function's runtime API under /.rt/<function name>. In the scratch
  # directory: no ./fluxcb.toml is read.
  spawn "$work/$fn.log" env -C "$work" AWS_LAMBDA_FUNCTION_NAME="$fn" \
    AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$rt_port/.rt/$fn" "$CARGO_TARGET_DIR/lambda/$fn/bootstrap"
done
for fn in "${functions[@]}"; do
  wait_for 30 "$fn ready" grep -q '"message":"ready"' "$work/$fn.log"
  say "$fn: $(grep -o '"init_ms":[0-9.]*' "$work/$fn.log" | head -1)"
done

# invoke FUNCTION EVENT_FILE: the function's answer (JSON) on stdout.
invoke() {
  local fn=$1 event=$2 out
  out="$(timeout 60 cargo lambda invoke -A 127.0.0.1 -P "$rt_port" "$fn" --data-file "$event" --output-format json 2>"$work/invoke.err")" ||
    fail "invoking $fn with $(basename "$event"): $(cat "$work/invoke.err")"
  echo "$out" | jq -e . >/dev/null 2>&1 || fail "$fn answered with something other than JSON: $out"
  echo "$out"
}

# --- API: POST (the fixture, aimed at the receiver), then GET ----------------------------------
target="http://127.0.0.1:$receiver_port/hooks/order-shipped"
jq --arg url "$target" '.body |= (fromjson | .url = $url | tojson) | .headers["content-length"] = (.body | length | tostring)' \
  "$fixtures/apigw-v2-post-callback.json" >"$work/post.json"
post="$(invoke fluxcb-api "$work/post.json")"
[ "$(echo "$post" | jq -r .statusCode)" = 202 ] || fail "POST /v1/callbacks: $post"
[ "$(echo "$post" | jq -r .isBase64Encoded)" = false ] || fail "POST answer is base64: $post"
id="$(echo "$post" | jq -r '.body | fromjson | .id')"
[[ "$id" == cb_* ]] || fail "no callback id in $post"
say "api: POST /v1/callbacks -> 202 $id"

sed "s/cb_00000000000000000000000000/$id/g" "$fixtures/apigw-v2-get-callback.json" >"$work/get.json"
get="$(invoke fluxcb-api "$work/get.json")"
[ "$(echo "$get" | jq -r .statusCode)" = 200 ] || fail "GET /v1/callbacks/$id: $get"
[ "$(echo "$get" | jq -r '.body | fromjson | .id')" = "$id" ] || fail "GET returned another callback: $get"
[ "$(echo "$get" | jq -r '.body | fromjson | .url')" = "$target" ] || fail "GET: unexpected url: $get"
say "api: GET /v1/callbacks/$id -> 200"

# --- Deliverer: the SQS batch, its first message naming the callback the API made ---------------
future_id="$(jq -r '.Records[3].messageId' "$fixtures/sqs-deliver-batch.json")"
jq --arg id "$id" '.Records[0].body |= (fromjson | .callback_id = $id | tojson)' \
  "$fixtures/sqs-deliver-batch.json" >"$work/sqs.json"
batch="$(invoke fluxcb-deliverer "$work/sqs.json")"
expected="$(jq -cn --arg id "$future_id" '{batchItemFailures: [{itemIdentifier: $id}]}')"
[ "$(echo "$batch" | jq -c .)" = "$expected" ] || fail "deliverer: expected $expected, got $(echo "$batch" | jq -c .)"
say "deliverer: $(echo "$batch" | jq -c .)"
wait_for 10 "delivery to the receiver" grep -q '"/hooks/order-shipped"' "$work/received.jsonl"
[ "$(wc -l <"$work/received.jsonl")" -eq 1 ] || fail "expected one delivery: $(cat "$work/received.jsonl")"
jq -e '.headers["webhook-signature"] and (.body | fromjson | .order_id == "A-1001")' "$work/received.jsonl" >/dev/null ||
  fail "delivery without signature or payload: $(cat "$work/received.jsonl")"
shown="$(invoke fluxcb-api "$work/get.json")"
[ "$(echo "$shown" | jq -r '.body | fromjson | .status')" = delivered ] || fail "callback not delivered: $shown"
say "deliverer: $id delivered to the receiver, status delivered"

# The poison message is on the dead letter queue with its reason (boto3 comes with moto).
"$FLUXCB_VENV/bin/python" - "$FLUXCB_SQS_DLQ_URL" "$(jq -r '.Records[2].body' "$fixtures/sqs-deliver-batch.json")" <<'EOF' ||
import sys, boto3
url, body = sys.argv[1], sys.argv[2]
sqs = boto3.client("sqs")
got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=2)
messages = got.get("Messages", [])
assert len(messages) == 1, messages
assert messages[0]["Body"] == body, messages[0]
reason = messages[0]["MessageAttributes"]["fluxcb_reason"]["StringValue"]
assert "malformed" in reason, reason
print("lambda-smoke: dead letter queue: poison message, fluxcb_reason =", reason, file=sys.stderr)
EOF
  fail "the poison message is not on the dead letter queue as expected"

# --- Sweeper: the scheduled event --------------------------------------------------------------
sweep="$(invoke fluxcb-sweeper "$fixtures/eventbridge-scheduled.json")"
echo "$sweep" | jq -e '(.enqueued | type == "number") and .recovered == 0' >/dev/null || fail "sweeper: $sweep"
say "sweeper: $(echo "$sweep" | jq -c .)"

# --- Logs: JSON lines, EMF metrics after the invocations ---------------------------------------
for fn in fluxcb-deliverer fluxcb-sweeper; do
  grep -q '"_aws":' "$work/$fn.log" || fail "$fn wrote no EMF metric line"
done
grep '"_aws":' "$work/fluxcb-deliverer.log" | head -1 | jq -e '._aws.CloudWatchMetrics[0].Namespace == "Fluxcb"' >/dev/null ||
  fail "deliverer EMF line not in the Fluxcb namespace"

say "OK: 3 functions, $((SECONDS - started)) s"
