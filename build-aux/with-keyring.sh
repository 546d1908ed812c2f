#!/bin/sh
# Run a command with a private D-Bus session bus and a real, unlocked gnome-keyring
# (Secret Service only), both torn down when the command exits:
#
#   build-aux/with-keyring.sh COMMAND [ARG...]
#
# The keyring lives in a fresh temporary directory (XDG_DATA_HOME, XDG_RUNTIME_DIR,
# XDG_CACHE_HOME point there), so the user's own keyrings are never touched, and its
# password is random and exists only in memory for this run.
set -eu

if [ "${HB_WITH_KEYRING_INNER:-}" = "1" ]; then
  unset HB_WITH_KEYRING_INNER
  # Inside dbus-run-session: run the daemon as our own child on this bus (so that we
  # can stop and reap it), let it create and unlock the login keyring with the
  # password on stdin, and wait until it owns the Secret Service name.
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  printf '%s' "$password" |
    gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null &
  keyring_pid=$!
  unset password
  # With XDG_RUNTIME_DIR set, the daemon's control socket has this standard path.
  GNOME_KEYRING_CONTROL="$XDG_RUNTIME_DIR/keyring"
  export GNOME_KEYRING_CONTROL

  owner=""
  tries=0
  while [ "$owner" != "$keyring_pid" ] && [ "$tries" -lt 100 ]; do
    owner=$(dbus-send --session --dest=org.freedesktop.DBus --print-reply=literal \
      /org/freedesktop/DBus org.freedesktop.DBus.GetConnectionUnixProcessID \
      string:org.freedesktop.secrets 2>/dev/null | awk '{ print $2 }') || true
    [ "$owner" = "$keyring_pid" ] || sleep 0.1
    tries=$((tries + 1))
  done
  if [ "$owner" != "$keyring_pid" ]; then
    echo "with-keyring: gnome-keyring-daemon did not provide the Secret Service" >&2
    kill "$keyring_pid" 2>/dev/null || true
    exit 1
  fi

  status=0
  "$@" || status=$?
  kill "$keyring_pid" 2>/dev/null || true
  wait "$keyring_pid" 2>/dev/null || true
  exit "$status"
fi

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi

keyring_home=$(mktemp -d "${TMPDIR:-/tmp}/hbsync-keyring-XXXXXX")
chmod 700 "$keyring_home"
mkdir -p "$keyring_home/data" "$keyring_home/cache" "$keyring_home/runtime"
chmod 700 "$keyring_home/runtime"
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
  rm -rf "$keyring_home"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

status=0
XDG_DATA_HOME="$keyring_home/data" \
XDG_CACHE_HOME="$keyring_home/cache" \
XDG_RUNTIME_DIR="$keyring_home/runtime" \
HB_WITH_KEYRING_INNER=1 \
  dbus-run-session -- sh "$0" "$@" || status=$?
exit "$status"
