#!/usr/bin/env bash
# Start (or stop) a one-machine Ray cluster to try `samdata` job submission locally.
#   infra/local-cluster.sh start   # head on 127.0.0.1, dashboard/Jobs API on :8265
#   infra/local-cluster.sh stop
# Ray 2.60 heads require a token by default; this throwaway head disables it (loopback only).
set -euo pipefail
VENV=${VENV:-.venv}
case "${1:-start}" in
  start)
    RAY_AUTH_MODE=disabled "$VENV/bin/ray" start --head --node-ip-address 127.0.0.1 \
      --dashboard-host 127.0.0.1 --dashboard-port 8265 --num-cpus "${NUM_CPUS:-2}" \
      --temp-dir "${RAY_TMP:-/tmp/samdata-ray}"
    echo "Jobs API: http://127.0.0.1:8265" ;;
  stop) "$VENV/bin/ray" stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
