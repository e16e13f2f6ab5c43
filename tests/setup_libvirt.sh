#!/usr/bin/env bash
# Prepares this machine for the libvirt end-to-end test: a running libvirtd
# (qemu:///system) able to start software-emulated QEMU guests (domain type
# 'qemu', no KVM needed), plus the test guest built by tests/guest/build.sh.
#
# Steps: install the Debian packages that are missing (also what pip needs to
# build libvirt-python); make /dev/kvm usable by the QEMU user when it exists;
# start virtlogd and libvirtd if they are not running (directly, or through
# systemd when that is PID 1); build the guest; boot it once through libvirt as
# a smoke test. Settings in
# /etc/libvirt/qemu.conf are only added when the smoke boot shows they are
# needed (each added line carries a comment saying why).
#
# Safe to run again; only adds what is missing. Fails (non-zero) when something
# cannot be done. Run as non-root it changes nothing, writes
# tests/guest/.build/libvirt-skip (the reason) and exits 0 so the end-to-end
# test can skip.
#
# Environment:
#   HVMESH_QEMU_AS_ROOT=1    run QEMU as root (qemu.conf user/group), so guest
#                            files may live in directories only root can enter
#   HVMESH_LIBVIRT_SMOKE=0   skip the smoke boot
set -euo pipefail
cd "$(dirname "$0")/.."

build=tests/guest/.build
skip_marker="$build/libvirt-skip"
qemu_conf=/etc/libvirt/qemu.conf
uri=qemu:///system
smoke_name=hvmesh-setup-smoke
smoke_timeout=180

log() { echo "setup-libvirt: $*"; }
die() { echo "setup-libvirt: ERROR: $*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
  if mkdir -p "$build" 2>/dev/null && echo "tests/setup_libvirt.sh was not run as root:" \
       "libvirtd and the test guest are not set up" 2>/dev/null > "$skip_marker"; then
    log "not root: libvirt/QEMU setup skipped (wrote $skip_marker; the libvirt end-to-end test will skip)"
  else
    log "not root: libvirt/QEMU setup skipped (could not write $skip_marker either)"
  fi
  exit 0
fi
rm -f "$skip_marker"

apt_install() {
  if [ -z "${HVMESH_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export HVMESH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- packages ---------------------------------------------------------------
# libvirt-python (a test extra) has no wheels: pip compiles it against libvirt-dev,
# found with pkg-config, with gcc, libc6-dev and the Python headers (python3-dev).
wanted="libvirt-dev pkg-config gcc libc6-dev python3-dev libvirt-daemon-system
libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils cpio"
missing=""
for pkg in $wanted; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing="$missing $pkg"
  fi
done
# Any statically linked busybox will do for the guest's initramfs.
if ! { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }; then
  missing="$missing busybox-static"
fi
if [ -n "$missing" ]; then
  log "installing:$missing"
  apt_install $missing
else
  log "packages already installed"
fi

# --- QEMU user and /dev/kvm -------------------------------------------------
conf_value() {  # prints the uncommented value of a qemu.conf key, if set
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$qemu_conf" | tail -n1 | tr -d '"'
}
qemu_user="$(conf_value user)"
qemu_user="${qemu_user:-libvirt-qemu}"

# udev normally gives /dev/kvm to group kvm, mode 0660. Without that (containers,
# machines without udev) libvirt finds /dev/kvm unusable for the QEMU user and
# probes QEMU again on nearly every call, which takes seconds each time.
if [ -e /dev/kvm ] && getent group kvm >/dev/null \
   && ! runuser -u "$qemu_user" -- test -r /dev/kvm -a -w /dev/kvm 2>/dev/null; then
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
  log "/dev/kvm: set group kvm, mode 0660 (was not usable by $qemu_user)"
fi

# --- qemu.conf --------------------------------------------------------------
conf_changed=0
# Adds "key = value" to qemu.conf with a comment, unless the key is already set.
conf_add() {
  local key="$1" value="$2" why="$3"
  if grep -qE "^[[:space:]]*$key[[:space:]]*=" "$qemu_conf"; then
    log "qemu.conf: $key already set to $(conf_value "$key"), left alone"
    return 1
  fi
  printf '\n# Added by tests/setup_libvirt.sh: %s\n%s = %s\n' "$why" "$key" "$value" >> "$qemu_conf"
  log "qemu.conf: added $key = $value ($why)"
  conf_changed=1
}

# Succeeds when it added at least one of the two settings.
qemu_as_root() {
  local why="$1" rc=1
  conf_add user '"root"' "$why" && rc=0
  conf_add group '"root"' "$why" && rc=0
  return $rc
}

if [ "${HVMESH_QEMU_AS_ROOT:-0}" = 1 ]; then
  qemu_as_root "HVMESH_QEMU_AS_ROOT=1: guest files may be in directories only root can enter" || true
fi

# --- daemons ----------------------------------------------------------------
with_systemd=0
[ -d /run/systemd/system ] && with_systemd=1

libvirt_answers() { timeout 20 virsh -c "$uri" uri >/dev/null 2>&1; }

start_daemons() {
  if [ "$with_systemd" = 1 ]; then
    systemctl start virtlogd.socket libvirtd.service
    return
  fi
  # virtlogd first: without it libvirtd hangs about a minute starting a guest.
  if ! pidof virtlogd >/dev/null; then
    virtlogd -d
    log "started virtlogd"
  fi
  if ! pidof libvirtd >/dev/null; then
    libvirtd -d
    log "started libvirtd"
  fi
}

wait_for_libvirt() {
  local i
  for i in $(seq 1 60); do
    if libvirt_answers; then return 0; fi
    sleep 1
  done
  die "libvirtd does not answer on $uri after 60 s (see /var/log/libvirt/libvirtd.log)"
}

restart_libvirtd() {
  log "restarting libvirtd (qemu.conf changed)"
  if [ "$with_systemd" = 1 ]; then
    systemctl restart libvirtd.service
  else
    local pid i
    pid="$(cat /run/libvirtd.pid 2>/dev/null || pidof libvirtd || true)"
    if [ -n "$pid" ]; then
      kill "$pid"
      for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && die "libvirtd (pid $pid) did not stop"
    fi
    start_daemons
  fi
  wait_for_libvirt
  conf_changed=0
}

start_daemons
wait_for_libvirt
if [ "$conf_changed" = 1 ]; then restart_libvirtd; fi
log "libvirt answers on $uri ($(virsh -c "$uri" version 2>/dev/null | sed -n 's/^Running hypervisor: //p'))"

# --- guest ------------------------------------------------------------------
tests/guest/build.sh

# --- smoke boot -------------------------------------------------------------
if [ "${HVMESH_LIBVIRT_SMOKE:-1}" = 0 ]; then
  log "smoke boot skipped (HVMESH_LIBVIRT_SMOKE=0)"
  log "done"
  exit 0
fi

abs_build="$(cd "$build" && pwd)"
smoke_dir="$abs_build/smoke"
console="$smoke_dir/console.log"
vsh() { timeout 60 virsh -q -c "$uri" "$@"; }

smoke_cleanup() {
  vsh destroy "$smoke_name" >/dev/null 2>&1 || true
}
smoke_cleanup   # left over from an interrupted run
rm -rf "$smoke_dir"
mkdir -p "$smoke_dir"
chmod 0755 "$smoke_dir"
cp "$abs_build/disk.qcow2" "$smoke_dir/disk.qcow2"
cat > "$smoke_dir/domain.xml" <<EOF
<domain type='qemu'>
  <name>$smoke_name</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$abs_build/vmlinuz</kernel>
    <initrd>$abs_build/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet hvmesh.marker=$smoke_name</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$smoke_dir/disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'>
      <log file='$console' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
EOF

# Start the smoke guest; when libvirt refuses, add the qemu.conf setting that
# the error points at, restart libvirtd and try again.
attempt=0
while :; do
  attempt=$((attempt + 1))
  started=$SECONDS
  if err="$(vsh create "$smoke_dir/domain.xml" 2>&1 >/dev/null)"; then
    break
  fi
  echo "$err" >&2
  [ "$attempt" -lt 4 ] || die "could not start the smoke guest after $attempt attempts"
  case "$err" in
    *"Permission denied"*)
      qemu_as_root "QEMU as $qemu_user cannot open guest files under $abs_build (Permission denied)" \
        || die "QEMU cannot open the guest files (Permission denied)" ;;
    *cgroup*)
      conf_add cgroup_controllers '[ ]' "libvirt cannot use cgroups here" \
        || die "libvirt fails on cgroups" ;;
    *namespace*|*unshare*)
      conf_add namespaces '[ ]' "private mount namespaces for QEMU do not work here" \
        || die "libvirt fails setting up namespaces" ;;
    *[Aa]pp[Aa]rmor*|*[Ss][Ee][Ll]inux*|*security*)
      conf_add security_driver '"none"' "the host security driver refuses the guest" \
        || die "libvirt's security driver refuses the guest" ;;
    *) die "could not start the smoke guest (see above and /var/log/libvirt/qemu/$smoke_name.log)" ;;
  esac
  restart_libvirtd
done

booted=0
while [ $((SECONDS - started)) -lt "$smoke_timeout" ]; do
  if [ -f "$console" ] && grep -aq "HVMESH-GUEST-BOOTED $smoke_name" "$console"; then
    booted=1
    break
  fi
  sleep 1
done
if [ "$booted" != 1 ]; then
  echo "--- console ($console), last lines:" >&2
  tail -n 20 "$console" >&2 2>/dev/null || true
  echo "--- /var/log/libvirt/qemu/$smoke_name.log, last lines:" >&2
  tail -n 20 "/var/log/libvirt/qemu/$smoke_name.log" >&2 2>/dev/null || true
  smoke_cleanup
  die "smoke guest did not print its boot marker within ${smoke_timeout} s"
fi
log "smoke guest booted to its marker in $((SECONDS - started)) s"

# ACPI shutdown: the guest powers off on the power button. Not fatal if not.
vsh shutdown "$smoke_name" >/dev/null
stopped=0
for _ in $(seq 1 30); do
  if ! vsh domstate "$smoke_name" >/dev/null 2>&1; then stopped=1; break; fi
  sleep 1
done
if [ "$stopped" = 1 ]; then
  log "smoke guest powered off on ACPI shutdown"
else
  log "WARNING: smoke guest ignored ACPI shutdown for 30 s; destroyed it"
  smoke_cleanup
fi
rm -rf "$smoke_dir"
log "done"
