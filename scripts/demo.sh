#!/usr/bin/env bash
# Builds iopf-router and runs its most complete job so far on a fresh Debian 12 machine.
# Today that is the core benchmark: the router in-process with the in-memory backend, compared with
# a hand-written "naive" router and the raw backend echo. (The simulated PRI backend and the daemon
# replace this as they land.)
#   scripts/demo.sh [--seconds S]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
seconds=3
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) die "unknown option '$1'" ;;
  esac
  shift
done
install_deps
configure_build "$IOPF_ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
log "running the core router benchmark for ${seconds}s per contender (the daemon is not built yet)"
"$IOPF_ROOT/build/bin/iopf-bench" core --seconds "$seconds"
