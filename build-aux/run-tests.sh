#!/bin/bash
# The whole test suite, as CI runs it (.ci/run calls this with no arguments):
#
#   build-aux/run-tests.sh [TEST-NAME...]
#
# Installs what is missing (build-aux/setup-deps.sh), then builds three configurations and
# runs `meson test` in each, inside a private D-Bus session with a real, unlocked
# gnome-keyring (build-aux/with-keyring.sh):
#
#   _build/ci    normal build, -Dwerror=true: the whole suite
#   _build/asan  AddressSanitizer + UndefinedBehaviorSanitizer, leak detection on, -Dwerror=true:
#                the whole suite
#   _build/fuzz  clang, -Dfuzzing=true: each libFuzzer target (tests/fuzz) for 15 s
#
# Test names, if given, restrict the runs to those tests (for development; CI gives none):
# fuzzers' names (fuzz-*) the fuzz run, other names the first two, and a run none of the
# names is for is left out.
# The last line of output is always "N passed, N failed", summed over all builds, and the
# exit status is non-zero when anything failed (a build that fails counts as one failure).
set -euo pipefail

srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir"

build_root=${HB_BUILD_ROOT:-_build}
test_names=("$@")
passed_total=0
failed_total=0
summaries=()

# Whatever stops this script early (a failed dependency install, an interrupt) still ends
# with the summary line, counting the interruption as a failure.
summary_printed=0
on_exit() {
  if ((!summary_printed)); then
    echo "run-tests: stopped early"
    echo "$passed_total passed, $((failed_total + 1)) failed"
  fi
}
trap on_exit EXIT

log() {
  printf '\n=== %s\n' "$*"
}

setup_build() {
  local dir=$1
  shift
  if [[ -f $dir/build.ninja ]]; then
    meson setup --reconfigure "$dir" "$@"
  else
    meson setup "$dir" "$@"
  fi
}

# run_config NAME DIR BUILD-ENV-ARRAY TEST-ENV-ARRAY MESON-SETUP-OPTIONS...
run_config() {
  local name=$1 dir=$2
  local -n build_env=$3
  local -n config_env=$4
  shift 4
  local start=$SECONDS

  log "$name: configure and build in $dir"
  if ! setup_build "$dir" "$@" || ! env "${build_env[@]}" meson compile -C "$dir"; then
    echo "$name: BUILD FAILED"
    failed_total=$((failed_total + 1))
    summaries+=("$name: build failed")
    return 0
  fi

  log "$name: meson test (private D-Bus session, gnome-keyring Secret Service)"
  local testlog="$dir/meson-logs/run-tests-output.txt"
  # A private temporary directory: tests that search "the temp dir" for plaintext see only
  # their own files, and whatever a killed test leaves behind goes away with it.
  local test_tmp
  test_tmp=$(mktemp -d "${TMPDIR:-/tmp}/hbsync-tests-XXXXXX")
  local rc=0
  build-aux/with-keyring.sh env "${config_env[@]}" TMPDIR="$test_tmp" \
    meson test -C "$dir" --no-rebuild --print-errorlogs "${test_names[@]}" </dev/null 2>&1 |
    tee "$testlog" || rc=$?
  rm -rf "$test_tmp"

  # meson test ends with "Ok: N", "Expected Fail: N", "Fail: N", "Unexpected Pass: N",
  # "Skipped: N", "Timeout: N".
  local seen ok xfail fail xpass skip timeout
  read -r seen ok xfail fail xpass skip timeout < <(awk '
    /^Ok:/ { ok = $2; seen = 1 }
    /^Expected Fail:/ { xfail = $3 }
    /^Fail:/ { fail = $2 }
    /^Unexpected Pass:/ { xpass = $3 }
    /^Skipped:/ { skip = $2 }
    /^Timeout:/ { timeout = $2 }
    END { printf "%d %d %d %d %d %d %d\n", seen, ok, xfail, fail, xpass, skip, timeout }
  ' "$testlog")
  local passed=$((ok + xfail))
  local failed=$((fail + xpass + timeout))
  if ((seen != 1 || (rc != 0 && failed == 0))); then
    # meson test failed without counting a failed test (no summary, a setup error).
    echo "$name: meson test exited with status $rc"
    failed=$((failed + 1))
  fi
  passed_total=$((passed_total + passed))
  failed_total=$((failed_total + failed))
  local summary="$name: Ok: $ok  Fail: $fail  Unexpected Pass: $xpass  Skipped: $skip"
  summaries+=("$summary  Timeout: $timeout  ($((SECONDS - start)) s)")
}

log "dependencies"
build-aux/setup-deps.sh </dev/null
build-aux/setup-npm.sh </dev/null

# Names of fuzzers go to the fuzz run, other names to the first two; a run is left out when
# names were given and none of them is its own.
all_names=("${test_names[@]}")
suite_names=()
fuzz_names=()
for name in "${all_names[@]}"; do
  if [[ $name == fuzz-* ]]; then
    fuzz_names+=("$name")
  else
    suite_names+=("$name")
  fi
done
run_suite=$((${#all_names[@]} == 0 || ${#suite_names[@]} > 0))
run_fuzz=$((${#all_names[@]} == 0 || ${#fuzz_names[@]} > 0))
test_names=("${suite_names[@]}")

# shellcheck disable=SC2034 # used through namerefs in run_config
no_env=()
if ((run_suite)); then
  run_config normal "$build_root/ci" no_env no_env -Dwerror=true -Dintrospection=true
fi

lsan_supp="$srcdir/build-aux/lsan.supp"
# shellcheck disable=SC2034
asan_build_env=(
  # The build runs g-ir-scanner's dumper, a program linked with the sanitized library. Meson
  # links it with -lasan only (no -fsanitize, so no ASan pre-initialisation) and that dumper
  # hangs in glibc's gettext lock; g-ir-scanner adds $LDFLAGS to its link. With this the
  # sanitizer build keeps introspection, and test-gi runs there too.
  "LDFLAGS=-fsanitize=address,undefined"
)
# shellcheck disable=SC2034
asan_env=(
  # Leaks are errors; the suppressions cover only system libraries (see lsan.supp), and need
  # whole allocation stacks through libraries built without frame pointers.
  "ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0:halt_on_error=1:print_summary=1"
  "LSAN_OPTIONS=suppressions=$lsan_supp:print_suppressions=0"
  "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:print_summary=1"
  # GLib 2.74 still has its slice allocator; route it to malloc so ASan sees every block.
  "G_SLICE=always-malloc"
)
if ((run_suite)); then
  run_config asan "$build_root/asan" asan_build_env asan_env \
    -Dwerror=true -Dintrospection=true -Db_sanitize=address,undefined -Db_lundef=false
fi

# shellcheck disable=SC2034
fuzz_env=(
  # libFuzzer checks each input for leaks itself; a leak, like a crash, fails that fuzzer.
  "ASAN_OPTIONS=detect_leaks=1:halt_on_error=1"
  "LSAN_OPTIONS=suppressions=$lsan_supp:print_suppressions=0"
)
if ((run_fuzz)); then
  test_names=("${fuzz_names[@]}")
  # No -Dwerror: the build is clang's, whose warnings differ from gcc's; gcc's build above is
  # the one held to zero warnings.
  CC=clang run_config fuzz "$build_root/fuzz" no_env fuzz_env \
    -Dfuzzing=true -Dintrospection=false -Db_sanitize=address,undefined -Db_lundef=false
fi

log "summary"
printf '%s\n' "${summaries[@]}"
summary_printed=1
echo "$passed_total passed, $failed_total failed"
((failed_total == 0))
