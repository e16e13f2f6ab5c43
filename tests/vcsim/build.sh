#!/usr/bin/env bash
# Builds tests/vcsim/main.go (a vCenter simulator on govmomi's simulator library) with
# Debian's Go, in GOPATH mode against Debian's govmomi sources, and prints the binary's
# path on stdout. Installs golang-go and golang-github-vmware-govmomi-dev when they are
# missing (as root). Rebuilds only when main.go, the Go version or the govmomi package
# changed; safe to run again.
#
# Environment:
#   HVMESH_VCSIM_BIN   where the binary goes (default ~/.cache/hvmesh/vcsim/vcsim);
#                      tests/vcsim_peer.py looks in the same place
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/main.go"
bin="${HVMESH_VCSIM_BIN:-${HOME:-/root}/.cache/hvmesh/vcsim/vcsim}"
work="$(dirname "$bin")"
debs="golang-go golang-github-vmware-govmomi-dev"

log() { echo "vcsim-build: $*" >&2; }
die() { echo "vcsim-build: ERROR: $*" >&2; exit 1; }

missing=""
for pkg in $debs; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing="$missing $pkg"
  fi
done
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || die "need root to apt-get install$missing"
  log "installing:$missing"
  if [ -z "${HVMESH_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export HVMESH_APT_UPDATED=1
  fi
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

gocode=/usr/share/gocode
[ -d "$gocode/src/github.com/vmware/govmomi/simulator" ] \
  || die "$gocode/src/github.com/vmware/govmomi/simulator is missing (golang-github-vmware-govmomi-dev)"

# What the binary is built from: the source, the compiler, the library's version.
stamp="$( { sha256sum "$src"; go version; dpkg-query -W -f='${Version}\n' golang-github-vmware-govmomi-dev; } \
  | sha256sum | cut -d' ' -f1)"
if [ -x "$bin" ] && [ "$(cat "$bin.stamp" 2>/dev/null)" = "$stamp" ]; then
  log "up to date: $bin"
  echo "$bin"
  exit 0
fi

mkdir -p "$work/gocache"
log "building $bin (GOPATH mode, Debian's govmomi $(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev))"
start=$(date +%s)
tmp_bin="$bin.tmp.$$"
trap 'rm -f "$tmp_bin"' EXIT
(
  cd "$here"
  GO111MODULE=off GOPATH="$gocode" GOCACHE="$work/gocache" GOFLAGS="" CGO_ENABLED=0 \
    go build -o "$tmp_bin" main.go
)
mv -f "$tmp_bin" "$bin"
echo "$stamp" > "$bin.stamp"
log "built in $(( $(date +%s) - start ))s"
echo "$bin"
