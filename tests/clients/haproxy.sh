#!/usr/bin/env bash
# Provides the HAProxy that tests/replicas.rs runs, as "$1/bin/haproxy" (tests/clients/setup.sh
# calls it with the test-tools directory). In order of preference:
#   1. an haproxy already on PATH is linked;
#   2. as root, Debian's package is installed with apt-get;
#   3. as any other user, Debian's package and the libraries it lacks are downloaded with
#      `apt-get download` and unpacked with `dpkg -x` under "$1/haproxy", behind a wrapper that
#      points the loader at them;
#   4. otherwise it fails once, naming the command that installs it.
set -euo pipefail
tools="${1:?usage: haproxy.sh TOOLS_DIR}"
bin="$tools/bin/haproxy"
mkdir -p "$tools/bin"

works() { "$1" -v 2>/dev/null | grep '^HAProxy version' >/dev/null; }

if [[ -x "$bin" ]] && works "$bin"; then
  exit 0
fi
rm -f "$bin"

found="$(command -v haproxy || true)"
if [[ -z "$found" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "installing haproxy with apt-get" >&2
  if ! apt-cache policy haproxy 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  found=/usr/sbin/haproxy
fi
if [[ -n "$found" ]] && works "$found"; then
  ln -s "$found" "$bin"
  exit 0
fi

fail() {
  echo "tests/clients/haproxy.sh: $*" >&2
  echo "install HAProxy and run the tests again: apt-get install -y haproxy (as root)" >&2
  exit 1
}
command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
  fail "no haproxy on PATH, and no apt-get to fetch Debian's package without root"

# Without root: haproxy's package and, one level of dependencies after another, every package it
# needs that this system does not have, unpacked into a directory of their own.
root="$tools/haproxy"
rm -rf "$root" "$tools/haproxy.debs"
mkdir -p "$root" "$tools/haproxy.debs"
echo "downloading haproxy with apt-get download into $root (no root needed)" >&2
declare -A seen=([haproxy]=1)
queue=(haproxy)
while ((${#queue[@]})); do
  package="${queue[0]}"
  queue=("${queue[@]:1}")
  (cd "$tools/haproxy.debs" && apt-get download -qq "$package") ||
    fail "apt-get download $package failed (apt-get update, as root, may be needed first)"
  # "Depends: name" lines only: pre-dependencies are for installing, and the first of several
  # alternatives is the one apt would pick.
  for dep in $(apt-cache depends "$package" | sed -n 's/^  Depends: \([^<>]*\)$/\1/p'); do
    [[ -n "${seen[$dep]:-}" ]] && continue
    seen[$dep]=1
    dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed' ||
      queue+=("$dep")
  done
done
for deb in "$tools"/haproxy.debs/*.deb; do
  dpkg -x "$deb" "$root"
done
rm -rf "$tools/haproxy.debs"

multiarch="$(uname -m)-linux-gnu"
libs="$root/usr/lib/$multiarch:$root/lib/$multiarch"
missing="$(LD_LIBRARY_PATH="$libs" ldd "$root/usr/sbin/haproxy" | grep 'not found' || true)"
[[ -z "$missing" ]] || fail "the unpacked haproxy still lacks libraries: $missing"
cat >"$bin" <<EOF
#!/bin/sh
# HAProxy unpacked from Debian's package by tests/clients/haproxy.sh, with the libraries it lacked.
LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$root/usr/sbin/haproxy" "\$@"
EOF
chmod +x "$bin"
works "$bin" || fail "the unpacked haproxy does not run: $("$bin" -v 2>&1 | head -3)"
