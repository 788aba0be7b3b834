#!/bin/sh
# caplance-vmtest-runner: the guest side of vm-test.sh. Installed in the image by customize.sh.
S=/mnt/test
mkdir -p $S
if ! mountpoint -q $S; then
	modprobe 9pnet_virtio 2>/dev/null || true
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 testshare $S || exit 1
fi
[ -e $S/interactive ] && exit 0
if [ ! -x $S/run.sh ]; then
	echo "no executable $S/run.sh" > $S/out.log
	echo 127 > $S/rc
	exit 0
fi
systemctl is-system-running --wait > $S/boot-state 2>&1 || true
# boot time: since the kernel started (VM), or since PID 1 started (container)
if systemd-detect-virt --container --quiet; then
	ps -o etimes= -p 1 | tr -d ' ' > $S/boot-seconds
else
	cut -d' ' -f1 /proc/uptime | cut -d. -f1 > $S/boot-seconds
fi
systemd-analyze time > $S/boot-time 2>&1 || true
t0=$(cut -d' ' -f1 /proc/uptime | cut -d. -f1)
timeout --kill-after=10 "$(cat $S/timeout 2>/dev/null || echo 840)" $S/run.sh > $S/out.log 2>&1 < /dev/null
rc=$?
[ $rc = 124 ] && echo "runner: the test timed out" >> $S/out.log
echo $(( $(cut -d' ' -f1 /proc/uptime | cut -d. -f1) - t0 )) > $S/test-seconds
journalctl -b --no-pager -o short-monotonic > $S/journal.txt 2>&1
echo $rc > $S/rc.tmp && mv $S/rc.tmp $S/rc
sync
