#!/bin/sh
# mmdebstrap --customize-hook of vm-test.sh: $1 = the new root. Part of the image cache key.
set -eu
R=$1
echo caplance-vm > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 caplance-vm\n::1 localhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$R/etc/fstab"
chroot "$R" passwd -d root >/dev/null # passwordless root on the serial console (vm-test.sh shell)
: > "$R/etc/machine-id"               # a new machine id at the first boot of each run

# A small initrd (MODULES=list): about 3 s less boot under TCG.
printf 'virtio_pci\nvirtio_blk\next4\n' > "$R/etc/initramfs-tools/modules"
echo MODULES=list > "$R/etc/initramfs-tools/conf.d/zz-vmtest.conf"
# Kernel modules a VM without hardware never loads. net/ (fou, ipip, ip6_tunnel, bridge, nf_tables, 9p) and
# drivers/net/{veth,dummy}.ko stay.
K=$(ls "$R/lib/modules")
for d in sound drivers/gpu drivers/media drivers/infiniband drivers/usb drivers/iio drivers/staging \
	drivers/hwmon drivers/net/wireless drivers/net/ethernet drivers/net/usb drivers/bluetooth \
	drivers/isdn net/bluetooth net/wireless net/mac80211; do
	rm -rf "$R/lib/modules/$K/kernel/$d"
done
for m in fou ipip ip6_tunnel veth bridge nf_tables 9pnet_virtio 9p; do
	find "$R/lib/modules/$K" -name "$m.ko*" | grep -q . || { echo "customize: kernel module $m missing" >&2; exit 1; }
done
chroot "$R" depmod -a "$K"
chroot "$R" update-initramfs -u -k "$K" >/dev/null

# Units that only slow the boot down here.
chroot "$R" systemctl mask e2scrub_reap.service getty@tty1.service apt-daily.timer \
	apt-daily-upgrade.timer >/dev/null 2>&1

# The test runner (files copied in by vm-test.sh).
chmod 755 "$R/usr/local/sbin/runner.sh"
mv "$R/usr/local/sbin/runner.sh" "$R/usr/local/sbin/caplance-vmtest-runner"
chroot "$R" systemctl enable caplance-vmtest.service >/dev/null 2>&1
