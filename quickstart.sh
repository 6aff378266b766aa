#!/usr/bin/env bash
# Portrait Engine quick start. Two commands, each installs what it needs (idempotently):
#   ./quickstart.sh demo          # builds the embedded demo shot and runs every stage end to end
#   ./quickstart.sh test [ARGS]   # runs the test suite (ARGS go to pytest)
# Works on a fresh Debian machine with Python 3.11 and access to PyPI/Debian registries.
# Environment: PORTRAIT_VENV (default .venv), PYTHON (default python3.11, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

mode=${1:-}
case "$mode" in
  demo|test) shift ;;
  *) echo "usage: ./quickstart.sh demo [ARGS] | ./quickstart.sh test [PYTEST ARGS]" >&2; exit 2 ;;
esac

VENV=${PORTRAIT_VENV:-.venv}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "error: Python 3.11 is required ($PY is $("$PY" --version 2>&1))" >&2; exit 1; }

log() { echo "[quickstart] $*" >&2; }

# System packages: only when root with apt (CI, fresh containers); otherwise say what is missing.
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || log "apt-get update failed; trying to install anyway"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "warning: missing system packages (install them as root): ${missing[*]}"
  fi
}

# opencv (pulled by mediapipe) needs libGL and GLib even headless.
sys_pkgs=(libgl1 libglib2.0-0)
if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
  sys_pkgs+=(python3-venv)
fi
apt_install "${sys_pkgs[@]}"
# The test suite also uses exrheader (an independent EXR reader) and a real local SLURM
# cluster (slurm-wlm, munge, slurmdbd, mariadb); the script never fails: tests skip instead.
[ "$mode" = test ] && bash scripts/install_system_deps.sh

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# torch first and pinned, so that nothing pulls the multi-GB CUDA build.
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  log "installing torch 2.13.0 (CPU)"
  "${pip[@]}" install torch==2.13.0
fi

# Reinstall the package only when its metadata changed (fast reruns).
extras=""; [ "$mode" = test ] && extras="[test]"
stamp="$VENV/.portrait-install-$(sha256sum setup.cfg | cut -c1-16)${extras:+-test}"
if [ ! -f "$stamp" ]; then
  log "installing portrait-engine$extras"
  "${pip[@]}" install -e ".$extras"
  touch "$stamp"
fi

if [ "$mode" = demo ]; then
  exec "$VENV/bin/portrait" demo "$@"
fi

set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
# pytest's 5 means "no tests collected": a broken selection, not a pass.
exit $rc
