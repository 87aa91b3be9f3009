#!/usr/bin/env bash
# Fuzz campaigns with libFuzzer (clang, ASan+UBSan) over the targets of tests/fuzz/.
#
#   scripts/fuzz.sh TARGET SECONDS     one campaign, e.g. scripts/fuzz.sh iopf_socket 600
#   scripts/fuzz.sh --all SECONDS      each target in turn for SECONDS
#   scripts/fuzz.sh --list             the targets
#
# The build is build/fuzz (IOPF_FUZZ_BUILD overrides), configured with clang, -DIOPF_FUZZ=ON and
# -fsanitize=fuzzer-no-link everywhere so the libraries report coverage. Each campaign starts from
# tests/fuzz/corpus/TARGET and keeps what it learns in build/fuzz/corpus/TARGET (the seed corpus in
# the tree is not touched). A crash leaves crash-* in build/fuzz/artifacts/TARGET/ and fails the run:
# copy the input into tests/fuzz/corpus/TARGET/ once it is fixed, so it stays a regression test.
# Prints one summary line per target: execs, execs/s, coverage (cov/ft), corpus size, crashes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() { sed -n '2,13p' "$0"; exit "${1:-0}"; }
(($#)) || usage 2
build="${IOPF_FUZZ_BUILD:-$IOPF_ROOT/build/fuzz}"
targets() { (cd "$IOPF_ROOT/tests/fuzz" && ls ./*_fuzz.cc | sed 's|^\./||; s|_fuzz\.cc$||'); }

case "$1" in
  -h|--help) usage 0 ;;
  --list) targets; exit 0 ;;
  --all) [[ $# -eq 2 ]] || usage 2; seconds="$2"; mapfile -t wanted < <(targets) ;;
  *) [[ $# -eq 2 ]] || usage 2; seconds="$2"; wanted=("$1") ;;
esac
[[ "$seconds" =~ ^[0-9]+$ ]] || die "SECONDS must be a number, not '$seconds'"

install_deps
flags="-fsanitize=fuzzer-no-link"
CC=clang CXX=clang++ cmake -S "$IOPF_ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DIOPF_SANITIZE=asan -DIOPF_FUZZ=ON -DIOPF_BUILD_BENCH=OFF -DIOPF_MODULES="backends;api;tools" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >/dev/null || die "cmake configure of $build failed"
bins=()
for t in "${wanted[@]}"; do bins+=("fuzz_$t"); done
# A target whose libraries are not built is not defined: build those that are.
available=()
known="$(ninja -C "$build" -t targets all 2>/dev/null || true)"  # not piped into grep -q: pipefail
for b in "${bins[@]}"; do
  if grep -q "^$b:" <<<"$known"; then available+=("$b"); else log "skipped: $b (not built in this configuration)"; fi
done
((${#available[@]})) || die "no fuzz target to build"
cmake --build "$build" -j "$(nproc)" --target "${available[@]}" || die "build of the fuzz targets failed"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=()
summary=()
for b in "${available[@]}"; do
  t="${b#fuzz_}"
  corpus="$build/corpus/$t"
  artifacts="$build/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  rm -f "$artifacts"/crash-* "$artifacts"/leak-* "$artifacts"/timeout-* "$artifacts"/oom-*
  logfile="$build/fuzz-$t.log"
  log "fuzzing $t for ${seconds}s (log: $logfile)"
  rc=0
  # -rss_limit_mb: a parser that allocates what a length field says is a finding, not an OOM of the box.
  # IOPF_FUZZ_MAX_RUNS_<target>: an execution cap for that target as well (see scripts/test.sh).
  cap_var="IOPF_FUZZ_MAX_RUNS_$t"
  runs="${!cap_var:--1}"
  (cd "$artifacts" && "$build/bin/$b" -max_total_time="$seconds" -runs="$runs" -timeout=25 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" \
      "$corpus" "$IOPF_ROOT/tests/fuzz/corpus/$t") >"$logfile" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logfile" | grep -o '[0-9]*$' | tail -1 || true)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$logfile" | grep -o '[0-9]*$' | tail -1 || true)
  last=$(grep -E '^#[0-9]+' "$logfile" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo '?')
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo '?')
  size=$(ls "$corpus" | wc -l)
  crashes=$(ls "$artifacts" | grep -cE '^(crash|leak|timeout|oom)-' || true)
  line="$t: ${execs} execs, ${rate}/s, cov ${cov}, ft ${ft}, corpus ${size}, crashes ${crashes}"
  summary+=("$line")
  if ((rc != 0 || crashes > 0)); then
    failed+=("$t")
    log "FAILED: $line"
    grep -E 'ERROR|SUMMARY|==[0-9]+==|Test unit written' "$logfile" | head -20 >&2 || true
  else
    log "$line"
  fi
done
printf '%s\n' "${summary[@]}"
((${#failed[@]} == 0)) || die "fuzzing found problems in: ${failed[*]} (inputs in $build/artifacts/)"
