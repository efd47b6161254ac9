#!/usr/bin/env bash
# Cold-start and CPU figures for the three Lambda functions, measured locally on the release
# `bootstrap` binaries that `cargo lambda build` makes (what `sam build` packages).
#
#   scripts/coldstart.sh [--no-build] [--runs N] [--callbacks N]
#
# 1. Cold start, N runs per function (default 20): each binary is started with the functions'
#    environment (the table and queues on moto, on loopback) and AWS_LAMBDA_RUNTIME_API pointing
#    at a port where nothing listens, so that it initialises, logs its `"message":"ready"` line
#    and then exits, unable to fetch an event. Reported, min / median / p90 each:
#    - `init_ms` from that line: measured inside the process from the first line of main (the
#      tokio runtime already built) to the handler being ready;
#    - spawn→ready: wall clock from spawning the process to reading its ready line, which adds
#      exec, dynamic loading and the tokio runtime start;
#    - CPU time (user + sys) and peak RSS of the whole short-lived process (init plus its failed
#      attempt to reach the runtime API).
#    The API function's init includes DynamoDB calls (it makes sure the admin key and signing
#    secret exist: reads, and writes on the very first start only). Against moto on loopback,
#    over plain HTTP, these take about a millisecond each; against DynamoDB they cost a TLS
#    handshake and a network round trip each, so the API figure here is a lower bound. The
#    deliverer and the sweeper make no AWS call during init.
#    The binary is in the page cache after the first run; on Lambda the first start also pays
#    for downloading and unpacking the package (see the zip sizes).
# 2. Sizes of each binary: as built (the release profile keeps line tables), stripped, and
#    zipped (what Lambda downloads), both ways.
# 3. CPU per delivered callback in the deliverer (--callbacks N, default 300; 0 skips it):
#    callbacks are created through the API function (half with single POST /v1/callbacks, half
#    with POST /v1/callbacks/batch; the API process's CPU per accepted callback is reported
#    too), then their `deliver` messages are handed to the deliverer in batches of 10 (the
#    template's batch size) through cargo lambda's runtime API emulator; a receiver on loopback
#    answers 200. The deliverer process's user + sys CPU (from /proc, 10 ms ticks) is divided
#    by the callbacks delivered; one warm-up batch is left out. moto, the receiver and the
#    emulator run in other processes on the same machine: their CPU is excluded from the
#    figure, but they compete for the same cores. AWS calls go to moto over plain HTTP (no TLS).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1 runs=20 callbacks=300
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --runs) runs=$2; shift ;;
    --callbacks) callbacks=$2; shift ;;
    *)
      sed -n '2,34p' "$0" >&2
      exit 2
      ;;
  esac
  shift
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fluxcb/target}"
export FLUXCB_VENV="${FLUXCB_VENV:-$HOME/.cache/fluxcb/venv}"
export PATH="$FLUXCB_VENV/bin:$PATH"
functions=(fluxcb-api fluxcb-deliverer fluxcb-sweeper)

work="$(mktemp -d)"
pids=()
cleanup() {
  local status=$? pid
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  bash scripts/moto.sh stop "$work/moto" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for f in "$work"/*.log; do
      [ -f "$f" ] || continue
      echo "--- $(basename "$f") (last 30 lines)" >&2
      tail -n 30 "$f" >&2
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { echo "coldstart: $*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}
spawn() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  pids+=("$!")
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

if [ "$build" = 1 ]; then
  say "building the functions (cargo lambda build --release --x86-64)"
  cargo lambda build --release --locked -p fluxcb-lambda --x86-64
fi
for fn in "${functions[@]}"; do
  [ -x "$CARGO_TARGET_DIR/lambda/$fn/bootstrap" ] || fail "missing $CARGO_TARGET_DIR/lambda/$fn/bootstrap"
done
fluxcb="${FLUXCB_BIN:-}"
if [ -z "$fluxcb" ]; then
  cargo build --locked --quiet -p fluxcb
  fluxcb="$CARGO_TARGET_DIR/debug/fluxcb"
fi

eval "$(bash scripts/moto.sh start "$work/moto")"
export AWS_ENDPOINT_URL="$FLUXCB_TEST_AWS_ENDPOINT"
unset AWS_PROFILE
for v in $(env | sed -n 's/^\(FLUXCB_[A-Z_]*\)=.*/\1/p'); do
  case "$v" in FLUXCB_VENV | FLUXCB_TEST_AWS_ENDPOINT | FLUXCB_BIN) ;; *) unset "$v" ;; esac
done
(cd "$work" && "$fluxcb" aws bootstrap --prefix coldstart --log-format json) >"$work/resources.env" 2>"$work/bootstrap.log" ||
  fail "fluxcb aws bootstrap"
set -a
# shellcheck disable=SC1091
. "$work/resources.env"
set +a
export FLUXCB_API_KEY=fxk_lambda_fixture_admin_key_4f0c2a9e
export FLUXCB_ALLOW_PRIVATE_TARGETS=127.0.0.0/8
export AWS_LAMBDA_FUNCTION_VERSION=1 AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256

echo "machine: $(nproc) cores, $(uname -sr); moto $("$FLUXCB_VENV/bin/python" -c 'import moto; print(moto.__version__)') on loopback"

# --- 1. Cold start -------------------------------------------------------------------------------
dead_port="$(free_port)" # bound and released: nothing listens there
echo
echo "cold start: $runs runs per function; AWS_LAMBDA_RUNTIME_API=127.0.0.1:$dead_port (nothing listens)"
python3 - "$runs" "$dead_port" "$work" "$CARGO_TARGET_DIR/lambda" "${functions[@]}" <<'EOF'
import json, os, resource, statistics, subprocess, sys, time

runs, port, work, lambda_dir, fns = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}")

def stats(xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, max(0, round(0.9 * len(xs)) - 1))]
    return f"{xs[0]:8.1f} {statistics.median(xs):8.1f} {p90:8.1f}"

print(f"{'function':17} {'figure':22} {'min':>8} {'median':>8} {'p90':>8}")
for fn in fns:
    binary = os.path.join(lambda_dir, fn, "bootstrap")
    init, wall, cpu, rss = [], [], [], []
    for i in range(runs):
        env["AWS_LAMBDA_FUNCTION_NAME"] = fn
        t0 = time.perf_counter()
        p = subprocess.Popen([binary], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = None
        lines = []
        for raw in p.stdout:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if '"message":"ready"' in line:
                ready = time.perf_counter()
                init.append(json.loads(line)["fields"]["init_ms"] if "fields" in json.loads(line) else json.loads(line)["init_ms"])
                break
        if ready is None:
            p.wait()
            sys.exit(f"{fn}: no ready line; output:\n{''.join(lines)}")
        wall.append((ready - t0) * 1000)
        # Drain until it exits (it cannot reach the runtime API), with a bound.
        deadline = time.monotonic() + 10
        for raw in p.stdout:
            if time.monotonic() > deadline:
                break
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except ChildProcessError:
            continue
        cpu.append((ru.ru_utime + ru.ru_stime) * 1000)
        rss.append(ru.ru_maxrss / 1024)
    print(f"{fn:17} {'init_ms (in process)':22} {stats(init)}")
    print(f"{'':17} {'spawn→ready ms':22} {stats(wall)}")
    if cpu:
        print(f"{'':17} {'process CPU ms':22} {stats(cpu)}")
        print(f"{'':17} {'peak RSS MiB':22} {stats(rss)}")
EOF

# --- 2. Sizes --------------------------------------------------------------------------------------
echo
echo "binary sizes in bytes (the release profile keeps line tables; cargo lambda does not strip)"
printf '%-17s %12s %12s %14s %14s\n' function "as built" stripped "zip as built" "zip stripped"
zip_size() {
  python3 -c 'import os, sys, zipfile; z = zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED); z.write(sys.argv[1], "bootstrap"); z.close(); print(os.path.getsize(sys.argv[2]))' "$1" "$work/size.zip"
}
for fn in "${functions[@]}"; do
  bin="$CARGO_TARGET_DIR/lambda/$fn/bootstrap"
  strip -o "$work/$fn.stripped" "$bin"
  printf '%-17s %12d %12d %14d %14d\n' "$fn" "$(stat -c %s "$bin")" "$(stat -c %s "$work/$fn.stripped")" \
    "$(zip_size "$bin")" "$(zip_size "$work/$fn.stripped")"
done

# --- 3. CPU per delivered callback ---------------------------------------------------------------
[ "$callbacks" -gt 0 ] || exit 0
echo
receiver_port="$(free_port)"
cat >"$work/receiver.py" <<'EOF'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
spawn "$work/receiver.log" python3 "$work/receiver.py" "$receiver_port"
rt_port="$(free_port)"
spawn "$work/watch.log" cargo lambda watch --only-lambda-apis --ignore-changes -A 127.0.0.1 -P "$rt_port"
# Listening? (Not an HTTP request: the emulator takes any unknown path as an invocation.)
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$rt_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$receiver_port") 2>/dev/null && break
  sleep 0.1
done
for fn in fluxcb-api fluxcb-deliverer; do
  spawn "$work/$fn.log" env -C "$work" AWS_LAMBDA_FUNCTION_NAME="$fn" \
    AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$rt_port/.rt/$fn" "$CARGO_TARGET_DIR/lambda/$fn/bootstrap"
done
python3 - "$callbacks" "$rt_port" "$receiver_port" "$work" "$FLUXCB_API_KEY" "${pids[-2]}" "${pids[-1]}" <<'EOF'
import json, os, sys, time, urllib.request

n, rt_port, receiver_port, work, key, api_pid, deliverer_pid = sys.argv[1:8]
n = int(n)
tick = os.sysconf("SC_CLK_TCK")

def cpu_ms(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / tick  # utime + stime

def wait_ready(fn):
    for _ in range(300):
        if '"message":"ready"' in open(os.path.join(work, f"{fn}.log")).read():
            return
        time.sleep(0.1)
    sys.exit(f"{fn} never became ready")

def invoke(fn, event):
    req = urllib.request.Request(
        f"http://127.0.0.1:{rt_port}/2015-03-31/functions/{fn}/invocations",
        data=json.dumps(event).encode(), method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())

def api_event(method, path, body):
    e = json.load(open("crates/lambda/tests/fixtures/apigw-v2-post-callback.json"))
    e["rawPath"] = e["requestContext"]["http"]["path"] = path
    e["requestContext"]["http"]["method"] = method
    e["body"] = body
    e["headers"]["content-length"] = str(len(body.encode()))
    return e

wait_ready("fluxcb-api")
wait_ready("fluxcb-deliverer")
target = f"http://127.0.0.1:{receiver_port}/hook"
# Half the callbacks one POST /v1/callbacks each, half in POST /v1/callbacks/batch of 100.
ids = []
singles = n // 2
before = cpu_ms(api_pid)
t0 = time.perf_counter()
for i in range(singles):
    r = invoke("fluxcb-api", api_event("POST", "/v1/callbacks", json.dumps({"url": target, "payload": {"n": i}})))
    assert r["statusCode"] == 202, r
    ids.append(json.loads(r["body"])["id"])
single_wall, single_cpu = time.perf_counter() - t0, cpu_ms(api_pid) - before
before = cpu_ms(api_pid)
t0 = time.perf_counter()
requests = 0
for start in range(singles, n, 100):
    items = [{"url": target, "payload": {"n": i}} for i in range(start, min(n, start + 100))]
    r = invoke("fluxcb-api", api_event("POST", "/v1/callbacks/batch", json.dumps({"callbacks": items})))
    assert r["statusCode"] == 202, r
    ids += [c["id"] for c in json.loads(r["body"])["callbacks"]]
    requests += 1
batch_wall, batch_cpu = time.perf_counter() - t0, cpu_ms(api_pid) - before

def sqs_event(batch):
    return {"Records": [{
        "messageId": f"m-{cid}", "receiptHandle": f"h-{cid}",
        "body": json.dumps({"type": "deliver", "v": 1, "callback_id": cid}, separators=(",", ":")),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000)),
                       "SenderId": "AROAEXAMPLE:fluxcb-api", "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000))},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:coldstart-work", "awsRegion": "us-east-1"}
        for cid in batch]}

# One warm-up batch (first use of connections and caches), not counted.
warm, ids = ids[:10], ids[10:]
r = invoke("fluxcb-deliverer", sqs_event(warm))
assert r == {"batchItemFailures": []}, r
before = cpu_ms(deliverer_pid)
t0 = time.perf_counter()
failures = 0
for start in range(0, len(ids), 10):
    r = invoke("fluxcb-deliverer", sqs_event(ids[start:start + 10]))
    failures += len(r["batchItemFailures"])
wall = time.perf_counter() - t0
cpu = cpu_ms(deliverer_pid) - before
delivered = len(ids) - failures
print(f"api:       {singles} single POSTs: {single_cpu:.0f} ms CPU (api process), "
      f"{single_cpu / max(singles, 1):.2f} ms CPU per accepted callback; {single_wall * 1000 / max(singles, 1):.1f} ms wall each")
print(f"           {n - singles} callbacks in {requests} batch POSTs: {batch_cpu:.0f} ms CPU, "
      f"{batch_cpu / max(n - singles, 1):.2f} ms CPU per accepted callback; {batch_wall:.1f} s wall")
print(f"deliverer: {delivered} callbacks delivered in {(len(ids) + 9) // 10} invocations of 10 "
      f"({failures} failed): {cpu:.0f} ms CPU (user+sys, deliverer process only), "
      f"{cpu / max(delivered, 1):.2f} ms CPU per delivered callback; {wall:.1f} s wall, "
      f"{wall * 1000 / max(delivered, 1):.1f} ms wall per callback")
print("           moto (DynamoDB + SQS), the receiver and the runtime API emulator ran on the same "
      "cores in other processes: their CPU is not counted")
EOF
