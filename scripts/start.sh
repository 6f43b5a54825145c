#!/usr/bin/env bash
# Starts wagate in the background, as the Node service's start.sh did: a PID file and the
# log file in WAGATE_HOME (default: this script's folder), the sessions in
# $WAGATE_HOME/sessions. Works from any working directory. Extra arguments go to
# `wagate serve` (see `wagate serve --help`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${WAGATE_HOME:-$here}"
bin="${WAGATE_BIN:-$home/wagate}"
[ -x "$bin" ] || bin="$(command -v wagate || true)"
[ -n "$bin" ] || { echo "wagate binary not found: put it in $home or on PATH, or set WAGATE_BIN" >&2; exit 1; }
pidfile="$home/wagate.pid"
listen="${WAGATE_LISTEN:-127.0.0.1:3000}"

# shellcheck source=pidfile.sh
. "$here/pidfile.sh"

if found="$(running_wagate_pid "$pidfile")"; then
  echo "wagate is already running (pid $found)"
  exit 0
fi
[ -z "$found" ] || echo "$found"
# The PID file, the stderr log and a new home are the user's alone, like wagate's own files.
umask 077
mkdir -p "$home"
WAGATE_LISTEN="$listen" nohup "$bin" serve --data-dir "$home/sessions" --log-file "$home/whatsapp-service.log" "$@" \
  >/dev/null 2>>"$home/wagate-stderr.log" &
echo $! > "$pidfile"

for _ in $(seq 1 100); do
  if curl -fsS "http://$listen/health" >/dev/null 2>&1; then
    echo "wagate started (pid $(cat "$pidfile")), listening on http://$listen"
    exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "wagate exited at start; see $home/wagate-stderr.log" >&2
    tail -n 5 "$home/wagate-stderr.log" >&2 || true
    rm -f "$pidfile"
    exit 1
  fi
  sleep 0.1
done
echo "wagate is running (pid $(cat "$pidfile")) but http://$listen/health does not answer yet" >&2
