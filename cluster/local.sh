#!/usr/bin/env bash
# A one-machine Ray cluster bound to 127.0.0.1, and job submission to it.
#
#   cluster/local.sh start                 # head node; dashboard and job API on 127.0.0.1
#   cluster/local.sh submit featurize --config jobs/configs/featurize_tiny.yaml [key=value ...]
#   cluster/local.sh submit train|predict|tune|demo|benchmark ...
#   cluster/local.sh status                # the node's resources, and every job submitted
#   cluster/local.sh stop                  # stops only the processes `start` started
#
# Run it from the project root with the project's environment on PATH (. .venv/bin/activate):
# jobs run with the `python` that `ray start` found. `submit` uploads the working tree
# (`--working-dir .`, .gitignore'd paths left out) and the job runs in Ray's copy of it, but
# relative paths in configs and arguments still mean this directory's files, as without `submit`.
#
# Security: token authentication stays on. `start` writes a random token (mode 600) to
# $STATE/auth_token and every command here sends it; without it the job API refuses requests,
# so another local user cannot run code as you. The dashboard, job API and client server
# listen on 127.0.0.1 only.
#
# Settings (environment): STATE (default ~/.ray-transfer/local: pid, token, log),
# RAY_TMP (default /tmp/ray-transfer-$UID: Ray's session files; keep it short, Ray's socket
# paths must fit 107 bytes), NUM_CPUS (default: all), RAY_PORT (6379), DASHBOARD_PORT (8265),
# CLIENT_PORT (10001), AGENT_PORT (52365). Change the ports to run beside another cluster.
set -euo pipefail

STATE=${STATE:-$HOME/.ray-transfer/local}
RAY_TMP=${RAY_TMP:-/tmp/ray-transfer-$(id -u)}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
CLIENT_PORT=${CLIENT_PORT:-10001}
AGENT_PORT=${AGENT_PORT:-52365}
DASHBOARD="http://127.0.0.1:${DASHBOARD_PORT}"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_USAGE_STATS_ENABLED=0

running() { [[ -f "$STATE/ray.pid" ]] && kill -0 "$(cat "$STATE/ray.pid")" 2>/dev/null; }

start() {
    if running; then echo "already running (pid $(cat "$STATE/ray.pid")); $DASHBOARD"; return; fi
    mkdir -p "$STATE" "$RAY_TMP"
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        (umask 077 && python -c "import secrets; print(secrets.token_hex(32))" \
            > "$RAY_AUTH_TOKEN_PATH")
    fi
    # --block keeps `ray start` in the foreground as the parent of the node's processes; on
    # SIGTERM it stops exactly those (unlike `ray stop`, which ends every Ray on the machine).
    nohup ray start --head --block --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
        --temp-dir "$RAY_TMP" ${NUM_CPUS:+--num-cpus "$NUM_CPUS"} \
        > "$STATE/ray.log" 2>&1 < /dev/null &
    echo $! > "$STATE/ray.pid"
    for _ in $(seq 120); do
        if ray job list --address "$DASHBOARD" > /dev/null 2>&1; then
            echo "Ray is up: job API $DASHBOARD, GCS 127.0.0.1:$RAY_PORT (pid $(cat "$STATE/ray.pid"))"
            return
        fi
        running || { tail -20 "$STATE/ray.log"; echo "ray start exited; log: $STATE/ray.log"; exit 1; }
        sleep 1
    done
    echo "the job API did not answer within 120 s; log: $STATE/ray.log"; stop; exit 1
}

submit() {
    local job=${1:?"usage: $0 submit featurize|train|predict|tune|demo|benchmark [args]"}
    shift
    # the job runs in Ray's copy of the tree; it resolves relative paths against this directory
    ray job submit --address "$DASHBOARD" --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"PIPELINE_SUBMIT_DIR\": \"$PWD\"}}" \
        -- python -m "jobs.$job" "$@"
}

descendants() {  # every process below $1, deepest first
    local child
    for child in $(pgrep -P "$1"); do descendants "$child"; echo "$child"; done
}

stop() {
    if ! running; then echo "not running"; rm -f "$STATE/ray.pid"; return; fi
    local pid procs
    pid=$(cat "$STATE/ray.pid")
    # the node's own processes (GCS, raylet, dashboard, workers), then `ray start` itself:
    # SIGTERM to `ray start --block` alone waits out Ray's 30 s drain before it ends them
    procs=$(descendants "$pid")
    echo "stopping the node started by pid $pid ($(echo "$procs" | wc -w) processes)"
    # shellcheck disable=SC2086
    [[ -n "$procs" ]] && kill -TERM $procs 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do
        alive=0
        for p in $procs $pid; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.5
    done
    for p in $procs $pid; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    rm -f "$STATE/ray.pid"
    echo "stopped"
}

status() {
    if ! running; then echo "not running"; return; fi
    ray status --address "127.0.0.1:$RAY_PORT"
    python - "$DASHBOARD" <<'PY'
import sys
from ray.job_submission import JobSubmissionClient

jobs = sorted(JobSubmissionClient(sys.argv[1]).list_jobs(), key=lambda j: j.start_time or 0)
print(f"Jobs ({len(jobs)}):")
for job in jobs:
    print(f"  {job.submission_id or job.job_id}  {job.status.value:<9}  {job.entrypoint}")
PY
}

case ${1:-} in
    start) start ;;
    submit) shift; submit "$@" ;;
    status) status ;;
    stop) stop ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
