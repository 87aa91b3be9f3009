# Shared helpers of the project's scripts. Source it; do not run it.
# shellcheck shell=bash

IOPF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1m[iopf]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[iopf] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Installs every package of scripts/deps.txt that is missing. Idempotent; runs apt-get update only
# when something has to be installed.
install_deps() {
  local missing=() pkg
  while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done < "$IOPF_ROOT/scripts/deps.txt"
  if ((${#missing[@]} == 0)); then return 0; fi
  log "installing: ${missing[*]}"
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install failed: ${missing[*]}"
}

# configure_build DIR [cmake args…]: configures (once) and builds DIR with Ninja.
configure_build() {
  local dir="$1"; shift
  cmake -S "$IOPF_ROOT" -B "$dir" -G Ninja "$@" >/dev/null || die "cmake configure of $dir failed"
  cmake --build "$dir" -j "$(nproc)" || die "build of $dir failed"
}
