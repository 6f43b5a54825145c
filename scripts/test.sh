#!/usr/bin/env bash
# Runs every test of the workspace, after installing what the tests need and is missing:
# the npm packages of interop/ (Baileys, playwright-core), the Python packages of
# interop/requirements.txt (the Standard Webhooks reference implementation) and Debian's
# chromium (the web console's browser test).
#
#   scripts/test.sh                          the whole suite
#   scripts/test.sh -p wagate --test docs    the same setup, then only what the arguments select
#
# Nothing is started here: each test starts the simulator, the gateway and its Node or
# Python helpers itself. A setup step that fails is reported and the tests still run, so
# one missing tool costs only the tests that need it, each failing with its own message.
# The exit status is cargo's.
set -euo pipefail
cd "$(dirname "$0")/.."

# Compiled dependencies live outside the clone, so a fresh clone or `git clean` does not
# rebuild whatsapp-rust (several minutes on two cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wagate-target}"

# What could not be set up, listed once more right before the tests.
problems=()
note() {
  problems+=("$*")
}

command -v cargo >/dev/null || { echo "scripts/test.sh: cargo is missing; install Rust stable (https://rustup.rs)" >&2; exit 1; }

# --- Node: Baileys and playwright-core, as pinned by interop/package-lock.json -------------
# `npm ci` always: it takes seconds, and a node_modules left by another lock file would
# test a different Baileys than the one pinned.
if command -v npm >/dev/null; then
  npm ci --prefix interop --no-audit --no-fund --loglevel=error ||
    note "npm ci --prefix interop failed; the Baileys and console tests will fail"
else
  note "npm is missing (Node 20 or newer); the Baileys and console tests will fail"
fi

# --- Python: the packages the webhook tests import through `python3` ------------------------
# The tests run whatever `python3` comes first on PATH. Debian's own Python is "externally
# managed" (PEP 668): pip refuses to install into it, and overriding that with
# --break-system-packages can break apt's Python packages. So such a Python gets a virtual
# environment of ours, next to the compiled code, put first on PATH for the tests. Any
# other Python (pyenv, a venv the caller activated, a distribution without the marker)
# takes a plain `pip install`. Only when no venv can be made (Debian without
# python3-venv) do we fall back to --break-system-packages, in the user's site directory
# when not root; and nothing is installed when the pinned versions are there already.
venv="$CARGO_TARGET_DIR/interop-venv"
if [ -e "$venv" ]; then
  # One made by an earlier run; a Python upgrade can leave it unusable: then make it anew.
  if "$venv/bin/python3" -c '' 2>/dev/null; then export PATH="$venv/bin:$PATH"; else rm -rf "$venv"; fi
fi

requirements_met() {
  python3 - interop/requirements.txt <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, wanted = line.partition("==")
    try:
        if wanted and version(name.strip()) != wanted.strip():
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
}

externally_managed() {
  python3 - <<'EOF'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and not in_venv else 1)
EOF
}

pip_install() {
  PIP_ROOT_USER_ACTION=ignore "$@" -m pip install --quiet --disable-pip-version-check -r interop/requirements.txt
}

install_python_packages() {
  if ! externally_managed; then
    pip_install python3 && return
  fi
  if python3 -m venv "$venv" 2>/dev/null && pip_install "$venv/bin/python3"; then
    export PATH="$venv/bin:$PATH"
    return
  fi
  rm -rf "$venv"
  echo "scripts/test.sh: cannot make a virtual environment (on Debian: apt-get install python3-venv);" \
    "installing into the system Python with --break-system-packages" >&2
  local user=()
  [ "$(id -u)" -eq 0 ] || user=(--user)
  pip_install python3 --break-system-packages "${user[@]}"
}

if ! command -v python3 >/dev/null; then
  note "python3 is missing; the webhook signature tests will fail"
elif ! requirements_met; then
  install_python_packages || note "could not install interop/requirements.txt; the webhook signature tests will fail"
fi

# --- Chromium: the web console's test drives it headless ------------------------------------
# The test looks for /usr/bin/chromium unless CHROMIUM_BIN says otherwise.
install_chromium() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || return 1
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null || return 1
  echo "scripts/test.sh: installing Debian's chromium for the console test" >&2
  "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
}

if [ -z "${CHROMIUM_BIN:-}" ]; then
  command -v chromium >/dev/null || install_chromium ||
    note "chromium is missing and could not be installed here; run 'sudo apt-get install chromium' (or set CHROMIUM_BIN); the console test will fail"
  if command -v chromium >/dev/null; then
    CHROMIUM_BIN="$(command -v chromium)"
    export CHROMIUM_BIN
  fi
fi

# --- PostgreSQL: the store's and the cluster's tests (each makes its own database) --------
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  note "PostgreSQL does not answer on 127.0.0.1:5432 (user postgres, trust auth); the PostgreSQL store and cluster tests will fail"
fi

if [ ${#problems[@]} -gt 0 ]; then
  echo "scripts/test.sh: setup incomplete, running the tests anyway:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
fi

# --- The tests ---------------------------------------------------------------------------------
# --no-fail-fast: every test binary runs even when an earlier one fails, so one failure
# never hides another; cargo's summary at the end lists every binary that failed.
selection=("$@")
if [ ${#selection[@]} -gt 0 ]; then
  exec cargo test --all-features --no-fail-fast "${selection[@]}"
fi
status=0
cargo test --all-features --no-fail-fast --workspace || status=$?

# The same gateway tests again with the store in PostgreSQL (one database per data
# directory, wagate_tdir_*, dropped afterwards): linking, restarts, webhooks, messages.
echo "scripts/test.sh: linking, restarts, webhooks and messages again, on PostgreSQL" >&2
WAGATE_TEST_STORE=postgres cargo test --all-features --no-fail-fast -p wagate \
  --test linking --test restarts --test webhooks --test messages || status=$?
if command -v psql >/dev/null; then
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
    "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\" WITH (FORCE);' FROM pg_database WHERE datname LIKE 'wagate\\_tdir\\_%'" |
    psql -h 127.0.0.1 -U postgres -d postgres -q >/dev/null || true
fi
exit $status
