#!/usr/bin/env bash
# Soak test: iopfd with the simulated backend for MINUTES at half its measured maximum rate, under
# random injections (lost LAST + overflow, PASID stop/resume, bursts, hot-unplugs, guest resets)
# with a watcher that never disconnects and one that disconnects and resumes. At the end the checker
# (tools/iopf-soak) verifies: every group answered exactly once, RSS flat (slope in KB/min), no
# growth of open groups, event seqs contiguous for the watcher that never fell behind.
#
#   scripts/soak.sh MINUTES [iopf-soak options, e.g. --rate 20000 --seed 3]
#
# Builds iopfd and iopf-soak in build/ (IOPF_SOAK_BUILD overrides). The work directory (configs,
# the daemon's log) is printed; the last line is a JSON summary. Exit 0 when every check passes.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

(($# >= 1)) || { sed -n '2,11p' "$0"; exit 2; }
minutes="$1"; shift
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "MINUTES must be a number, not '$minutes'"
build="${IOPF_SOAK_BUILD:-$IOPF_ROOT/build}"
if [[ ! -f "$build/build.ninja" ]]; then
  install_deps
  cmake -S "$IOPF_ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || die "cmake configure of $build failed"
fi
cmake --build "$build" -j "$(nproc)" --target iopfd iopf-soak >/dev/null || die "build of iopfd / iopf-soak failed"
workdir="$(mktemp -d /tmp/iopf-soak-XXXXXX)"
log "soaking for $minutes min (work directory $workdir)"
"$build/bin/iopf-soak" --iopfd "$build/bin/iopfd" --minutes "$minutes" --workdir "$workdir" "$@"
