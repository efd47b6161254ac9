#!/usr/bin/env bash
# A local AWS emulator (moto) for the DynamoDB and SQS adapter tests.
#
#   eval "$(scripts/moto.sh start [STATE_DIR])"   start moto_server on a free loopback port and
#                                                 print the variables the tests read
#   scripts/moto.sh stop [STATE_DIR]              stop the server that `start` started there
#
# `start` waits until the server answers, then prints (for eval):
#   export FLUXCB_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT
#   export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 ...
# The tests that need AWS use FLUXCB_TEST_AWS_ENDPOINT; without it they say so and skip.
#
# STATE_DIR (default ${TMPDIR:-/tmp}/fluxcb-moto-$USER) keeps the pid, port and log. moto_server
# (run through scripts/moto_server.py) comes from $FLUXCB_VENV (default ~/.cache/fluxcb/venv; .ci/run installs it from
# .ci/requirements.txt), or from PATH. moto keeps everything in memory: stopping it forgets all.
set -euo pipefail

cmd="${1:-}"
state="${2:-${TMPDIR:-/tmp}/fluxcb-moto-${USER:-$(id -un)}}"
venv="${FLUXCB_VENV:-$HOME/.cache/fluxcb/venv}"

running_pid() {
  local pid
  pid="$(cat "$state/pid" 2>/dev/null)" || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

free_port() {
  # Bind port 0, read the port the kernel chose, release it. Another process could take it before
  # moto binds; start() then retries with a new one.
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  # moto_server through scripts/moto_server.py, which serialises DynamoDB's requests (see there:
  # moto's failed transactions would otherwise erase concurrent writes).
  local python
  if [ -x "$venv/bin/moto_server" ]; then
    python="$venv/bin/python"
  elif server="$(command -v moto_server)"; then
    python="$(head -1 "$server" | sed 's/^#! *//')"
  else
    echo "moto.sh: moto_server not found in $venv/bin or on PATH;" >&2
    echo "  install it: python3 -m pip install -r .ci/requirements.txt (or run .ci/run once)" >&2
    return 1
  fi
  local launcher
  launcher="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/moto_server.py"
  mkdir -p "$state"
  if pid="$(running_pid)"; then
    echo "moto.sh: already running (pid $pid, port $(cat "$state/port")); stop it first" >&2
    return 1
  fi

  local try port pid
  for try in 1 2 3; do
    port="$(free_port)"
    # Its own session and process group (setsid), so that stop can end it and anything it
    # spawned, and the caller's terminal and job control never touch it. The shell that setsid
    # runs records its own pid (the group's id), then becomes moto_server.
    rm -f "$state/pid"
    echo "$port" >"$state/port"
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo $$ >"$1/pid"; shift; exec "$@"' moto "$state" \
      "$python" "$launcher" -H 127.0.0.1 -p "$port" >"$state/log" 2>&1 </dev/null &
    local n=0
    while ! [ -s "$state/pid" ] && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    pid="$(cat "$state/pid")"
    # moto imports every service at start-up: a few seconds; allow 60 on a busy machine.
    local waited=0
    while [ "$waited" -lt 600 ]; do
      if ! kill -0 "$pid" 2>/dev/null; then
        break # exited: port taken, or broken install
      fi
      if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/moto-api/data.json"; then
        echo "moto.sh: moto_server pid $pid on 127.0.0.1:$port (log: $state/log)" >&2
        cat <<EOF
export FLUXCB_TEST_AWS_ENDPOINT=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
EOF
        return 0
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "moto.sh: moto_server did not answer on port $port (try $try of 3); its log:" >&2
    sed 's/^/  /' "$state/log" >&2
  done
  rm -f "$state/pid" "$state/port"
  return 1
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$state/pid" "$state/port"
    return 0
  fi
  # The process group that start created (setsid made the server its leader).
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 50 ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$state/pid" "$state/port"
  echo "moto.sh: stopped moto_server pid $pid" >&2
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *)
    sed -n '2,15p' "$0" >&2
    exit 2
    ;;
esac
