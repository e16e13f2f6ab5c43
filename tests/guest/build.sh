#!/usr/bin/env bash
# Builds the tiny test guest booted by the libvirt end-to-end test, into
# tests/guest/.build/:
#   vmlinuz      a Debian amd64 kernel (downloaded once with apt-get download, then cached)
#   initrd.img   a busybox-static initramfs whose /init prints
#                "HVMESH-GUEST-BOOTED <hvmesh.marker from the kernel command line>"
#                on the serial console, then stays up printing a heartbeat and
#                powers off when the ACPI power button is pressed; with
#                hvmesh.shell=1 it also runs an interactive shell on the
#                serial console and on the first virtual terminal (VGA)
#   disk.qcow2   a small empty qcow2 image used as the guest's root disk
# Safe to run again: only builds what is missing or out of date.
# Environment: HVMESH_GUEST_KERNEL_PKG forces the kernel package
# (default: whatever linux-image-amd64 currently depends on).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
build="$here/.build"
mkdir -p "$build"

log() { echo "guest-build: $*"; }
die() { echo "guest-build: ERROR: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip qemu-img; do
  command -v "$tool" >/dev/null || die "missing tool '$tool' (run tests/setup_libvirt.sh as root)"
done
busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
  if [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then busybox="$candidate"; break; fi
done
[ -n "$busybox" ] || die "no statically linked busybox found (apt-get install busybox-static)"

# Kernel modules copied into the initramfs, in load order.
# button/evdev: ACPI power button -> input event, so "virsh shutdown" works.
# virtio*: lets the guest see its virtio disk (reported on the console).
modules="drivers/acpi/button.ko drivers/input/evdev.ko
drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko
drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko
drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko"

# --- kernel -----------------------------------------------------------------
if [ -s "$build/vmlinuz" ] && [ -s "$build/kernel-package" ] && [ -d "$build/modules" ]; then
  log "kernel cached: $(cat "$build/kernel-package")"
else
  pkg="${HVMESH_GUEST_KERNEL_PKG:-}"
  if [ -z "$pkg" ]; then
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null \
           | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')"
  fi
  if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    log "apt-get update (kernel package unknown to apt)"
    apt-get update -qq
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null \
           | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')"
  fi
  [ -n "$pkg" ] || die "cannot resolve the kernel package behind linux-image-amd64 (apt-get update?)"
  log "downloading $pkg"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # Run as root the download would be sandboxed as _apt, who cannot write $work.
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) \
    || die "apt-get download $pkg failed"
  deb="$(ls "$work"/*.deb)"
  dpkg-deb -x "$deb" "$work/x"
  vmlinuz="$(ls "$work"/x/boot/vmlinuz-* | head -n1)"
  [ -s "$vmlinuz" ] || die "no /boot/vmlinuz-* in $pkg"
  kver="${vmlinuz##*/vmlinuz-}"
  rm -rf "$build/modules"
  mkdir -p "$build/modules"
  for m in $modules; do
    src="$work/x/lib/modules/$kver/kernel/$m"
    [ -f "$src" ] || die "module $m missing from $pkg"
    cp "$src" "$build/modules/"
  done
  cp "$vmlinuz" "$build/vmlinuz.tmp"
  mv "$build/vmlinuz.tmp" "$build/vmlinuz"
  echo "$pkg $(dpkg-deb -f "$deb" Version) $kver" > "$build/kernel-package"
  rm -f "$build/initrd.img"   # modules changed: rebuild the initramfs
  log "kernel ready: $(cat "$build/kernel-package")"
fi

# --- initramfs --------------------------------------------------------------
if [ -s "$build/initrd.img" ] && [ "$build/initrd.img" -nt "$0" ] \
   && [ "$build/initrd.img" -nt "$build/vmlinuz" ]; then
  log "initrd.img up to date"
else
  tree="$(mktemp -d)"
  mkdir -p "$tree"/{bin,dev,proc,sys,tmp,lib/modules}
  cp "$busybox" "$tree/bin/busybox"
  ln -s busybox "$tree/bin/sh"
  for m in $modules; do cp "$build/modules/${m##*/}" "$tree/lib/modules/"; done
  echo "$modules" | tr ' ' '\n' | sed -n 's|.*/||p' > "$tree/lib/modules/order"
  cat > "$tree/init" <<'INIT'
#!/bin/sh
# PID 1 of the test guest. Kernel command line parameters read here:
#   hvmesh.marker=VALUE     echoed in the boot line
#   hvmesh.heartbeat=SECS   heartbeat period (default 10, 0 = none)
#   hvmesh.shell=1          after the boot lines, an interactive shell (prompt
#                           "guest# ") on /dev/ttyS0 and /dev/tty1, run again
#                           whenever it exits
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true

# Write to the first serial port directly, whatever console= says.
if [ -c /dev/ttyS0 ]; then out=/dev/ttyS0; else out=/dev/console; fi
exec </dev/null >"$out" 2>&1

marker=none
heartbeat=10
shell=0
for word in $(cat /proc/cmdline); do
  case "$word" in
    hvmesh.marker=*) marker="${word#hvmesh.marker=}" ;;
    hvmesh.heartbeat=*) heartbeat="${word#hvmesh.heartbeat=}" ;;
    hvmesh.shell=*) shell="${word#hvmesh.shell=}" ;;
  esac
done

while read -r mod; do insmod "/lib/modules/$mod" 2>/dev/null || true; done </lib/modules/order

# ACPI power button (virsh shutdown / reboot), armed before the boot line is
# printed so a shutdown requested right after it is not lost: any event from the
# "Power Button" input device powers the guest off.
acpi=""
for ev in /sys/class/input/event*; do
  [ -e "$ev/device/name" ] || continue
  case "$(cat "$ev/device/name")" in
    "Power Button")
      dev="/dev/input/${ev##*/}"
      exec 3<"$dev"   # opened here, so events are queued from now on
      ( head -c 1 <&3 >/dev/null
        echo "HVMESH-GUEST-POWEROFF $marker"
        poweroff -f ) &
      exec 3<&-
      acpi="$dev"
      break ;;
  esac
done

echo "HVMESH-GUEST-BOOTED $marker"
echo "HVMESH-GUEST-KERNEL $(uname -r)"
echo "HVMESH-GUEST-ACPI ${acpi:-none}"
for disk in /sys/block/vd*; do
  [ -e "$disk" ] && echo "HVMESH-GUEST-DISK ${disk##*/} $(cat "$disk/size") sectors"
done

# hvmesh.shell=1: a shell on each terminal, in a session of its own with the terminal
# as its controlling tty (setsid -c), so ^C and job control work; when it exits
# (exit, ^D) a new one starts. (cttyhack would pick the last console= for both.)
if [ "$shell" = 1 ]; then
  for tty in /dev/ttyS0 /dev/tty1; do
    [ -c "$tty" ] || continue
    ( export HOME=/ PS1='guest# ' TERM=linux
      while :; do
        setsid -c sh -i <"$tty" >"$tty" 2>&1
        sleep 1
      done ) &
  done
fi

n=0
while :; do
  if [ "$heartbeat" -gt 0 ] 2>/dev/null; then
    sleep "$heartbeat"
    n=$((n + 1))
    echo "HVMESH-GUEST-ALIVE $marker $n"
  else
    sleep 3600
  fi
done
INIT
  chmod 0755 "$tree/init"
  (cd "$tree" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9) \
    > "$build/initrd.img.tmp"
  rm -rf "$tree"
  mv "$build/initrd.img.tmp" "$build/initrd.img"
  log "initrd.img built ($(stat -c %s "$build/initrd.img") bytes)"
fi

# --- root disk --------------------------------------------------------------
if [ -s "$build/disk.qcow2" ]; then
  log "disk.qcow2 present"
else
  qemu-img create -q -f qcow2 "$build/disk.qcow2.tmp" 16M
  mv "$build/disk.qcow2.tmp" "$build/disk.qcow2"
  log "disk.qcow2 created (16 MiB virtual)"
fi

# Readable by the unprivileged QEMU user, whatever the umask was.
chmod 0755 "$build" "$build/modules"
chmod 0644 "$build"/vmlinuz "$build"/initrd.img "$build"/disk.qcow2 "$build"/kernel-package
log "artifacts in $build"
