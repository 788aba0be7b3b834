#!/bin/sh
# vm-test.sh - prove the Caplance .deb on a real Debian 12: systemd as PID 1, the system bus, the
# Debian kernel (fou, ipip), under qemu. Host side of `make vm-test`; see packaging/vm/README.md.
#
#   vm-test.sh deps            install the host tools (Debian packages)
#   vm-test.sh image           build the guest image, or reuse the cached one; prints its directory
#   vm-test.sh run DEB         boot the image with DEB and guest-test.sh on a 9p share; the guest
#                              runs the test and powers off; exit 0 only if every step passed
#   vm-test.sh nspawn DEB      the same test in systemd-nspawn: ~1 s boot, the host's kernel (the
#                              backends decapsulate in user space: no fou needed)
#   vm-test.sh shell [DEB]     boot with the share, root on the serial console, no test (debugging)
#
# Environment: VM_CACHE (image cache, default /var/cache/caplance-vm), VM_REBUILD=1 (ignore the
# cache), VM_TIMEOUT (seconds for the whole boot + test, default 900), VM_OUT (results directory,
# default a new one under /tmp, kept), ACCEL (default tcg; "kvm -cpu host" where KVM works),
# MEM (default 2G), SMP (default 2).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm
# The guest has no network: everything the .deb depends on, and every tool guest-test.sh uses,
# must be in this list.
PKGS="systemd systemd-sysv dbus udev kmod linux-image-amd64 iproute2 nftables ethtool procps curl busybox"
CACHE=${VM_CACHE:-/var/cache/caplance-vm}
TIMEOUT=${VM_TIMEOUT:-900}

say() { printf 'vm-test: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
now() { date +%s; }

# The machine's own apt sources: every deb822 and one-line sources file it has.
sources() {
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
		[ -s "$f" ] && echo "$f"
	done
	return 0
}

# The cache key: everything the image is made of. The package list, the files that shape the
# image, the apt sources, and the candidate versions the host's apt lists know for the listed
# packages (a point release of the kernel or systemd makes a new image once the host has seen it).
image_key() {
	{
		echo "$SUITE $PKGS"
		cat "$HERE/customize.sh" "$HERE/runner.sh" "$HERE/caplance-vmtest.service"
		sed -n '/^build_image()/,/^}/p' "$0"
		for f in $(sources); do cat "$f"; done
		# shellcheck disable=SC2086
		LC_ALL=C apt-cache policy $PKGS 2>/dev/null | grep -E '^[a-z0-9]|Candidate:' || true
	} | sha256sum | cut -c1-16
}

build_image() { # $1 = directory to build in (new)
	out=$1
	mkdir -p "$out"
	mirrors=$(sources | tr '\n' ' ')
	[ -n "$mirrors" ] || die "no apt sources on this machine"
	# shellcheck disable=SC2086
	mmdebstrap --quiet --variant=minbase --mode=root --include="$(echo "$PKGS" | tr ' ' ',')" \
		--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-include=/usr/share/man/man*/caplance*' \
		--dpkgopt='path-include=/usr/share/doc/caplance*' \
		--customize-hook="copy-in '$HERE/runner.sh' /usr/local/sbin" \
		--customize-hook="copy-in '$HERE/caplance-vmtest.service' /etc/systemd/system" \
		--customize-hook="sh '$HERE/customize.sh' \"\$1\"" \
		"$SUITE" "$out/rootfs" $mirrors
	cp "$out"/rootfs/boot/vmlinuz-* "$out/vmlinuz"
	cp "$out"/rootfs/boot/initrd.img-* "$out/initrd.img"
	chmod 644 "$out/vmlinuz" "$out/initrd.img"
	# No loop mount: mkfs.ext4 -d copies the tree into the (sparse) image.
	mkfs.ext4 -q -F -L root -d "$out/rootfs" "$out/rootfs.img" 3G
	chroot "$out/rootfs" dpkg-query -W -f '${Package} ${Version}\n' > "$out/packages.txt"
}

# image: the cached image directory for the current key, built first if needed.
image() {
	key=$(image_key)
	dir=$CACHE/$key
	mkdir -p "$CACHE"
	exec 9> "$CACHE/.lock"
	flock 9 # one build at a time; a second run waits and then reuses it
	if [ "${VM_REBUILD:-0}" = 1 ] || [ ! -f "$dir/rootfs.img" ]; then
		t0=$(now)
		say "building the Debian $SUITE image $key (cold: about 2 minutes)"
		rm -rf "$dir" "$dir.new"
		build_image "$dir.new" >&2
		mv "$dir.new" "$dir"
		echo "$(( $(now) - t0 ))" > "$dir/build-seconds"
		say "image built in $(cat "$dir/build-seconds") s"
		# older images: only the current key is kept
		for old in "$CACHE"/*; do
			[ "$old" = "$dir" ] || rm -rf "$old"
		done
	else
		say "cached image $key ($dir)"
	fi
	exec 9>&-
	echo "$dir"
}

# boot IMAGE SHARE TIMEOUT [interactive]: qemu with a throw-away overlay over rootfs.img.
boot() {
	img=$1 share=$2 t=$3
	ov=$(mktemp -d)
	qemu-img create -q -f qcow2 -b "$img/rootfs.img" -F raw "$ov/overlay.qcow2"
	if [ "${4:-}" = interactive ]; then
		console="-serial mon:stdio"
	else
		console="-serial file:$share/serial.log"
	fi
	set -- timeout --kill-after=10 "$t" qemu-system-x86_64 -accel ${ACCEL:-tcg} -m "${MEM:-2G}" \
		-smp "${SMP:-2}" -nographic -nodefaults -no-reboot -nic none $console \
		-kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
		-append 'console=ttyS0 root=/dev/vda rw panic=1 quiet' \
		-drive "file=$ov/overlay.qcow2,if=virtio,format=qcow2,discard=unmap" \
		-virtfs "local,path=$share,mount_tag=testshare,security_model=none,id=testshare"
	q=0
	if [ "${4:-}" = interactive ]; then
		"$@" || q=$? # in the foreground: the console is this terminal
	else
		run_bg "$@" || q=$?
	fi
	rm -rf "$ov"
	return $q
}

# run_bg CMD...: CMD in the background, killed with this script (Ctrl-C, a CI timeout).
run_bg() {
	"$@" &
	child=$!
	trap 'kill $child 2>/dev/null; wait $child; rm -rf ${ov:-/nonexistent}; trap - EXIT; exit 130' INT TERM HUP
	trap 'kill $child 2>/dev/null; wait $child; rm -rf ${ov:-/nonexistent}' EXIT
	r=0
	wait $child || r=$?
	trap - INT TERM HUP EXIT
	return $r
}

# nspawn IMAGE SHARE TIMEOUT: the same tree booted by systemd-nspawn, / an overlay (nothing is
# copied, nothing written back). About 1 s to boot, but the host's kernel: no fou here, so the
# test's receivers decapsulate in user space.
nspawn() {
	img=$1 share=$2 t=$3
	# The host's PID 1 need not be systemd: --register=no --keep-unit. --private-network gives the
	# container CAP_NET_ADMIN over its own network namespace.
	run_bg timeout --kill-after=10 "$t" systemd-nspawn --quiet --boot --directory="$img/rootfs" \
		--volatile=overlay --register=no --keep-unit --private-network --console=read-only \
		--bind="$share:/mnt/test" > "$share/serial.log" 2>&1
}

# share DEB...: a results directory holding what the guest needs.
make_share() {
	share=${VM_OUT:-$(mktemp -d /tmp/caplance-vm-test.XXXXXX)}
	mkdir -p "$share"
	share=$(cd "$share" && pwd)
	# emptied only if it is empty or one of ours
	if [ -n "$(ls -A "$share")" ] && [ ! -e "$share/.caplance-vm-test" ]; then
		die "VM_OUT=$share is not empty and not a vm-test results directory"
	fi
	rm -rf "${share:?}"/*
	: > "$share/.caplance-vm-test"
	mkdir -p "$share/deb"
	for deb in "$@"; do
		[ -f "$deb" ] || die "no such package: $deb"
		cp "$deb" "$share/deb/"
	done
	cp "$HERE/guest-test.sh" "$share/run.sh"
	chmod 755 "$share/run.sh"
	# the guest stops the test in time to send its log back
	echo $((TIMEOUT - 60)) > "$share/timeout"
	echo "$share"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
deps)
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
		qemu-system-x86 qemu-utils mmdebstrap e2fsprogs systemd-container
	;;
image)
	image
	;;
run | nspawn)
	[ $# -gt 0 ] || die "usage: vm-test.sh $cmd CAPLANCE.deb"
	[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap --mode=root)"
	for tool in qemu-system-x86_64 qemu-img mmdebstrap mkfs.ext4 $( [ "$cmd" = nspawn ] && echo systemd-nspawn); do
		command -v "$tool" >/dev/null || die "$tool missing: run '$0 deps' (or .ci/setup --vm)"
	done
	t0=$(now)
	img=$(image)
	t1=$(now)
	share=$(make_share "$@")
	q=0
	if [ "$cmd" = run ]; then
		say "booting under qemu (${ACCEL:-tcg}, timeout ${TIMEOUT}s); results in $share"
		boot "$img" "$share" "$TIMEOUT" || q=$?
	else
		say "booting in systemd-nspawn (host kernel: user-space decapsulation, timeout ${TIMEOUT}s); results in $share"
		nspawn "$img" "$share" "$TIMEOUT" || q=$?
	fi
	t2=$(now)
	echo "---- guest log ($share/out.log) ----"
	cat "$share/out.log" 2>/dev/null || echo "(none)"
	echo "---- end of guest log ----"
	if [ ! -f "$share/rc" ]; then
		if [ $q = 124 ] || [ $q = 137 ]; then
			say "FAIL: no result within ${TIMEOUT}s; boot log: $share/serial.log"
		else
			say "FAIL: the guest sent no result (exit $q); boot log: $share/serial.log"
		fi
		tail -n 30 "$share/serial.log" 2>/dev/null || true
		exit 1
	fi
	rc=$(cat "$share/rc")
	how=cached
	[ "$(stat -c %Y "$img/build-seconds")" -ge "$t0" ] && how="cold build"
	say "timings: image $((t1 - t0)) s ($how), boot to test $(cat "$share/boot-seconds" 2>/dev/null || echo '?') s, test $(cat "$share/test-seconds" 2>/dev/null || echo '?') s, $cmd $((t2 - t1)) s in all, total $((t2 - t0)) s"
	[ "$rc" = 0 ] || { say "FAIL: guest test exit code $rc; journal: $share/journal.txt"; exit 1; }
	say "PASS"
	;;
shell)
	[ "$(id -u)" = 0 ] || die "run as root"
	img=$(image)
	share=$(make_share "$@")
	rm -f "$share/run.sh"
	: > "$share/interactive"
	say "root on the serial console (no password), the share on /mnt/test; 'poweroff' or Ctrl-A x ends"
	boot "$img" "$share" 86400 interactive || true
	;;
*)
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
