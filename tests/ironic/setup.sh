#!/usr/bin/env bash
# Installs a standalone OpenStack Ironic (API and conductor in one process) into a
# virtualenv of its own, for the Ironic driver's tests. Safe to run again: it does
# nothing when that Ironic version is already installed there.
#
# Environment:
#   HVMESH_IRONIC_VENV   where the virtualenv goes (default ~/.cache/hvmesh/ironic-venv);
#                        tests/ironic_peer.py looks in the same place
set -euo pipefail
version=39.0.0
venv="${HVMESH_IRONIC_VENV:-${HOME:-/root}/.cache/hvmesh/ironic-venv}"

log() { echo "ironic-setup: $*" >&2; }

installed="$("$venv/bin/python" - 2>/dev/null <<'PY' || true
from importlib.metadata import version
print(version("ironic"))
PY
)"
if [ "$installed" = "$version" ] && [ -x "$venv/bin/ironic" ] && [ -x "$venv/bin/ironic-dbsync" ]; then
  log "up to date: ironic $version in $venv"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi
log "installing ironic==$version into $venv (a few minutes the first time)"
start=$(date +%s)
"$venv/bin/python" -m pip install -q --disable-pip-version-check "ironic==$version"
log "installed in $(( $(date +%s) - start ))s"
