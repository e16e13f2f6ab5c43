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

# Every program and package a test calls, from Debian:
#   python3-venv    venv and pip for the system Python (Debian ships them separately)
#   libxml2-utils   xmllint, which virt-xml-validate runs (libvirt domain XML schema tests)
#   cloud-init      cloud-init's own readers, run by the system python3 against the
#                   metadata service and the config drive (tests/cloudinit_probe.py)
#   util-linux      blkid, which checks the config drive's label and type
#   iproute2        ip netns, the instance's network namespace in the metadata tests
#   openssl         makes the certificates of the TLS connection test and of the WinRM
#                   test peer (tests/winrm; pywinrm comes with the test extra)
#   zsh             runs the generated zsh completion script
#   chromium, chromium-driver  the headless browser the console pages are tested in
#   novnc           noVNC, the VNC console page the console proxy serves
wanted_debs="python3-venv libxml2-utils cloud-init util-linux iproute2 openssl zsh"
wanted_debs="$wanted_debs chromium chromium-driver novnc"
missing_debs=""
for pkg in $wanted_debs; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing_debs="$missing_debs $pkg"
  fi
done
if [ -n "$missing_debs" ]; then
  echo "setup: installing:$missing_debs"
  apt_install $missing_debs
fi

# libvirtd, QEMU and the test guest for the libvirt driver's tests; also libvirt-dev,
# gcc and the Python headers, before pip builds libvirt-python below.
bash tests/setup_libvirt.sh

# govmomi's vCenter simulator for the VMware driver's tests: Debian ships the library
# (golang-github-vmware-govmomi-dev), not the program; tests/vcsim/build.sh builds ours.
vcsim_bin="$(bash tests/vcsim/build.sh)"
echo "setup: vCenter simulator: $vcsim_bin"

# xterm.js (npm registry) for the serial console's web terminal.
bash tests/setup_xterm.sh

# A standalone OpenStack Ironic (PyPI) in a virtualenv of its own, for the Ironic driver.
bash tests/ironic/setup.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -m pip install -q --disable-pip-version-check -e tests/example_plugin
echo "setup: test environment ready (.venv)"
