#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (Python 3.11):
# Debian packages where some are missing, then a virtualenv (.venv) with hvmesh and
# its test extras. Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: need root to apt-get install $*" >&2
    exit 1
  fi
  if [ -z "${HVMESH_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export HVMESH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# venv and pip for the system Python (Debian ships them separately).
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  apt_install python3-venv
fi

# libvirtd, QEMU and the test guest for the libvirt driver's tests; libvirt-dev before
# pip builds libvirt-python.
bash tests/setup_libvirt.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -m pip install -q --disable-pip-version-check -e tests/example_plugin
echo "setup: test environment ready (.venv)"
