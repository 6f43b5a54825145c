#!/usr/bin/env bash
# Stops the wagate started by start.sh, by its PID file only (never by process name), and
# waits until it has closed its WhatsApp connections. A PID file whose process is gone, or
# is no longer wagate (the PID was reused after a crash or a reboot), is removed and
# nothing is signalled.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${WAGATE_HOME:-$here}"
pidfile="$home/wagate.pid"

# shellcheck source=pidfile.sh
. "$here/pidfile.sh"

if [ ! -f "$pidfile" ]; then
  echo "wagate is not running (no $pidfile)"
  exit 0
fi
if ! found="$(running_wagate_pid "$pidfile")"; then
  echo "wagate is not running: $found"
  exit 0
fi
pid="$found"

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
