#!/usr/bin/env bash
# Builds and runs every test of iopf-router on a Debian 12 machine (installs what it needs).
#
#   scripts/test.sh            plain build (build/) + ASan/UBSan build (build/asan) + TSan (build/tsan)
#                              + a short fuzz run of every target + a 2-minute soak
#   scripts/test.sh --plain    only the plain build
#   scripts/test.sh --asan     only ASan+UBSan
#   scripts/test.sh --tsan     only TSan (the concurrent tests: ctest label "core")
#   scripts/test.sh --fuzz     libFuzzer, 20 s per target (scripts/fuzz.sh --all; IOPF_FUZZ_SECONDS)
#   scripts/test.sh --soak     scripts/soak.sh 2 on the plain build (IOPF_SOAK_MINUTES)
#   scripts/test.sh ... -- ARGS   extra arguments for ctest (e.g. -R router)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

modes=()
ctest_args=()
while (($#)); do
  case "$1" in
    --plain) modes+=(plain) ;;
    --asan) modes+=(asan) ;;
    --tsan) modes+=(tsan) ;;
    --fuzz) modes+=(fuzz) ;;
    --soak) modes+=(soak) ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
((${#modes[@]})) || modes=(plain asan tsan fuzz soak)

install_deps
cd "$IOPF_ROOT"
failed=()
for mode in "${modes[@]}"; do
  start=$(date +%s)
  # Fuzzing and the soak are scripts of their own, not ctest runs.
  if [[ "$mode" == fuzz || "$mode" == soak ]]; then
    log "running the $mode run"
    if [[ "$mode" == fuzz ]]; then
      cmd=("$IOPF_ROOT/scripts/fuzz.sh" --all "${IOPF_FUZZ_SECONDS:-20}")
    else
      configure_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
      cmd=(env IOPF_SOAK_BUILD="$IOPF_ROOT/build" "$IOPF_ROOT/scripts/soak.sh" "${IOPF_SOAK_MINUTES:-2}")
    fi
    if "${cmd[@]}"; then
      log "$mode: passed in $(( $(date +%s) - start ))s"
    else
      log "$mode: FAILED"
      failed+=("$mode")
    fi
    continue
  fi
  case "$mode" in
    plain)
      dir=build
      configure_build "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
      labels=() ;;
    asan)
      dir=build/asan
      configure_build "$dir" -DCMAKE_BUILD_TYPE=Debug -DIOPF_SANITIZE=asan -DIOPF_BUILD_BENCH=OFF
      export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      export IOPF_LOAD_SECONDS=3  # the inspector's load test: its figures come from the plain build
      labels=() ;;
    tsan)
      dir=build/tsan
      # Not the inspector: Qt is not TSan-instrumented and none of its tests is labelled "core".
      configure_build "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIOPF_SANITIZE=tsan -DIOPF_BUILD_BENCH=OFF \
        -DIOPF_MODULES="backends;plugins;api;tools"
      export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
      labels=(-L core) ;;
  esac
  log "running the $mode tests"
  # The model test's operation count: 1,000,000 in the plain build, fewer under the sanitizers.
  case "$mode" in
    plain) model_ops=1000000 ;;
    asan) model_ops=200000 ;;
    tsan) model_ops=100000 ;;
  esac
  if IOPF_MODEL_OPS=$model_ops ctest --test-dir "$dir" --output-on-failure -j "$(nproc)" \
      "${labels[@]}" "${ctest_args[@]}"; then
    log "$mode: passed in $(( $(date +%s) - start ))s"
  else
    log "$mode: FAILED"
    failed+=("$mode")
  fi
  unset ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS IOPF_LOAD_SECONDS
done
if ((${#failed[@]})); then
  die "failed: ${failed[*]}"
fi
log "all passed: ${modes[*]}"
