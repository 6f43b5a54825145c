#!/usr/bin/env bash
# Says whether the wagate started by start.sh runs (its PID file names a live wagate
# process, not just any process), and prints its /health summary.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${WAGATE_HOME:-$here}"
pidfile="$home/wagate.pid"
listen="${WAGATE_LISTEN:-127.0.0.1:3000}"

# shellcheck source=pidfile.sh
. "$here/pidfile.sh"

if found="$(running_wagate_pid "$pidfile")"; then
  echo "wagate is running (pid $found)"
  curl -fsS "http://$listen/health" && echo
  exit 0
fi
[ -z "$found" ] || echo "$found"
echo "wagate is stopped"
exit 3
