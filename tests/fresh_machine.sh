#!/usr/bin/env bash
# Proves the README's set-up commands on a clean Debian 12 (bookworm) root.
#
# Builds the root with debootstrap (from the Debian mirror this machine's apt sources
# name), carries in this machine's package-manager settings (apt sources and settings,
# pip configuration and PIP_* variables, CA certificates) so installs inside reach the
# same registries, copies the checkout in (.git and the files git ls-files lists, tracked
# and untracked, without ignored ones such as .venv), then, inside the root (entered with pivot_root,
# in its own PID and mount namespaces, with its own /proc, /dev and /run and the host's
# /sys), runs:
#
#   a  the README's first command, verbatim (the first ```sh block of README.md), with
#      `hvmesh up` in the background; waits for its banner, runs every command the
#      banner suggests as printed (flavor, image, network, `server create --wait`, ...),
#      checks the server is ACTIVE, stops `hvmesh up` with SIGINT and checks it exits 0;
#   b  the install half of the README's second command: `bash tests/setup.sh` (Debian
#      packages, libvirtd and QEMU started inside the root, the test guest built and
#      smoke-booted, the virtualenv with the test extras);
#   c  (only when asked for) the README's second command verbatim (its second ```sh
#      block) with CI=true, as CI runs it: set-up, ruff, the whole test suite.
#
# Usage: tests/fresh_machine.sh [--root DIR] [--steps "a b"] [--rebuild-base] [--shell]
#   --root DIR       where the roots are kept (default /var/tmp/hvmesh-fresh): DIR/base is
#                    the pristine debootstrap (made once, reused), DIR/root the copy each
#                    run works in (made afresh every run), DIR/*.log the logs
#   --steps LIST     steps to run, in order (default "a b"; "a b c" adds the test suite)
#   --rebuild-base   debootstrap again instead of reusing DIR/base
#   --shell          only open a shell in DIR/root as the steps see it (after a run, to
#                    look around); with stdin not a terminal, runs the script it reads
#
# Needs root, network access to the mirror and the package index, and about 3 GB in DIR.
# Takes minutes. Exit status 0 when every step passed.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
fresh_dir=/var/tmp/hvmesh-fresh
steps="a b"
rebuild_base=0
shell_only=0
suite=bookworm
step_a_timeout=1800   # seconds: apt-get, pip install, hvmesh up, the banner's commands
step_b_timeout=3600   # seconds: tests/setup.sh
step_c_timeout=7200   # seconds: the second command, test suite included

log() { printf '%s fresh-machine: %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) fresh_dir="${2:?--root needs a directory}"; shift 2 ;;
    --root=*) fresh_dir="${1#--root=}"; shift ;;
    --steps) steps="${2:?--steps needs a list}"; shift 2 ;;
    --steps=*) steps="${1#--steps=}"; shift ;;
    --rebuild-base) rebuild_base=1; shift ;;
    --shell) shell_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
for s in $steps; do
  case "$s" in a|b|c) ;; *) die "unknown step '$s' (steps are a, b and c)" ;; esac
done

[ "$(id -u)" = 0 ] || die "run as root: debootstrap, namespaces and mounts need it"
mkdir -p "$fresh_dir"
fresh_dir="$(cd "$fresh_dir" && pwd)"
base="$fresh_dir/base"
root="$fresh_dir/root"
running="$fresh_dir/.running"   # ids of the `timeout` processes running commands in the root
: > "$running"

# --- results ----------------------------------------------------------------
results=()
record() {  # record PASS|FAIL NAME SECONDS [NOTE]
  results+=("$(printf '  %-4s  %-58s %5ss%s' "$1" "$2" "$3" "${4:+   ($4)}")")
}
summary() {
  log "results:"
  local line
  for line in "${results[@]}"; do echo "$line"; done
}

# --- cleanup ----------------------------------------------------------------
# Every command in the root runs in its own PID and mount namespaces (unshare
# --kill-child), so its processes and mounts end when unshare does. When the script is
# interrupted, this stops what it started: the `timeout` processes running commands in
# the root (by the ids in $running; timeout passes the signal on to unshare, and
# unshare's end ends everything in the root), its other child processes (by their id),
# debootstrap's chrooted processes; and it unmounts anything left under the directory
# (debootstrap's, if it stopped halfway).
kill_tree() {  # kill_tree PID: PID's descendants, then PID
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
  kill -TERM "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid link mnt child
  trap - ERR
  if [ -f "$running" ]; then
    while read -r pid; do
      if [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = timeout ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done < "$running"
    rm -f "$running"
  fi
  for child in $(ps -o pid= --ppid $$ 2>/dev/null); do kill_tree "$child"; done
  for link in /proc/[0-9]*/root; do
    pid="${link#/proc/}"; pid="${pid%/root}"
    if [ "$(readlink "$link" 2>/dev/null)" = "$root" ] || [ "$(readlink "$link" 2>/dev/null)" = "$base.tmp" ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  awk -v dir="$fresh_dir/" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r mnt; do
      umount -l "$mnt" 2>/dev/null && log "cleanup: unmounted $mnt"
    done
  exit "$rc"
}
trap cleanup EXIT
trap 'log "ERROR: line $LINENO: \"$BASH_COMMAND\" failed"' ERR
trap 'log "interrupted"; exit 130' INT TERM

# Runs "$@" in the background and waits for it, so that a signal reaches the traps at
# once instead of after the command.
run_waiting() {
  "$@" &
  wait "$!"
}

# --- the Debian mirror this machine uses --------------------------------------
# The URI of the first enabled "deb" source for the suite, in one-line (.list) or
# deb822 (.sources) format.
debian_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && enabled != "no" && uri != "")
          print uri
        types = ""; suites = ""; uri = ""; enabled = ""
      }
      /^[[:space:]]*$/ { flush(); next }
      /^#/ { next }
      tolower($1) == "types:" { $1 = ""; types = $0 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      END { flush() }' "$f"
  done
}

# --- running commands inside the root --------------------------------------
# Environment carried in: pip's variables, proxies, and the CA bundle variables.
carried_env=()
while IFS= read -r name; do
  carried_env+=("$name=${!name}")
done < <(compgen -e | grep -E '^(PIP_[A-Z0-9_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|all_proxy|ALL_PROXY|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE)$' || true)

# Local directories and files pip's settings point at (find-links, file:// indexes,
# constraints): mounted read-only at the same path inside the root. For an index
# (.../simple) its parent, where the index's relative links to the files lead.
pip_config_files=(/etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf")
[ -n "${XDG_CONFIG_HOME:-}" ] && pip_config_files+=("$XDG_CONFIG_HOME/pip/pip.conf")
[ -n "${PIP_CONFIG_FILE:-}" ] && pip_config_files+=("$PIP_CONFIG_FILE")
pip_local_paths=()
while IFS= read -r path; do
  case "$path" in /etc/*|"$HOME"/*|/proc/*|/sys/*|/dev/*) continue ;; esac
  [ "${path##*/}" = simple ] && path="${path%/simple}"
  if [ -e "$path" ]; then pip_local_paths+=("$path"); fi
done < <(
  { for f in "${pip_config_files[@]}"; do [ -f "$f" ] && grep -v '^[[:space:]]*[#;]' "$f"; done
    for kv in "${carried_env[@]}"; do case "$kv" in PIP_*) echo "${kv#*=}" ;; esac; done
  } | grep -oE "(file://)?/[^[:space:]\"',]+" | sed 's#^file://##; s#/*$##' | sort -u
)

# Inside new PID and mount namespaces: the root bound onto itself, a private /dev
# (device nodes made here, so nothing inside can change the host's), /dev/pts, /dev/shm,
# a tmpfs /run, the host's /sys, pip's local paths read-only; then pivot_root into it
# and drop the host's tree, with a clean environment.
#
# pivot_root, not a plain chroot: libvirtd gives each QEMU its own mount namespace and
# then works in it through setns(), which moves a process to the root of that mount
# namespace. Under a chroot that root is the host's / (libvirt then fails with
# "unable to stat <disk>" and QEMU with "Failed to create PTY"); after pivot_root it is
# the root's own /, as on a machine.
enter_root() {
  local root="$1"; shift
  local envs=() path
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  mount --rbind "$root" "$root"
  mount -t tmpfs -o mode=0755,nosuid dev "$root/dev"
  mknod -m 0666 "$root/dev/null" c 1 3
  mknod -m 0666 "$root/dev/zero" c 1 5
  mknod -m 0666 "$root/dev/full" c 1 7
  mknod -m 0666 "$root/dev/random" c 1 8
  mknod -m 0666 "$root/dev/urandom" c 1 9
  mknod -m 0666 "$root/dev/tty" c 5 0
  # Root-only, as on a machine without udev rules; tests/setup_libvirt.sh sets its group.
  if [ -e /dev/kvm ]; then mknod -m 0600 "$root/dev/kvm" c 10 232; fi
  if [ -e /dev/net/tun ]; then mkdir -p "$root/dev/net"; mknod -m 0666 "$root/dev/net/tun" c 10 200; fi
  mkdir -p "$root/dev/pts" "$root/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
  # As udev makes it: a device node, which opens the devpts instance beside it.
  mknod -m 0666 "$root/dev/ptmx" c 5 2
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
  ln -s /proc/self/fd "$root/dev/fd"
  ln -s /proc/self/fd/0 "$root/dev/stdin"
  ln -s /proc/self/fd/1 "$root/dev/stdout"
  ln -s /proc/self/fd/2 "$root/dev/stderr"
  mount --rbind /sys "$root/sys"
  mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
  mkdir -p "$root/run/lock"
  for path in $HVMESH_FRESH_PIP_PATHS; do
    if [ -d "$path" ]; then mkdir -p "$root$path"; else mkdir -p "$root$(dirname "$path")"; touch "$root$path"; fi
    mount --bind "$path" "$root$path"
    mount -o remount,bind,ro "$root$path"
  done
  cd "$root"
  mkdir -p .host
  pivot_root . .host
  cd /
  umount -l /.host
  rmdir /.host
  exec /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "${envs[@]}" "$@"
}
export -f enter_root
export HVMESH_FRESH_PIP_PATHS="${pip_local_paths[*]:-}"

in_root() {  # in_root TIMEOUT COMMAND...: run COMMAND inside the root
  local limit="$1"; shift
  timeout --foreground --kill-after=30 "$limit" \
    unshare --pid --fork --kill-child --mount --propagation private --mount-proc="$root/proc" \
    bash -c 'set -euo pipefail; enter_root "$@"' enter_root "$root" "${carried_env[@]}" -- "$@" <&0 &
  local pid=$!
  echo "$pid" >> "$running"   # for cleanup: ending timeout ends unshare, and so the root
  wait "$pid"
}

if [ "$shell_only" = 1 ]; then
  [ -x "$root/bin/bash" ] || die "no root at $root yet: run the steps first"
  log "shell in $root (exit to leave)"
  if [ -t 0 ]; then in_root 86400 /bin/bash -i; else in_root 86400 /bin/bash -s; fi
  exit
fi

# --- base: debootstrap, once --------------------------------------------------
step_started=$SECONDS
if [ "$rebuild_base" = 1 ] || [ ! -f "$base/.hvmesh-base-complete" ]; then
  command -v debootstrap >/dev/null || {
    log "installing debootstrap (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  mirror="$(debian_mirror | head -n1)"
  [ -n "$mirror" ] || die "no 'deb' source for $suite in /etc/apt/sources.list(.d): cannot tell which Debian mirror to use"
  log "debootstrap $suite from $mirror into $base (log: $fresh_dir/debootstrap.log)"
  rm -rf "$base" "$base.tmp"
  if run_waiting debootstrap --include=ca-certificates "$suite" "$base.tmp" "$mirror" \
       > "$fresh_dir/debootstrap.log" 2>&1; then
    touch "$base.tmp/.hvmesh-base-complete"
    mv "$base.tmp" "$base"
    record PASS "debootstrap $suite" $((SECONDS - step_started))
  else
    tail -n 20 "$fresh_dir/debootstrap.log" >&2
    record FAIL "debootstrap $suite" $((SECONDS - step_started)) "see $fresh_dir/debootstrap.log"
    summary
    exit 1
  fi
else
  log "reusing the pristine root $base (--rebuild-base to debootstrap again)"
fi

# --- prepare: a fresh copy, this machine's settings, the checkout ------------------
step_started=$SECONDS
if awk -v dir="$root/" 'index($2 "/", dir) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
  die "something is still mounted under $root; unmount it first"
fi
log "copying $base to $root"
: > "$fresh_dir/prepare.log"
rm -rf "$root"
cp -a "$base" "$root"
rm -f "$root/.hvmesh-base-complete"

log "carrying in apt settings"
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && cp "$f" "$root/etc/apt/sources.list.d/"
done
for d in apt.conf.d preferences.d trusted.gpg.d keyrings; do
  if [ -d "/etc/apt/$d" ]; then
    mkdir -p "$root/etc/apt/$d"
    cp -a "/etc/apt/$d/." "$root/etc/apt/$d/"
  fi
done
# Keyrings the sources name (Signed-By: / signed-by=), where the root lacks them.
{ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
  { grep -oiE '(signed-by:|signed-by=)[[:space:]]*/[^] [:space:]]+' || true; } | sed 's/^[^/]*//' | sort -u |
  while read -r key; do
    if [ -f "$key" ] && [ ! -e "$root$key" ]; then install -D -m 0644 "$key" "$root$key"; fi
  done
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/hosts "$root/etc/hosts"
# No init inside: package scripts must not start daemons (tests/setup_libvirt.sh starts
# libvirtd itself when it is not running, as on any machine without systemd).
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

log "carrying in pip settings${pip_local_paths[*]:+ (mounted read-only: ${pip_local_paths[*]})}"
for p in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip" ${XDG_CONFIG_HOME:+"$XDG_CONFIG_HOME/pip"} ${PIP_CONFIG_FILE:+"$PIP_CONFIG_FILE"}; do
  [ -e "$p" ] || continue
  dest="$p"
  case "$p" in "$HOME"/*) dest="/root/${p#"$HOME"/}" ;; esac
  mkdir -p "$root$(dirname "$dest")"
  cp -a "$p" "$root$dest"
done
[ ${#carried_env[@]} -gt 0 ] && log "carrying in variables: $(printf '%s ' "${carried_env[@]%%=*}")"

log "carrying in CA certificates"
mkdir -p "$root/usr/local/share/ca-certificates"
if [ -d /usr/local/share/ca-certificates ]; then
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
in_root 300 update-ca-certificates >> "$fresh_dir/prepare.log" 2>&1 </dev/null
# Certificates in this machine's bundle that the root's still lacks (added to the bundle
# some other way): kept in /usr/local/share/ca-certificates, which update-ca-certificates
# reads every time it regenerates the bundle.
split_pem() {  # split_pem BUNDLE DIR: one file per certificate
  mkdir -p "$2"
  awk -v dir="$2" '
    /-----BEGIN CERTIFICATE-----/ { n++; f = sprintf("%s/%05d.pem", dir, n) }
    f { print > f }
    /-----END CERTIFICATE-----/ { close(f); f = "" }' "$1"
}
host_bundle=/etc/ssl/certs/ca-certificates.crt
if [ -f "$host_bundle" ]; then
  work="$(mktemp -d)"
  split_pem "$host_bundle" "$work/host"
  split_pem "$root/etc/ssl/certs/ca-certificates.crt" "$work/root"
  sha256sum "$work"/root/*.pem 2>/dev/null | awk '{ print $1 }' | sort -u > "$work/root.sums"
  added=0
  for pem in "$work"/host/*.pem; do
    [ -f "$pem" ] || continue
    sum="$(sha256sum "$pem" | awk '{ print $1 }')"
    if ! grep -qx "$sum" "$work/root.sums"; then
      added=$((added + 1))
      cp "$pem" "$root/usr/local/share/ca-certificates/host-bundle-$sum.crt"
    fi
  done
  rm -rf "$work"
  if [ "$added" -gt 0 ]; then
    in_root 300 update-ca-certificates >> "$fresh_dir/prepare.log" 2>&1 </dev/null
    log "added $added certificate(s) from this machine's bundle to /usr/local/share/ca-certificates"
  fi
fi

log "copying the checkout to /root/hvmesh"
mkdir -p "$root/root/hvmesh"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' f; do
       if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
     done | tar --null -T - -cf -) | tar -xf - -C "$root/root/hvmesh"
  # The repository itself too, as in a clone: tools such as ruff read .gitignore only
  # inside a git repository.
  if [ -d "$repo/.git" ]; then tar -C "$repo" -cf - .git | tar -xf - -C "$root/root/hvmesh"; fi
else
  tar -C "$repo" --exclude=.git --exclude=.venv --exclude=.build --exclude=.cache \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -cf - . |
    tar -xf - -C "$root/root/hvmesh"
fi
log "checkout: $(find "$root/root/hvmesh" -path "$root/root/hvmesh/.git" -prune -o -type f -print | wc -l) files"
record PASS "prepare (fresh copy, settings, checkout)" $((SECONDS - step_started))

# --- step a: the README's first command ---------------------------------------------
# The first ```sh block of README.md, verbatim.
readme_first="$(awk '/^```sh[[:space:]]*$/ { inside = 1; next } inside && /^```/ { exit } inside { print }' "$repo/README.md")"
[ -n "$readme_first" ] || die "README.md has no \`\`\`sh block"

mkdir -p "$root/root/.fresh"
printf '%s\n' "$readme_first" > "$root/root/.fresh/readme-first.sh"
cat > "$root/root/.fresh/step-a.sh" <<'EOF'
#!/bin/bash
# Runs the README's first command (readme-first.sh) with `hvmesh up` in the background,
# then the commands its banner suggests, then stops it.
set -euo pipefail
say() { printf '%s   [a] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
here=/root/.fresh
out="$here/up.out"
err="$here/up.err"
cd /root/hvmesh

for port in 4222 7422 8775; do  # hvmesh up's default ports, on the host's network
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is already in use on this machine: stop what listens there first"
  fi
done

say "running the README's first command:"
sed 's/^/          /' "$here/readme-first.sh"
setsid bash "$here/readme-first.sh" > "$out" 2> "$err" < /dev/null &
pid=$!
started=$SECONDS
last_note=$SECONDS
until grep -q 'Stop: Ctrl-C' "$out" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then
    rc=0; wait "$pid" || rc=$?
    say "the command exited with status $rc before hvmesh up printed its banner; last output:"
    tail -n 25 "$out" "$err" | sed 's/^/          /'
    exit 1
  fi
  if [ $((SECONDS - last_note)) -ge 30 ]; then
    say "waiting for hvmesh up's banner ($((SECONDS - started)) s); last line: $(tail -n 1 "$out" | cut -c1-100)"
    last_note=$SECONDS
  fi
  sleep 1
done
say "hvmesh up is up after $((SECONDS - started)) s; its banner:"
sed -n '/^hvmesh is up:/,/Stop: Ctrl-C/p' "$out" | sed 's/^/          /'

# Four-space lines under any heading but the contexts' are the suggested commands.
sed -n '/^hvmesh is up:/,/Stop: Ctrl-C/p' "$out" | awk '
  /^  [^ ]/ { heading = $0; sub(/^ +/, "", heading); next }
  /^    [^ ]/ && heading != "NATS CLI contexts written:" { sub(/^    /, ""); print }' > "$here/commands"
[ -s "$here/commands" ] || fail "the banner suggests no command"
grep -q ' server create ' "$here/commands" || fail "the banner suggests no 'server create'"

n=0
active=0
while IFS= read -r command; do
  n=$((n + 1))
  say "\$ $command"
  rc=0
  bash -c "$command" > "$here/command-$n.log" 2>&1 < /dev/null || rc=$?
  sed 's/^/          /' "$here/command-$n.log" | tail -n 12
  [ "$rc" = 0 ] || fail "exit status $rc: $command"
  case "$command" in
    *" server create "*--wait*)
      grep -q 'ACTIVE' "$here/command-$n.log" || fail "the server did not become ACTIVE"
      active=1 ;;
  esac
done < "$here/commands"
[ "$active" = 1 ] || fail "no 'server create --wait' saw its server ACTIVE"
say "all $n suggested commands ran; the server is ACTIVE"

say "stopping hvmesh up (SIGINT)"
kill -INT -- "-$pid"
for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$pid" 2>/dev/null; then
  kill -KILL -- "-$pid"
  fail "hvmesh up did not stop within 60 s of SIGINT"
fi
rc=0; wait "$pid" || rc=$?
[ "$rc" = 0 ] || { tail -n 10 "$err" | sed 's/^/          /'; fail "hvmesh up exited with status $rc"; }
grep -q 'hvmesh stopped.' "$err" || fail "hvmesh up did not say it stopped"
say "hvmesh up exited 0"
EOF
chmod 0755 "$root/root/.fresh/step-a.sh"

# --- step b: tests/setup.sh ------------------------------------------------------------
cat > "$root/root/.fresh/step-b.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
cd /root/hvmesh
echo "$(date +%H:%M:%S)   [b] \$ bash tests/setup.sh"
bash tests/setup.sh 2>&1 | sed 's/^/          /'
EOF
chmod 0755 "$root/root/.fresh/step-b.sh"

# --- step c: the README's second command, as CI runs it --------------------------------
readme_second="$(awk '/^```sh[[:space:]]*$/ { n++; if (n == 2) { inside = 1; next } }
  inside && /^```/ { exit } inside { print }' "$repo/README.md")"
[ -n "$readme_second" ] || die "README.md has no second \`\`\`sh block"
printf '%s\n' "$readme_second" > "$root/root/.fresh/readme-second.sh"
cat > "$root/root/.fresh/step-c.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
cd /root/hvmesh
echo "$(date +%H:%M:%S)   [c] \$ CI=true bash -c '$(cat /root/.fresh/readme-second.sh)'"
CI=true bash /root/.fresh/readme-second.sh 2>&1 | sed 's/^/          /'
EOF
chmod 0755 "$root/root/.fresh/step-c.sh"

run_step() {  # run_step STEP TIMEOUT LOG
  in_root "$2" "/root/.fresh/step-$1.sh" 2>&1 </dev/null | tee "$3"
}

overall=0
for s in $steps; do
  step_started=$SECONDS
  case "$s" in
    a) name="a: README's first command, up to an ACTIVE server"; limit=$step_a_timeout ;;
    b) name="b: bash tests/setup.sh (install half of the second command)"; limit=$step_b_timeout ;;
    c) name="c: README's second command with CI=true (set-up, ruff, pytest)"; limit=$step_c_timeout ;;
  esac
  step_log="$fresh_dir/step-$s.log"
  log "step $name (log: $step_log)"
  if run_waiting run_step "$s" "$limit" "$step_log"; then
    rc=0
  else
    rc=$?
  fi
  if [ "$rc" = 0 ]; then
    record PASS "$name" $((SECONDS - step_started))
  else
    note="exit status $rc; see $step_log"
    [ "$rc" = 124 ] && note="timed out after ${limit}s; see $step_log"
    record FAIL "$name" $((SECONDS - step_started)) "$note"
    overall=1
  fi
done

summary
if [ "$overall" = 0 ]; then log "PASS"; else log "FAIL"; fi
exit "$overall"
