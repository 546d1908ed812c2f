#!/bin/bash
# Set up and run the main program. For now that is the `hbsync` command-line tool: its help,
# then a round trip through a throw-away encrypted store in a temporary directory.
#
#   build-aux/run-app.sh
#
# Installs what is missing (build-aux/setup-deps.sh), builds into _build/app, and prints each
# step before running it. Safe to rerun; the demo store is deleted on exit.
set -euo pipefail

srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir"
builddir=${HB_BUILD_ROOT:-_build}/app

step() {
  printf '\n=== %s\n' "$*"
}

step "dependencies"
build-aux/setup-deps.sh </dev/null

step "build ($builddir)"
if [[ -f $builddir/build.ninja ]]; then
  meson setup --reconfigure "$builddir" >/dev/null
else
  meson setup "$builddir" >/dev/null
fi
meson compile -C "$builddir"
hbsync="$builddir/libhbsync/tools/hbsync"

step "hbsync --help"
"$hbsync" --help

demo=$(mktemp -d "${TMPDIR:-/tmp}/hbsync-demo-XXXXXX")
trap 'rm -rf "$demo"' EXIT
store="$demo/clinic.db"
# A demo PIN, handed over a pipe (--pin-fd) so that it never touches the disk.
pin=246810
id="patient:6b1f2c7e-3a9d-4e52-8f10-2d4c9b7a5e31"

# hbsync COMMAND... with the demo PIN on file descriptor 3.
hb() {
  "$hbsync" --store "$store" --pin-fd 3 "$@" 3< <(printf '%s\n' "$pin")
}

step "hbsync --store $store init --no-device-secret"
echo "(a new vault and store; PIN $pin for this demo; no device secret in the keyring)"
hb init --no-device-secret

step "hbsync --store $store put -   (a patient document on stdin)"
# A fictitious patient, piped in: it never sits on disk outside the store.
patient='{
  "_id": "'"$id"'",
  "type": "patient",
  "given_name": "Amara",
  "family_name": "Okonkwo",
  "birth_date": "1984-03-17",
  "sex": "female",
  "phone": "+234 803 555 0142",
  "address": "12 Marina Road, Lagos",
  "national_id": "NG-58219734",
  "created_at": "2024-05-02T09:14:00Z",
  "updated_at": "2024-05-02T09:14:00Z"
}'
printf '%s\n' "$patient"
printf '%s\n' "$patient" | hb put -

step "hbsync --store $store get $id"
hb get "$id"

step "the store files do not contain the document in plaintext"
found=0
for needle in "$id" Okonkwo NG-58219734 "Marina Road"; do
  if grep -qF -- "$needle" "$store"*; then
    echo "FOUND \"$needle\" in $(grep -lF -- "$needle" "$store"* | tr '\n' ' ')"
    found=1
  else
    echo "\"$needle\": not in $(cd "$demo" && echo clinic.db*)"
  fi
done
exit "$found"
