#!/bin/sh
# Install what the tests' CouchDB-protocol server needs: Node.js and npm (Debian's packages,
# installed only when `node` is missing) and the npm packages of tests/server (express-pouchdb,
# PouchDB, ...) at the versions package-lock.json pins.
# Safe to rerun and silent when there is nothing to do: `npm ci` runs only when
# tests/server/node_modules is missing or older than package.json or package-lock.json (a stamp
# file inside node_modules records the last install). Needs no terminal.
set -eu

srcdir=$(cd "$(dirname "$0")/.." && pwd)
server="$srcdir/tests/server"
stamp="$server/node_modules/.hbsync-setup-npm-stamp"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

apt_install() {
  echo "setup-npm: installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null
}

if ! command -v node >/dev/null 2>&1; then
  apt_install nodejs npm
elif ! command -v npm >/dev/null 2>&1; then
  apt_install npm
fi

if [ -f "$stamp" ] && [ ! "$server/package-lock.json" -nt "$stamp" ] &&
  [ ! "$server/package.json" -nt "$stamp" ]; then
  exit 0
fi

echo "setup-npm: npm ci in tests/server (node $(node --version))"
# --ignore-scripts: the only install script is leveldown's, which would compile LevelDB when
# its bundled prebuilt binary does not fit; the prebuilt one (linux-x64) is what loads.
(cd "$server" && npm ci --no-audit --no-fund --ignore-scripts --no-progress </dev/null)
touch "$stamp"
