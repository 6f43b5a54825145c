# Sourced by start.sh, status.sh and stop.sh: reads the PID file and tells whether it names
# a running wagate. A PID file outlives its process after a crash or a reboot, and the
# number may by then belong to anything else, so a live PID alone proves nothing: the
# process must also be wagate (its name or the program it runs).

# Prints the PID and succeeds when "$1" names a running wagate. Otherwise removes the file
# (when there is one), says why on stdout, and fails.
running_wagate_pid() {
  local pidfile="$1" pid="" name="" program=""
  [ -f "$pidfile" ] || return 1
  read -r pid < "$pidfile" || true
  # One process, by number: never 0 or a negative number, which `kill` takes as a group.
  case "$pid" in
    '' | *[!0-9]* | 0*)
      echo "$pidfile does not hold a process id ('$pid'); removing it"
      rm -f "$pidfile"
      return 1
      ;;
  esac
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "stale pid $pid in $pidfile (no such process); removing it"
    rm -f "$pidfile"
    return 1
  fi
  if [ -r "/proc/$pid/comm" ]; then
    name="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    IFS= read -r -d '' program < "/proc/$pid/cmdline" 2>/dev/null || true
  else
    name="$(ps -p "$pid" -o comm= 2>/dev/null || true)"
    program="$(ps -p "$pid" -o args= 2>/dev/null || true)"
    program="${program%% *}"
  fi
  case "${name##*/} ${program##*/}" in
    *wagate*)
      echo "$pid"
      ;;
    *)
      echo "pid $pid from $pidfile is not wagate (it is '${name:-unknown}'); removing the stale pid file"
      rm -f "$pidfile"
      return 1
      ;;
  esac
}
