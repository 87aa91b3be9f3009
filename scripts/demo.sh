#!/usr/bin/env bash
# The demo: builds iopf-router, starts the daemon with its embedded demo (iopfd --demo: the
# simulated PCIe devices of scenarios/demo.json, resolver and slow-guest chains), shows
# `iopfctl status` and a short `iopfctl watch`, then a live summary once per second (groups/s,
# outstanding, verdicts by origin, p99) until Ctrl-C, or for --seconds S. The daemon is stopped at
# the end (SIGTERM: every open group is answered) unless --keep.
#
#   scripts/demo.sh                  until Ctrl-C
#   scripts/demo.sh --seconds 10     stop after 10 seconds
#   scripts/demo.sh --keep           leave iopfd running (stop it with: kill $(cat build/run/iopfd.pid))
set -euo pipefail
source "$(dirname "$0")/lib.sh"

seconds=0
keep=0
while (($#)); do
  case "$1" in
    --seconds) [[ $# -ge 2 ]] || die "--seconds needs a value"; seconds="$2"; shift ;;
    --seconds=*) seconds="${1#*=}" ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[[ "$seconds" =~ ^[0-9]+$ ]] || die "--seconds wants a whole number of seconds, not '$seconds'"

build_dir="${IOPF_BUILD_DIR:-$IOPF_ROOT/build}"
install_deps
log "building into ${build_dir#"$IOPF_ROOT"/}"
configure_build "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo

run_dir="$build_dir/run"
mkdir -p "$run_dir"
addr="unix:$run_dir/iopfd.sock"
export IOPF_ADDR="$addr"
ctl="$build_dir/bin/iopfctl"

if [[ -f "$run_dir/iopfd.pid" ]] && kill -0 "$(cat "$run_dir/iopfd.pid")" 2>/dev/null; then
  log "stopping the iopfd left running by an earlier demo"
  kill -TERM "$(cat "$run_dir/iopfd.pid")" || true
  sleep 1
fi
"$build_dir/bin/iopfd" --demo --listen "$addr" 2>"$run_dir/iopfd.log" &
pid=$!
echo "$pid" > "$run_dir/iopfd.pid"
stop_daemon() {
  if ((keep == 0)) && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
    log "iopfd stopped: $(tail -n 1 "$run_dir/iopfd.log")"
  fi
}
trap stop_daemon EXIT
trap 'exit 0' INT TERM

for _ in $(seq 1 100); do
  "$ctl" health >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || die "iopfd did not start: $(cat "$run_dir/iopfd.log")"
  sleep 0.1
done
"$ctl" health >/dev/null || die "iopfd is not serving: $(cat "$run_dir/iopfd.log")"

log "iopfd --demo is serving on $addr (pid $pid)"
echo
"$ctl" status
echo
"$ctl" domains
echo
log "a short watch (responses only, 8 events):"
"$ctl" watch --filter type=responded --count 8 --seconds 5 || true
echo
cat <<MSG
Try, while it runs (export IOPF_ADDR=$addr):
  $ctl outstanding          the open page request groups, ageing
  $ctl group ID             one group: requests, transitions, handler trace
  $ctl watch                the live event stream (Ctrl-C to stop)
  $ctl respond ID success   answer a group by hand
Inspector (once built): $build_dir/bin/iopf-inspector --connect $addr
Stop the daemon: kill $pid (SIGTERM drains: every open group is answered)
MSG
echo
if ((seconds > 0)); then log "live summary once per second for ${seconds}s"; else log "live summary once per second (Ctrl-C stops)"; fi
prev="$("$ctl" --json status | /usr/bin/python3 -c 'import json,sys; print(int(json.load(sys.stdin)["stats"].get("responses", 0)))')"
start=$(date +%s)
while :; do
  json="$("$ctl" --json status)" || die "iopfd stopped answering"
  line="$(printf '%s' "$json" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)["stats"]
prev = int(sys.argv[1])
resp = int(d.get("responses", 0))
origins = " ".join("%s=%s" % kv for kv in sorted(d.get("responses_by_origin", {}).items()))
p99 = int(d.get("latency", {}).get("p99_ns", 0)) / 1000
print("%d %8d groups/s  outstanding %5s  p99 %9.1f us  %s" % (resp, resp - prev, d.get("open_groups", 0), p99, origins))
' "$prev")"
  prev="${line%% *}"
  printf '%s  %s\n' "$(date +%T)" "${line#* }"
  if ((seconds > 0 && $(date +%s) - start >= seconds)); then break; fi
  sleep 1
done
