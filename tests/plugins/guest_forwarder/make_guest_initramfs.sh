#!/bin/sh
# Builds the Linux guest of the guest forwarder's real-QEMU test: Debian's kernel (package
# linux-image-amd64) and a busybox (busybox-static) initramfs that loads virtio-net behind the
# emulated intel-iommu (the driver's DRIVER_OK starts the vhost-user device), prints
# IOPF-GUEST-READY and then runs commands read from the console, answering "IOPF-GUEST-OK <cmd>":
# up / down (eth0), traffic (a few pings), unmap (rmmod virtio_net), poweroff.
#
#   make_guest_initramfs.sh OUTDIR     -> OUTDIR/vmlinuz, OUTDIR/initrd.cpio.gz (cached: reused if present)
# Exit 0 on success, 77 (skip) if the kernel or busybox is missing, with the reason on stderr.
set -eu
out=${1:?usage: make_guest_initramfs.sh OUTDIR}
mkdir -p "$out"
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.cpio.gz" ] && [ "$out/initrd.cpio.gz" -nt "$0" ]; then
  exit 0
fi
kver=""
for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V); do
  [ -d "/lib/modules/$k/kernel/drivers/virtio" ] && kver=$k
done
if [ -z "$kver" ]; then
  echo "no /boot/vmlinuz-* with modules in /lib/modules: apt-get install linux-image-amd64" >&2
  exit 77
fi
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q "statically linked"; then
  [ -x /bin/busybox ] && busybox=/bin/busybox
fi
if [ -z "$busybox" ]; then
  echo "no busybox: apt-get install busybox-static" >&2
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/lib" "$tmp/proc" "$tmp/sys" "$tmp/dev"
cp "$busybox" "$tmp/bin/busybox"
mods="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
for m in $mods; do
  f=$(find "/lib/modules/$kver/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)
  if [ -z "$f" ]; then
    echo "module $m not found for kernel $kver" >&2
    exit 77
  fi
  case "$f" in
    *.xz) xz -dc "$f" > "$tmp/lib/$m.ko" ;;
    *.zst) zstd -dc "$f" > "$tmp/lib/$m.ko" ;;
    *) cp "$f" "$tmp/lib/$m.ko" ;;
  esac
done
cat > "$tmp/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $mods; do insmod /lib/\$m.ko || echo "IOPF-GUEST-ERROR insmod \$m"; done
echo IOPF-GUEST-READY
while read cmd; do
  case "\$cmd" in
    up) ip link set eth0 up || echo "IOPF-GUEST-ERROR up" ;;
    down) ip link set eth0 down ;;
    traffic) ip addr add 10.9.0.1/24 dev eth0 2>/dev/null; ping -c 3 -W 1 10.9.0.2 >/dev/null 2>&1 ;;
    unmap) rmmod virtio_net ;;
    poweroff) poweroff -f ;;
  esac
  echo "IOPF-GUEST-OK \$cmd"
done
INIT
chmod 755 "$tmp/init"
(cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.cpio.gz.tmp"
cp "/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.cpio.gz.tmp" "$out/initrd.cpio.gz"
echo "guest: kernel $kver, busybox $busybox -> $out" >&2
