#!/usr/bin/env bash
# Builds (once per machine) the Linux 6.12 test kernel for the iommufd real-kernel test.
#
#   build_kernel.sh CACHE_DIR      prints the path of the cached bzImage on stdout
#
# Source: Debian's linux-source-6.12 (/usr/src/linux-source-6.12.tar.xz). Configuration:
# `make ARCH=x86_64 tinyconfig` + kernel.config (next to this script), then olddefconfig; every
# option of kernel.config is checked to have survived. The result is cached in
# CACHE_DIR/kernel-<hash>/bzImage where <hash> covers kernel.config, this script and the source
# package version, so a config change rebuilds and anything else reuses. The source tree is deleted
# after a successful build (the cache keeps bzImage and .config only) unless IOPF_KEEP_KERNEL_TREE=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${1:?usage: build_kernel.sh CACHE_DIR}"
tarball=/usr/src/linux-source-6.12.tar.xz
jobs="${IOPF_KERNEL_JOBS:-$(nproc)}"

log() { printf '[kernel-build] %s\n' "$*" >&2; }
die() { printf '[kernel-build] error: %s\n' "$*" >&2; exit 1; }

[[ -f "$tarball" ]] || die "$tarball missing: install linux-source-6.12 (scripts/deps.txt)"
version="$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)"
hash="$( { cat "$here/kernel.config" "$here/build_kernel.sh"; echo "$version"; } | sha256sum | cut -c1-16)"
out="$cache_root/kernel-$hash"
if [[ -f "$out/bzImage" ]]; then
  log "cached: $out/bzImage (linux-source-6.12 $version)"
  echo "$out/bzImage"
  exit 0
fi

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [[ -f "$out/bzImage" ]]; then echo "$out/bzImage"; exit 0; fi

start=$(date +%s)
src="$out/src"
if [[ ! -f "$src/Makefile" ]]; then
  log "extracting $tarball (linux-source-6.12 $version)"
  rm -rf "$src" && mkdir -p "$src"
  tar -xJf "$tarball" -C "$src" --strip-components=1
fi
cd "$src"
log "configuring: tinyconfig + kernel.config"
make -s ARCH=x86_64 tinyconfig >/dev/null
grep -E '^CONFIG_[A-Z0-9_]+=' "$here/kernel.config" >> .config
make -s ARCH=x86_64 olddefconfig >/dev/null
missing=()
while read -r line; do
  grep -qx "$line" .config || missing+=("$line")
done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$here/kernel.config")
((${#missing[@]} == 0)) || die "options lost by olddefconfig (unmet dependencies): ${missing[*]}"
log "building bzImage with -j$jobs"
make -s ARCH=x86_64 -j"$jobs" bzImage >"$out/build.log" 2>&1 || { tail -40 "$out/build.log" >&2; die "kernel build failed (log: $out/build.log)"; }
cp arch/x86/boot/bzImage "$out/bzImage.tmp"
cp .config "$out/config"
mv "$out/bzImage.tmp" "$out/bzImage"
cd "$out"
[[ "${IOPF_KERNEL_KEEP_TREE:-${IOPF_KEEP_KERNEL_TREE:-0}}" == 1 ]] || rm -rf "$src"
log "built $out/bzImage in $(( $(date +%s) - start ))s"
echo "$out/bzImage"
