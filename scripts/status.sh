#!/usr/bin/env bash
# Says whether the wagate started by start.sh runs, and prints its /health summary.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${WAGATE_HOME:-$here}"
pidfile="$home/wagate.pid"
listen="${WAGATE_LISTEN:-127.0.0.1:3000}"

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "wagate is running (pid $(cat "$pidfile"))"
  curl -fsS "http://$listen/health" && echo
  exit 0
fi
echo "wagate is stopped"
exit 3
