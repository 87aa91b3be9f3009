#!/usr/bin/env bash
# Screenshots of the inspector with live data: builds iopfd and iopf-inspector if needed, starts
# `iopfd --demo` on a private socket and the inspector under Xvfb, waits until the inspector has
# received live events and shows a group's detail (the inspector polls for it:
# --screenshot DIR --screenshot-after-events N), and saves
#   build/screenshots/main.png     the main window
#   build/screenshots/detail.png   the detail pane
#
#   scripts/screenshot.sh [--events N]     (default 5000 events before the shot)
# IOPF_BUILD_DIR selects the build directory (default build/).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

events=5000
while (($#)); do
  case "$1" in
    --events) [[ $# -ge 2 ]] || die "--events needs a value"; events="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

build_dir="${IOPF_BUILD_DIR:-$IOPF_ROOT/build}"
out_dir="$IOPF_ROOT/build/screenshots"
install_deps
if [[ ! -x "$build_dir/bin/iopf-inspector" || ! -x "$build_dir/bin/iopfd" ]]; then
  log "building iopfd and iopf-inspector into ${build_dir#"$IOPF_ROOT"/}"
  cmake -S "$IOPF_ROOT" -B "$build_dir" -G Ninja >/dev/null || die "cmake configure of $build_dir failed"
fi
ninja -C "$build_dir" iopfd iopfctl iopf-inspector >/dev/null || die "build failed"

run_dir="$(mktemp -d)"
addr="unix:$run_dir/iopfd.sock"
"$build_dir/bin/iopfd" --demo --listen "$addr" 2>"$run_dir/iopfd.log" &
daemon=$!
cleanup() {
  kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  "$build_dir/bin/iopfctl" --connect "$addr" health >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || die "iopfd did not start: $(cat "$run_dir/iopfd.log")"
  sleep 0.1
done
"$build_dir/bin/iopfctl" --connect "$addr" health >/dev/null || die "iopfd is not serving"

mkdir -p "$out_dir"
rm -f "$out_dir/main.png" "$out_dir/detail.png"
log "iopf-inspector under Xvfb, waiting for $events live events"
# A private XDG runtime and config dir: no saved layout of a user changes the picture.
export XDG_RUNTIME_DIR="$run_dir/xdg" XDG_CONFIG_HOME="$run_dir/config"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
xvfb-run -a -s "-screen 0 1700x1050x24" \
  "$build_dir/bin/iopf-inspector" --connect "$addr" --screenshot "$out_dir" --screenshot-after-events "$events" \
  || die "the inspector did not produce screenshots"
[[ -s "$out_dir/main.png" && -s "$out_dir/detail.png" ]] || die "screenshots missing in $out_dir"
log "saved $out_dir/main.png and $out_dir/detail.png"
