#!/usr/bin/env bash
# Runs client.py against a fresh local cluster and exits with the client's status.
#
# 1. Sets up a virtualenv in .venv/ (reused while requirements.txt is unchanged; falls back
#    to `pip install --user` where python3 has no venv module) and generates gen/.
# 2. Starts `$CONCORD_BIN up --auto-ports` on a temporary data dir and waits, at most
#    START_TIMEOUT_S seconds, for its registry, shop and aggregator lines.
# 3. Runs client.py --registry <addr>.
# The cluster is stopped with SIGTERM on every exit path (then SIGKILL for its process
# group if it has not stopped after STOP_TIMEOUT_S), and its data dir removed.
#
# Builds nothing: CONCORD_BIN (default ../../target/debug/concord) must exist; build it with
# `cargo build -p concord-cli`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

CONCORD_BIN="${CONCORD_BIN:-../../target/debug/concord}"
VENV_DIR="${VENV_DIR:-$here/.venv}"
START_TIMEOUT_S="${START_TIMEOUT_S:-60}"
STOP_TIMEOUT_S=20

say() { printf 'run_against_cluster: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ -x "$CONCORD_BIN" ] || die "$CONCORD_BIN is not an executable; run cargo build -p concord-cli"
command -v python3 >/dev/null 2>&1 || die "python3 is not on the PATH"

# --- Python environment and generated code (serialised: two runs may share .venv/ and gen/).
setup_python() {
  if [ -x "$VENV_DIR/bin/python" ] || python3 -m venv "$VENV_DIR" >/dev/null 2>&1; then
    PYTHON="$VENV_DIR/bin/python"
    if ! cmp -s requirements.txt "$VENV_DIR/.installed-requirements.txt"; then
      say "installing requirements.txt into $VENV_DIR"
      "$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements.txt
      cp requirements.txt "$VENV_DIR/.installed-requirements.txt"
    fi
  else
    say "python3 -m venv is not available; installing requirements.txt with pip --user"
    rm -rf "$VENV_DIR"
    PYTHON=python3
    python3 -m pip install --quiet --disable-pip-version-check --user -r requirements.txt
  fi
  PYTHON="$PYTHON" ./generate.sh >&2
}
if command -v flock >/dev/null 2>&1; then
  exec 9>"$here/.setup.lock"
  flock 9
  setup_python
  flock -u 9
  exec 9>&-
else
  setup_python
fi

# --- The cluster.
data_dir="$(mktemp -d "${TMPDIR:-/tmp}/concord-python-client.XXXXXX")"
up_pid=""
stop_cluster() {
  local status=$?
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$up_pid" 2>/dev/null && [ "$waited" -lt $((STOP_TIMEOUT_S * 10)) ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "$up_pid" 2>/dev/null; then
      say "cluster did not stop within ${STOP_TIMEOUT_S}s of SIGTERM; killing it"
      kill -KILL -- "-$up_pid" 2>/dev/null || kill -KILL "$up_pid" 2>/dev/null || true
    fi
    wait "$up_pid" 2>/dev/null || true
  fi
  rm -rf "$data_dir"
  exit "$status"
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export RUST_LOG="${RUST_LOG:-warn}"
# Create the output files before the background start: the redirections below happen in the
# forked child, and the first poll may run before the child has opened them.
: >"$data_dir/up.out"
: >"$data_dir/up.err"
# setsid gives the cluster its own process group, so the SIGKILL fallback reaches every child.
setsid "$CONCORD_BIN" up --auto-ports --data-dir "$data_dir/data" \
  >"$data_dir/up.out" 2>"$data_dir/up.err" </dev/null &
up_pid=$!
say "started concord up (pid $up_pid, data in $data_dir)"

# Address in `concord up: <name> (<role>) pid <pid> running on <addr>`, or nothing yet.
running_addr() {
  sed -n "s/^concord up: $1 ($2) pid [0-9]* running on \\(.*\\)\$/\\1/p" "$data_dir/up.out" | tail -n 1
}
deadline=$((SECONDS + START_TIMEOUT_S))
registry_addr=""
while :; do
  registry_addr="$(running_addr registry registry)"
  if [ -n "$registry_addr" ] && [ -n "$(running_addr shop-1 shop)" ] \
    && [ -n "$(running_addr aggregator aggregator)" ]; then
    break
  fi
  if ! kill -0 "$up_pid" 2>/dev/null; then
    cat "$data_dir/up.out" "$data_dir/up.err" >&2
    die "concord up exited before the cluster was running"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    cat "$data_dir/up.out" "$data_dir/up.err" >&2
    die "cluster not running within ${START_TIMEOUT_S}s"
  fi
  sleep 0.2
done
say "cluster running; registry at $registry_addr"
# The cluster made its own random admin token on first start; `concord token` reads it.
CONCORD_ADMIN_TOKEN="$("$CONCORD_BIN" token admin --data-dir "$data_dir/data")"
export CONCORD_ADMIN_TOKEN

# --- The client.
set +e
"$PYTHON" client.py --registry "$registry_addr"
client_status=$?
set -e
if [ "$client_status" -ne 0 ]; then
  say "client failed (status $client_status); cluster stderr follows"
  tail -n 50 "$data_dir/up.err" >&2
fi
exit "$client_status"
