#!/usr/bin/env bash
# Stops the wagate started by start.sh, by its PID file only (never by process name), and
# waits until it has closed its WhatsApp connections.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${WAGATE_HOME:-$here}"
pidfile="$home/wagate.pid"

if [ ! -f "$pidfile" ]; then
  echo "wagate is not running (no $pidfile)"
  exit 0
fi
pid="$(cat "$pidfile")"
if ! kill -0 "$pid" 2>/dev/null; then
  echo "wagate is not running (stale pid $pid)"
  rm -f "$pidfile"
  exit 0
fi
kill -TERM "$pid"
for _ in $(seq 1 150); do
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$pidfile"
    echo "wagate stopped (pid $pid)"
    exit 0
  fi
  sleep 0.1
done
echo "wagate (pid $pid) did not stop within 15 s; it is still running" >&2
exit 1
