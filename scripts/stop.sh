#!/usr/bin/env bash
# Stops the wagate started by start.sh, by its PID file only (never by process name), and
# waits until it has closed its WhatsApp connections. A PID file whose process is gone, or
# is no longer wagate (the PID was reused after a crash or a reboot), is removed and
# nothing is signalled.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${WAGATE_HOME:-$here}"
pidfile="$home/wagate.pid"

if [ ! -f "$pidfile" ]; then
  echo "wagate is not running (no $pidfile)"
  exit 0
fi
pid=""
read -r pid < "$pidfile" || true
# One process, by number: never 0 or a negative number, which `kill` takes as a group.
case "$pid" in
  '' | *[!0-9]* | 0*)
    echo "$pidfile does not hold a process id ('$pid'); removing it"
    rm -f "$pidfile"
    exit 0
    ;;
esac
if ! kill -0 "$pid" 2>/dev/null; then
  echo "wagate is not running (stale pid $pid)"
  rm -f "$pidfile"
  exit 0
fi

# The process's name, and the file name of the program it runs (argv[0]).
name=""
program=""
if [ -r "/proc/$pid/comm" ]; then
  name="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
  IFS= read -r -d '' program < "/proc/$pid/cmdline" 2>/dev/null || true
else
  name="$(ps -p "$pid" -o comm= 2>/dev/null || true)"
  program="$(ps -p "$pid" -o args= 2>/dev/null || true)"
  program="${program%% *}"
fi
case "${name##*/} ${program##*/}" in
  *wagate*) ;;
  *)
    echo "pid $pid from $pidfile is not wagate (it is '${name:-unknown}'); not stopping it, removing the stale pid file"
    rm -f "$pidfile"
    exit 0
    ;;
esac

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
