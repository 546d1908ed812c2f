#!/bin/sh
# Install the Debian 12 packages needed to build, test and run libhbsync.
# glib-networking is GIO's TLS backend (without it every https request fails); gnutls-bin
# gives the tests certtool, to make their certificates.
# Safe to rerun: packages already installed are left alone, and `apt-get update`
# runs only when something is missing.
set -eu

PACKAGES="
meson
ninja-build
pkg-config
gcc
libglib2.0-dev
libgirepository1.0-dev
gobject-introspection
gir1.2-json-1.0
libsecret-1-dev
libargon2-dev
libsqlite3-dev
libgnutls28-dev
gnutls-bin
gnome-keyring
dbus
dbus-daemon
libjson-glib-dev
libsoup-3.0-dev
glib-networking
python3-gi
libsecret-tools
sqlite3
clang
libclang-rt-14-dev
xvfb
xauth
"

missing=""
for pkg in $PACKAGES; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  case "$status" in
    "install ok installed") ;;
    *) missing="$missing $pkg" ;;
  esac
done

if [ -z "$missing" ]; then
  echo "setup-deps: all $(echo "$PACKAGES" | wc -w) packages present"
  exit 0
fi

echo "setup-deps: installing:$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086 # word splitting of the package list is intended
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing </dev/null
