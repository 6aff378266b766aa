#!/usr/bin/env bash
# System packages the test suite uses, from Debian's archive. Idempotent: only missing
# packages are installed, and with everything present it returns in well under a second.
# It never fails the caller: without root or apt-get it prints what is missing, and the
# tests that need those packages skip with a reason (SLURM) or use fallbacks.
#
#   scripts/install_system_deps.sh            # everything below
#   scripts/install_system_deps.sh --check    # only report what is missing (exit 0)
#
# Packages:
#   libgl1 libglib2.0-0                 opencv (pulled by mediapipe) needs them even headless
#   openexr                             exrheader: an independent EXR reader for the tests
#   slurmctld slurmd slurm-client       a real one-node SLURM cluster on localhost
#   munge                               SLURM's authentication
#   slurmdbd mariadb-server             accounting, so that sacct works (submitit polls it)
#   chromium                            headless browser test of the QC report
set -u

pkgs=(libgl1 libglib2.0-0 openexr slurmctld slurmd slurm-client munge slurmdbd mariadb-server chromium)

say() { echo "[install_system_deps] $*" >&2; }

missing=()
for pkg in "${pkgs[@]}"; do
  # dpkg -s also lists removed-but-configured packages; require "install ok installed".
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  say "missing: ${missing[*]}"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  say "warning: missing system packages (install them as root with apt-get): ${missing[*]}"
  say "warning: SLURM tests will skip; EXR cross-checks with exrheader may skip"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Package maintainer scripts must not start daemons (there may be no init system, and
# the tests start their own private instances): policy-rc.d exit 101 = "not allowed".
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
fi

say "apt-get install ${missing[*]}"
rc=0
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  # Usually a stale or absent package list; refresh it once and retry.
  apt-get update -qq >/dev/null 2>&1 || say "warning: apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
fi
[ "$own_policy" = 1 ] && rm -f "$policy"

if [ "$rc" != 0 ]; then
  say "warning: apt-get install failed (exit $rc); SLURM tests will skip with a reason"
fi
exit 0
