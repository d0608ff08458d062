#!/usr/bin/env bash
# Start (or stop) a one-machine Ray cluster to try `samdata` job submission locally.
#   infra/local-cluster.sh start   # head on 127.0.0.1, dashboard/Jobs API on :8265
#   infra/local-cluster.sh stop
# Ray 2.60 heads require a token by default; this throwaway head disables it (loopback only).
# A submitted job runs `python -m pipelines.cli` with the head's PATH: the head is started with
# the venv's bin first on it, so jobs run the venv that has torch and samdata's dependencies
# (a cluster image has them on its PATH).
# Overridable: VENV, NUM_CPUS, RAY_TMP, PORT (GCS), DASHBOARD_PORT, CLIENT_PORT, and
# RAY_START_ARGS (more `ray start` flags, e.g. other ports beside another Ray on the machine).
set -euo pipefail
VENV=$(cd "${VENV:-.venv}" && pwd)
export PATH="$VENV/bin:$PATH"
case "${1:-start}" in
  start)
    RAY_AUTH_MODE=disabled ray start --head --node-ip-address 127.0.0.1 \
      --port "${PORT:-6379}" --dashboard-host 127.0.0.1 \
      --dashboard-port "${DASHBOARD_PORT:-8265}" \
      --ray-client-server-port "${CLIENT_PORT:-10001}" --num-cpus "${NUM_CPUS:-2}" \
      --temp-dir "${RAY_TMP:-/tmp/samdata-ray}" ${RAY_START_ARGS:-}
    echo "Jobs API: http://127.0.0.1:${DASHBOARD_PORT:-8265}" ;;
  stop)
    # Only the processes of this head: `ray stop` would end every Ray on the machine (Ray
    # 2.60 ignores --temp-dir there). Each process of a head started with --temp-dir T names
    # T on its command line.
    TMP="${RAY_TMP:-/tmp/samdata-ray}"
    pids=$(pgrep -f -- "$TMP" || true)
    if [ -z "$pids" ]; then echo "no cluster of $TMP is running"; exit 0; fi
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
      pids=$(pgrep -f -- "$TMP" || true); [ -z "$pids" ] && break; sleep 0.5
    done
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    echo "stopped the cluster of $TMP" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
