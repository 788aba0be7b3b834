#!/bin/bash
# guest-test.sh - the Caplance package on a real Debian 12, inside the VM of vm-test.sh: systemd is
# PID 1, the system bus runs, the kernel is Debian's (fou, ipip). Runs as root from the host's share
# (/mnt/test/run.sh); the package is /mnt/test/deb/caplance_*.deb. Every step prints one
# PASS or FAIL line; the exit code is 0 only if every step passed.
#
# The lab: the VM's root namespace is the balancer host. It has a bridge br0 (198.18.0.2/24, the
# address the tunnel leaves from); the packaged caplanced.service attaches the VIP 198.18.0.100 to
# it. The namespaces client (.10) and be1..be4 (.11-.14) hang off br0 by veth pairs. Each backend
# runs caplanced as a receiver in kernel FOU mode (mode = "kernel", started directly with
# `ip netns exec`, --bus=none) and busybox httpd, which answers with the backend's name.
# Every host also has an IPv6 address in 2001:db8:18::/64 (br0 ::2, client ::10, be<i> ::1<i>), and
# be5 and be6 are backends over IPv6 outers: be5 for the IPv6 VIP 2001:db8:18::100 (IPv6 in IPv6,
# fou -6 ipproto 41), be6 for the IPv4 VIP 198.18.0.101 (IPv4 in IPv6, fou -6 ipproto 4).
set -u
export LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
S=${VMTEST_SHARE:-/mnt/test}
W=/tmp/vmt
VIP=198.18.0.100
LB=198.18.0.2
CLIENT=198.18.0.10
LB6=2001:db8:18::2
CLIENT6=2001:db8:18::10
VIP6=2001:db8:18::100
VIP4B=198.18.0.101
CONF=/etc/caplance/caplanced.toml
mkdir -p $W
# In systemd-nspawn (vm-test.sh nspawn) the kernel is the host's, which may have no fou: there the
# receivers decapsulate in user space.
MODE=kernel
systemd-detect-virt --container --quiet && MODE=userspace

passed=0 failed=0 skipped=0
log() { printf '%s %s\n' "$(date +%T)" "$*"; }
be_addr() { echo "198.18.0.$((10 + $1))"; }
be_addr6() { echo "2001:db8:18::1$1"; }

# step NAME FUNC [ARGS]: runs FUNC with its output indented, then one PASS or FAIL line.
step() {
	local name=$1 rc
	shift
	log "-- $name"
	"$@" > $W/step.out 2>&1
	rc=$?
	sed 's/^/   | /' $W/step.out
	if [ $rc = 0 ]; then
		passed=$((passed + 1))
		echo "PASS: $name"
	else
		failed=$((failed + 1))
		echo "FAIL: $name"
	fi
	return $rc
}
skip() { skipped=$((skipped + 1)); echo "SKIP: $1 ($2)"; }
finish() {
	echo
	echo "guest: $passed passed, $failed failed, $skipped skipped"
	[ $failed = 0 ] && [ $skipped = 0 ]
	exit $?
}
# must CMD...: run CMD, print it and its output; fail (return 1) if it fails
must() {
	echo "\$ $*"
	"$@" || { echo "   -> exit $?"; return 1; }
}
# expect_fail CMD...: CMD must fail
expect_fail() {
	echo "\$ $* (must fail)"
	if "$@"; then echo "   -> it succeeded"; return 1; fi
}
# wait_until SECONDS CMD...: poll CMD every 0.2 s
wait_until() {
	local end=$(($(date +%s%N) / 1000000 + $1 * 1000))
	shift
	until "$@" > /dev/null 2>&1; do
		[ $(($(date +%s%N) / 1000000)) -lt $end ] || return 1
		sleep 0.2
	done
}
prop() { systemctl show -p "$2" --value "$1"; }
mainpid() { prop caplanced MainPID; }
usec() { systemd-analyze timespan "$1" | awk '$1 == "us:" || $1 == "μs:" { print $2 }'; }

# ---- the lab -----------------------------------------------------------------------------------

net_up() {
	if [ $MODE = kernel ]; then must modprobe -a fou ipip ip6_tunnel veth bridge || return 1; fi
	ip link add br0 type bridge &&
		ip link set br0 type bridge stp_state 0 forward_delay 0 &&
		ip addr add $LB/24 dev br0 &&
		ip addr add $LB6/64 dev br0 nodad &&
		ip link set br0 up || return 1
	local ns addr addr6 i
	for i in 0 1 2 3 4 5 6; do
		if [ $i = 0 ]; then ns=client addr=$CLIENT addr6=$CLIENT6; else ns=be$i addr=$(be_addr $i) addr6=$(be_addr6 $i); fi
		ip netns add $ns &&
			ip link add v-$ns type veth peer name eth0 netns $ns &&
			ip link set v-$ns master br0 up &&
			ip -n $ns addr add $addr/24 dev eth0 &&
			ip -n $ns addr add $addr6/64 dev eth0 nodad &&
			ip -n $ns link set lo up &&
			ip -n $ns link set eth0 up || return 1
	done
	# Between namespaces of one machine no NIC fills in checksums, and the balancer forwards the
	# client's packets as they are: the client computes them itself.
	must ip netns exec client ethtool -K eth0 tx off || return 1
	for i in 1 2 3 4; do
		must ip netns exec client busybox ping -q -c1 -W5 "$(be_addr $i)" > /dev/null || return 1
	done
	must ip netns exec client busybox ping -q -c1 -W5 $LB > /dev/null
}

# The root namespace's sysctls caplanced may change, before it first runs.
sysctls() { sysctl -a 2>/dev/null | grep -E '^net\.ipv4\.(conf\.|ip_forward)|^net\.ipv6\.conf\.' | sort; }

# backend_up I VIP BALANCER: caplanced as a receiver of VIP from BALANCER in mode $MODE, and
# busybox httpd, in namespace beI.
backend_up() {
	local i=$1 d=$W/be$1
	mkdir -p $d/www $d/run $d/state
	echo be$i > $d/www/index.html
	cat > $d/caplanced.toml <<-EOF
		[receiver]
		vips = ["$2"]
		balancers = ["$3"]
		mode = "$MODE"
	EOF
	# Type=notify: systemd-run returns once caplanced has sent READY=1; `ip netns exec` execs
	# caplanced in place, so the main PID is caplanced's.
	must systemd-run --quiet --unit=vmt-rx-be$i -p Type=notify \
		ip netns exec be$i "$CAPLANCED" --config $d/caplanced.toml --bus=none \
		--runtime-dir $d/run --state-dir $d/state || return 1
	must systemd-run --quiet --unit=vmt-http-be$i \
		ip netns exec be$i busybox httpd -f -p 80 -h $d/www || return 1
	echo "be$i: $(prop vmt-rx-be$i StatusText)"
	prop vmt-rx-be$i StatusText | grep -q "decapsulation: $MODE" || { echo "be$i: not $MODE"; return 1; }
}

backends_up() {
	local i
	for i in 1 2 3 4; do
		backend_up $i $VIP $LB || return 1
	done
	if [ $MODE = kernel ]; then
		echo "fou ports in be1:"
		ip netns exec be1 ip fou show
		ip netns exec be1 ip fou show | grep -q . || return 1
	fi
	wait_until 5 ip netns exec be1 busybox wget -q -O /dev/null http://127.0.0.1/ || { echo "httpd does not answer"; return 1; }
}

# be5 (IPv6 VIP) and be6 (IPv4 VIP) take their packets from the balancer's IPv6 address: in kernel
# mode through an IPv6 fou port each, whose payload is IPv6 (ipproto 41, into ip6tnl0) on be5 and
# IPv4 (ipproto 4, into caplance-ip6tnl, an external ip6tnl device) on be6.
backends6_up() {
	backend_up 5 $VIP6 $LB6 && backend_up 6 $VIP4B $LB6 || return 1
	[ $MODE = kernel ] || return 0
	local i want ok=0
	for i in 5 6; do
		echo "be$i: fou ports: $(ip netns exec be$i ip fou show | tr '\n' ' ')"
		echo "be$i: tunnel devices: $(ip netns exec be$i nft list set inet caplance tunnel_devices | grep -o 'elements = .*')"
		want=41 && [ $i = 6 ] && want=4
		ip netns exec be$i ip fou show | grep -q "^port 5555 ipproto $want -6" || { echo "be$i: no IPv6 fou port 5555 with ipproto $want"; ok=1; }
		ip netns exec be$i ip fou show | grep -qv -- "-6" && { echo "be$i: an IPv4 fou port too"; ok=1; }
	done
	ip netns exec be5 nft list set inet caplance tunnel_devices | grep -q '"ip6tnl0"' || ok=1
	ip netns exec be6 nft list set inet caplance tunnel_devices | grep -q '"caplance-ip6tnl"' || ok=1
	return $ok
}

# A UDP echo server on be1's VIP:7 that logs each datagram's source address.
cat > $W/udp-echo.pl <<'EOF'
use strict;
use IO::Handle;
use IO::Socket::INET;
my ($vip, $log) = @ARGV;
my $s = IO::Socket::INET->new(LocalAddr => $vip, LocalPort => 7, Proto => 'udp') or die "listen on $vip:7: $!";
open(my $out, '>>', $log) or die "$log: $!";
$out->autoflush(1);
while (defined(my $peer = $s->recv(my $buf, 2048))) {
	my (undef, $addr) = sockaddr_in($peer);
	print $out inet_ntoa($addr), "\n";
	$s->send($buf, 0, $peer);
}
EOF
# send-inner.pl LB RECEIVER PORT DST SRC:SPORT...: from LB to RECEIVER:PORT, one datagram per SRC
# whose payload is an inner IPv4 UDP packet SRC:SPORT -> DST:7 with a correct header checksum, as
# the balancer encapsulates.
cat > $W/send-inner.pl <<'EOF'
use strict;
use IO::Socket::INET;
my ($lb, $receiver, $port, $dst, @sources) = @ARGV;
my $s = IO::Socket::INET->new(LocalAddr => $lb, PeerAddr => $receiver, PeerPort => $port, Proto => 'udp')
	or die "socket: $!";
for (@sources) {
	my ($src, $sport) = split /:/;
	my $udp = pack('nnnn', $sport, 7, 8 + 8, 0) . 'spoofed?';
	my $ip = pack('CCnnnCCna4a4', 0x45, 0, 20 + length($udp), 0, 0, 64, 17, 0, inet_aton($src), inet_aton($dst));
	my $sum = 0;
	$sum += $_ for unpack('n*', $ip);
	$sum = ($sum & 0xffff) + ($sum >> 16) while $sum > 0xffff;
	substr($ip, 10, 2) = pack('n', ~$sum & 0xffff);
	$s->send($ip . $udp) or die "send: $!";
}
EOF

# spoof_count KIND: be1's drop counter for one kind of spoofed inner source (unspecified, loopback,
# multicast, broadcast, reserved, local, is_destination): an nft rule's packets in kernel mode, a
# stats.json counter in user space.
spoof_count() {
	if [ $MODE = kernel ]; then
		ip netns exec be1 nft list table inet caplance |
			sed -n "s/.*counter packets \([0-9]*\) .*comment \"tunnel-source-$1\".*/\1/p"
	else
		grep -o "\"inner_source_$1\": *[0-9]*" $W/be1/run/stats.json | grep -o '[0-9]*$'
	fi
}

# Inner packets whose sources no client can have, sent as the balancer sends (from its address to
# be1's encap port), reach no listener on the VIP, not even the echo server they are addressed to
# with source = destination = VIP:7, which would answer itself forever; each is counted under its
# kind. A client's datagram sent after them gets through.
spoofed_inner() {
	local log=$W/be1/udp.log kind want before after ok=0 n
	: > $log
	must systemd-run --quiet --unit=vmt-udp-be1 ip netns exec be1 perl $W/udp-echo.pl $VIP $log || return 1
	wait_until 30 sh -c "ip netns exec be1 ss -u -l -n | grep -q '$VIP:7 '" || { echo "no echo server on $VIP:7"; return 1; }
	# In user space, source = destination has a counter of its own; in the kernel it is a local
	# source (the VIP is on lo).
	local kinds="unspecified loopback multicast broadcast reserved local" want_local=2 want_dst=0
	if [ $MODE = userspace ]; then
		kinds="$kinds is_destination" want_local=1 want_dst=1
		wait_until 5 test -s $W/be1/run/stats.json || { echo "no stats.json"; return 1; }
	fi
	for kind in $kinds; do
		eval "before_$kind=\$(spoof_count $kind)"
	done
	must perl $W/send-inner.pl $LB "$(be_addr 1)" 5555 $VIP 0.0.0.0:40000 127.0.0.1:40000 224.0.0.1:40000 \
		255.255.255.255:40000 240.0.0.1:40000 "$(be_addr 1):40000" $VIP:7 $CLIENT:40000 || return 1
	wait_until 10 grep -qx $CLIENT $log || { echo "the client's datagram did not reach the echo server"; ok=1; }
	# the kernel's counters move at once, stats.json is rewritten every second
	[ $MODE = userspace ] && sleep 2.5
	for kind in $kinds; do
		eval "before=\$before_$kind"
		after=$(spoof_count $kind)
		case $kind in local) want=$want_local ;; is_destination) want=$want_dst ;; *) want=1 ;; esac
		echo "$kind: ${before:-?} -> ${after:-?} (want +$want)"
		[ -n "$before" ] && [ -n "$after" ] && [ $((after - before)) = "$want" ] || ok=1
	done
	n=$(wc -l < $log)
	echo "the echo server got $n datagram(s), from: $(sort $log | uniq -c | awk '{printf "%s x%s ", $2, $1}')"
	[ "$n" = 1 ] || ok=1
	systemctl stop vmt-udp-be1
	return $ok
}

# http_spread N BACKEND...: N requests from the client to the VIP; every one answered, and every
# BACKEND among those that answered.
http_spread() {
	local n=$1 k r fails=0 be
	shift
	: > $W/served
	for k in $(seq "$n"); do
		if r=$(ip netns exec client curl -sS --max-time 5 http://$VIP/ 2>&1); then
			echo "$r" >> $W/served
		else
			fails=$((fails + 1))
			echo "request $k: $r"
		fi
	done
	echo "$n requests, $fails failed; served by: $(sort $W/served | uniq -c | awk '{printf "%s=%s ", $2, $1}')"
	[ $fails = 0 ] || return 1
	for be in "$@"; do
		grep -qx "$be" $W/served || { echo "$be served none"; return 1; }
	done
}

# curl_from_client URL: the body of URL fetched by the client.
curl_from_client() { ip netns exec client curl -sS -g --max-time 5 "$1"; }

# Two services added at run time over IPv6 backends: web6 (VIP6) to be5, IPv6 in IPv6, and web46
# (VIP4B) to be6, IPv4 in IPv6. Each serves its client; in kernel mode an encapsulated datagram from
# the client's IPv6 address (not a balancer) is dropped by be5's table and counted. Both services
# are removed again, and their VIPs leave br0.
ipv6_services() {
	local ok=0 r before after
	must caplancectl add-service web6 --vip $VIP6 --port 80 --proto tcp --check http://:80/ --runtime &&
		must caplancectl add-backend be5 "$(be_addr6 5)" --service web6 &&
		must caplancectl add-service web46 --vip $VIP4B --port 80 --proto tcp --check http://:80/ --runtime &&
		must caplancectl add-backend be6 "$(be_addr6 6)" --service web46 || return 1
	wait_until 30 sh -c "caplancectl list | awk '\$1 == \"->\" && (\$2 == \"be5\" || \$2 == \"be6\") && \$6 == \"up\" { n++ } END { exit n != 2 }'" ||
		{ echo "be5 and be6 are not both up"; ok=1; }
	caplancectl list
	must ip -6 addr show dev br0 | grep -w "$VIP6" || ok=1
	r=$(curl_from_client "http://[$VIP6]/") ; echo "http://[$VIP6]/ -> $r"; [ "$r" = be5 ] || ok=1
	r=$(curl_from_client "http://$VIP4B/") ; echo "http://$VIP4B/ -> $r"; [ "$r" = be6 ] || ok=1
	if [ $MODE = kernel ]; then
		count() { ip netns exec be5 nft list table inet caplance | sed -n 's/.*counter packets \([0-9]*\) .*comment "tunnel-foreign-source-ipv6".*/\1/p'; }
		before=$(count)
		ip netns exec client perl -MSocket=:all -e 'socket(my $s, AF_INET6, SOCK_DGRAM, 0) or die $!;
			send($s, "not a balancer", 0, pack_sockaddr_in6(5555, inet_pton(AF_INET6, $ARGV[0]))) or die $!' "$(be_addr6 5)" || ok=1
		wait_until 5 sh -c "[ \"\$(ip netns exec be5 nft list table inet caplance | sed -n 's/.*counter packets \([0-9]*\) .*comment \"tunnel-foreign-source-ipv6\".*/\1/p')\" = $((before + 1)) ]" ||
			{ echo "be5's tunnel-foreign-source-ipv6: $before -> $(count), want +1"; ok=1; }
		echo "be5's tunnel-foreign-source-ipv6: $before -> $(count)"
	fi
	must caplancectl remove-service web6 && must caplancectl remove-service web46 || return 1
	ip -o addr show dev br0 | grep -wE "$VIP6|$VIP4B" && { echo "a VIP of a removed service is still on br0"; ok=1; }
	return $ok
}

# ---- the package ------------------------------------------------------------------------------

install_deb() {
	local debs
	debs=$(ls $S/deb/caplance_*.deb 2> /dev/null) || { echo "no caplance_*.deb in $S/deb"; return 1; }
	cp $debs /tmp/ && chmod 644 /tmp/caplance_*.deb
	# no network: every dependency must be in the image
	cd /tmp || return 1
	must env DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Use-Pty=0 ./caplance_*.deb || { cd /; return 1; }
	cd /
	dpkg -L caplance | grep -v '^/\.$' | sort > $W/files
	grep -vE '^/usr/share/man/|^/usr/share/(bash-completion|zsh|fish)/' $W/files | while read -r f; do
		[ -d "$f" ] || echo "$f"
	done
	CAPLANCED=$(command -v caplanced) || { echo "no caplanced in PATH"; return 1; }
	echo "after install: caplanced $(systemctl is-active caplanced), caplance-healthd $(systemctl is-active caplance-healthd), enabled: $(systemctl is-enabled caplanced 2>&1)"
}

# The configuration as the package installs it: refused, each EDIT-ME placeholder named with its
# line, so that starting caplanced before editing it attaches nothing.
shipped_config() {
	local out
	echo "\$ caplanced --check-config --config $CONF (must fail)"
	if out=$(caplanced --check-config --config $CONF 2>&1); then
		echo "$out"
		echo "   -> the shipped configuration was accepted"
		return 1
	fi
	echo "$out"
	[ "$(grep -c 'line [0-9]*: .*"EDIT-ME-[A-Z0-9]*": not an IP address' <<< "$out")" = 3 ] ||
		{ echo "   -> want the three EDIT-ME placeholders, each with its line"; return 1; }
}

write_config() { # BACKEND... (numbers)
	local i
	{
		cat <<-EOF
			# written by the VM test
			[balancer]
			vips = ["$VIP"]
			interface = "br0"
		EOF
		for i in "$@"; do
			printf '\n[[backend]]\nname = "be%s"\naddress = "%s"\ncheck = "http://:80/"\n' "$i" "$(be_addr "$i")"
		done
	} > $CONF
}

start_services() {
	write_config 1 2
	must caplanced --check-config --config $CONF || return 1
	must systemctl start caplanced caplance-healthd || { systemctl status --no-pager caplanced caplance-healthd; return 1; }
	must systemctl is-active caplanced caplance-healthd
}

status_line() {
	systemctl status --no-pager caplanced | head -n 12
	local st
	st=$(prop caplanced StatusText)
	echo "StatusText: $st"
	[ -n "$st" ] && systemctl status --no-pager caplanced | grep -qF "Status: \"$st\""
}

vip_attached() {
	must ip -4 addr show dev br0 | grep -w "$VIP"
	must nft list table inet caplance > /dev/null
}

healthd_reports() {
	# caplance-healthd probes each backend's check and reports to caplanced over the system bus
	# backend lines of caplancectl list: "  -> NAME ADDRESS WEIGHT ADMIN HEALTH …"
	wait_until 30 sh -c "caplancectl list | awk 'NR > 2 && \$1 == \"->\" && \$6 != \"up\" { bad = 1 } END { exit bad }' && test \$(caplancectl list | grep -c -- '->') -ge 3"
	local rc=$?
	caplancectl list
	return $rc
}

add_backend_root() {
	must caplancectl add-backend be3 "$(be_addr 3)" --check http://:80/ || return 1
	caplancectl list
	caplancectl list | grep -qw be3
}

add_backend_unprivileged() {
	local out rc
	echo "\$ setpriv --reuid=nobody --regid=nogroup --clear-groups caplancectl add-backend be9 198.18.0.99"
	out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups caplancectl add-backend be9 198.18.0.99 2>&1)
	rc=$?
	echo "$out"
	echo "   -> exit $rc"
	[ $rc = 1 ] && echo "$out" | grep -q caplance-admin || return 1
	caplancectl list | grep -qw be9 && { echo "be9 was added"; return 1; }
	# reading is for everyone
	must setpriv --reuid=nobody --regid=nogroup --clear-groups caplancectl list > /dev/null
}

admin_group() {
	must getent group caplance-admin || return 1
	useradd --system --no-create-home --groups caplance-admin vmtop 2> /dev/null || true
	must setpriv --reuid=vmtop --regid=vmtop --init-groups caplancectl set-weight be3 150 || return 1
	caplancectl list | awk '$1 == "->" && $2 == "be3" { print; found = 1; bad = $4 != 150 } END { exit !found || bad }'
}

watchdog_pings() {
	local wd since now
	wd=$(prop caplanced WatchdogUSec)
	echo "WatchdogSec: $wd"
	[ "$(usec "$wd")" -gt 0 ] 2>/dev/null || { echo "caplanced.service has no WatchdogSec"; return 1; }
	# alive past WatchdogSec + 2 s since it started, without a restart: the pings arrive
	since=$(prop caplanced ActiveEnterTimestampMonotonic)
	now=$(($(cut -d' ' -f1 /proc/uptime | tr -d .) * 10000))
	local left=$(((since + $(usec "$wd") + 2000000 - now) / 1000000))
	[ $left -gt 0 ] && { echo "waiting ${left}s"; sleep $left; }
	echo "NRestarts: $(prop caplanced NRestarts), MainPID $(mainpid)"
	[ "$(prop caplanced NRestarts)" = 0 ] && [ "$(prop caplanced ActiveState)" = active ]
}

watchdog_restart() {
	local wd pid t0 t1 limit
	wd=$(usec "$(prop caplanced WatchdogUSec)")
	[ "${wd:-0}" -gt 0 ] || { echo "no WatchdogSec"; return 1; }
	pid=$(mainpid)
	limit=$((wd / 1000 + 5000))
	echo "\$ kill -STOP $pid   (WatchdogSec $((wd / 1000)) ms: restart due after about $limit ms)"
	t0=$(($(date +%s%N) / 1000000))
	kill -STOP "$pid" || return 1
	restarted() { local p; p=$(mainpid); [ "$p" != 0 ] && [ "$p" != "$pid" ] && [ "$(prop caplanced ActiveState)" = active ]; }
	wait_until $((limit / 1000 + 30)) restarted
	t1=$(($(date +%s%N) / 1000000))
	echo "MainPID $pid -> $(mainpid) after $((t1 - t0)) ms (due after about $limit ms), NRestarts $(prop caplanced NRestarts)"
	journalctl -u caplanced --no-pager -n 200 | grep -iE 'watchdog' | tail -n 3
	# The proof is that the watchdog did it, not how fast: under qemu TCG on a
	# busy host the restart took 11-23 s, which a time limit turned into a flake.
	[ "$(mainpid)" != "$pid" ] &&
		journalctl -u caplanced --no-pager _PID=1 -n 50 | grep -q "Failed with result 'watchdog'"
}

# A data-path worker that stops answering (the test hook wedges one after
# 2 s) must stop the pings, and systemd must restart caplanced.
watchdog_wedge() {
	local wd pid t0 t1 limit drop=/run/systemd/system/caplanced.service.d
	wd=$(usec "$(prop caplanced WatchdogUSec)")
	[ "${wd:-0}" -gt 0 ] || { echo "no WatchdogSec"; return 1; }
	mkdir -p $drop
	printf '[Service]\nEnvironment=CAPLANCE_TEST_WEDGE=worker:2s\n' > $drop/wedge.conf
	must systemctl daemon-reload || return 1
	must systemctl restart caplanced || return 1
	pid=$(mainpid)
	# 2 s to the wedge, WatchdogSec after the last ping at most, the stack
	# dump of SIGABRT, RestartSec=2s, and slack
	limit=$((2000 + wd / 1000 + 12000))
	echo "wedging a worker of PID $pid after 2 s (restart due after about $limit ms)"
	t0=$(($(date +%s%N) / 1000000))
	rm -f $drop/wedge.conf
	must systemctl daemon-reload || return 1 # the restart runs without the hook
	restarted() { local p; p=$(mainpid); [ "$p" != 0 ] && [ "$p" != "$pid" ] && [ "$(prop caplanced ActiveState)" = active ]; }
	wait_until $((limit / 1000 + 30)) restarted
	t1=$(($(date +%s%N) / 1000000))
	echo "MainPID $pid -> $(mainpid) after $((t1 - t0)) ms (due after about $limit ms), Result $(prop caplanced Result)"
	journalctl -u caplanced --no-pager -n 400 | grep -iE "Failed with result|wedg" | tail -n 3
	# As above: that the watchdog restarted it is the proof, not the time.
	[ "$(mainpid)" != "$pid" ] &&
		journalctl -u caplanced --no-pager _PID=1 -n 50 | grep -q "Failed with result 'watchdog'"
}

reload_good() {
	local pid
	pid=$(mainpid)
	write_config 1 2 4
	must systemctl reload caplanced || return 1
	caplancectl list
	echo "StatusText: $(prop caplanced StatusText)"
	caplancectl list | grep -qw be4 && [ "$(mainpid)" = "$pid" ] && [ "$(prop caplanced ActiveState)" = active ]
}

reload_bad() {
	local pid before
	pid=$(mainpid)
	before=$(caplancectl list | awk 'NR > 2 { print $1, $2, $3 }')
	cp $CONF $W/good.toml
	sed -i 's/^interface = "br0"/&\nbogus_key = 1/' $CONF
	date +%s > $W/bad-reload-time
	echo "\$ systemctl reload caplanced   (config with an unknown key bogus_key)"
	systemctl reload caplanced
	echo "   -> exit $?"
	sleep 1
	echo "ActiveState $(prop caplanced ActiveState), MainPID $pid -> $(mainpid)"
	caplancectl list
	[ "$(prop caplanced ActiveState)" = active ] && [ "$(mainpid)" = "$pid" ] &&
		[ "$(caplancectl list | awk 'NR > 2 { print $1, $2, $3 }')" = "$before" ]
}

bad_reload_journal() {
	journalctl -u caplanced --no-pager --since "@$(cat $W/bad-reload-time)" | tail -n 8
	journalctl -u caplanced --no-pager --since "@$(cat $W/bad-reload-time)" | grep -q bogus_key
}

bad_reload_status() {
	local st
	st=$(prop caplanced StatusText)
	echo "StatusText: $st"
	echo "$st" | grep -q bogus_key
}

reload_restore() {
	cp $W/good.toml $CONF
	must systemctl reload caplanced || return 1
	echo "StatusText: $(prop caplanced StatusText)"
	! prop caplanced StatusText | grep -q bogus_key
}

# metric_sum NAME: the sum of every sample of NAME in a scrape of caplanced-metrics.socket.
metric_sum() {
	curl -sS --max-time 5 http://127.0.0.1:9469/metrics |
		awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF; found = 1 } END { if (!found) exit 1; printf "%d\n", s }'
}

# The metrics socket, shipped disabled: enabled, caplanced takes it at its restart; a scrape
# through it counts exactly the flows the client opened through the VIP since.
metrics_socket() {
	local n=20 k flows backends listed
	echo "caplanced-metrics.socket: $(systemctl is-enabled caplanced-metrics.socket 2>&1), $(systemctl is-active caplanced-metrics.socket)"
	[ "$(systemctl is-enabled caplanced-metrics.socket 2>&1)" = disabled ] || { echo "the package enabled the socket"; return 1; }
	curl -sS --max-time 5 http://127.0.0.1:9469/metrics > /dev/null 2>&1 && { echo "something serves 9469 before the socket is enabled"; return 1; }
	must systemctl enable caplanced-metrics.socket && must systemctl restart caplanced || return 1
	must systemctl is-active caplanced-metrics.socket caplanced || return 1
	echo "caplanced TriggeredBy: $(prop caplanced TriggeredBy)"
	for k in $(seq $n); do
		ip netns exec client curl -sS --max-time 5 -o /dev/null http://$VIP/ || { echo "request $k failed"; return 1; }
	done
	curl -sS --max-time 5 -D - -o $W/scrape http://127.0.0.1:9469/metrics | grep -i '^content-type'
	grep -E '^caplance_(backend_new_flows_total|backend_weight|dataplane_info|config_reloads_total)' $W/scrape
	flows=$(metric_sum caplance_backend_new_flows_total)
	backends=$(grep -c '^caplance_backend_weight{' $W/scrape)
	# backend lines of caplancectl list: "  -> NAME ADDRESS …", the second line is their header
	listed=$(caplancectl list | awk '$1 == "->" && $2 != "NAME" { n++ } END { print n + 0 }')
	echo "new flows since the restart: $flows (want $n); backends: $backends (caplancectl list: $listed)"
	[ "$flows" = $n ] && [ "$backends" = "$listed" ] && [ "$backends" -ge 4 ]
}

# caplance-healthd's metrics socket, shipped disabled too: enabled, caplance-healthd takes it at
# its restart, and a scrape through it shows passing probes for every backend caplancectl list
# shows up (the first probes follow the restart by up to a check's interval and jitter).
healthd_metrics_socket() {
	local up backends listed
	[ "$(systemctl is-enabled caplance-healthd-metrics.socket 2>&1)" = disabled ] || { echo "the package enabled the socket"; return 1; }
	must systemctl enable caplance-healthd-metrics.socket && must systemctl restart caplance-healthd || return 1
	must systemctl is-active caplance-healthd-metrics.socket caplance-healthd || return 1
	echo "caplance-healthd TriggeredBy: $(prop caplance-healthd TriggeredBy)"
	for _ in $(seq 30); do
		sleep 1
		curl -sS --max-time 5 http://127.0.0.1:9470/metrics > $W/healthd-scrape 2>/dev/null || continue
		up=$(awk '/^caplance_healthd_probes_total\{.*result="up"/ { s += $NF } END { printf "%d\n", s }' $W/healthd-scrape)
		backends=$(grep -c '^caplance_healthd_probes_total{.*result="up"' $W/healthd-scrape)
		# "  -> NAME ADDRESS WEIGHT ADMIN HEALTH …"; the first such line is the header
		listed=$(caplancectl list | awk '$1 == "->" && $2 != "NAME" && $6 == "up" { n++ } END { print n + 0 }')
		[ "$backends" -ge 1 ] && [ "$backends" = "$listed" ] && break
	done
	grep '^caplance_healthd_probes_total{' $W/healthd-scrape
	echo "probes passed: $up, for $backends backends (caplancectl list shows $listed up)"
	[ "$up" -gt 0 ] && [ "$backends" -ge 1 ] && [ "$backends" = "$listed" ]
}

# PartOf=caplanced.service: the socket went with caplanced, so a scrape cannot start it again.
metrics_socket_stopped() {
	echo "caplanced $(systemctl is-active caplanced), caplanced-metrics.socket $(systemctl is-active caplanced-metrics.socket)"
	[ "$(systemctl is-active caplanced-metrics.socket)" = inactive ] || return 1
	curl -sS --max-time 5 http://127.0.0.1:9469/metrics > /dev/null 2>&1 && { echo "9469 still answers"; return 1; }
	[ "$(systemctl is-active caplanced)" = inactive ]
}

stop_clean() {
	must systemctl stop caplanced || return 1
	echo "caplanced $(systemctl is-active caplanced), caplance-healthd $(systemctl is-active caplance-healthd)"
	local ok=0
	if ip -4 -o addr show | grep -w "$VIP"; then echo "the VIP is still attached"; ok=1; fi
	nft list tables
	if nft list tables | grep -q 'inet caplance'; then echo "the nft table is still there"; ok=1; fi
	sysctls > $W/sysctls.after
	if ! diff -u $W/sysctls.before $W/sysctls.after; then echo "sysctls differ from before the first start"; ok=1; fi
	return $ok
}

purge() {
	systemctl stop caplance-healthd
	systemctl stop 'vmt-*' 2> /dev/null
	must env DEBIAN_FRONTEND=noninteractive apt-get purge -y -o Dpkg::Use-Pty=0 caplance || return 1
	local ok=0 f
	dpkg -s caplance > /dev/null 2>&1 && { echo "caplance is still installed"; ok=1; }
	# every file the package had, and what it made at run time
	for f in $(cat $W/files) /var/lib/caplance /run/caplance; do
		case $f in
		*caplance*) ;;            # the package's own files and directories
		*) [ -d $f ] && continue ;; # /usr, /usr/share/man/man8, ...: shared
		esac
		[ -e $f ] && { echo "left behind: $f"; ok=1; }
	done
	echo "$(wc -l < $W/files) paths of the package checked"
	systemctl daemon-reload
	if [ "$(prop caplanced LoadState)" != not-found ]; then echo "caplanced.service still loads"; ok=1; fi
	for u in caplance caplance-health; do
		getent passwd $u && { echo "user $u left behind"; ok=1; }
	done
	getent group caplance-admin && { echo "group caplance-admin left behind"; ok=1; }
	return $ok
}

# ---- the run ----------------------------------------------------------------------------------

log "guest: $(systemd-detect-virt), $(uname -r), systemd $(systemctl --version | head -n1 | cut -d' ' -f2), boot $(cat $S/boot-state 2>/dev/null)"
step "network namespaces: client and be1..be6 on br0 (198.18.0.2, 2001:db8:18::2)" net_up || finish
sysctls > $W/sysctls.before
step "apt install ./caplance_*.deb (no network: dependencies from the image)" install_deb || finish
step "the shipped caplanced.toml is refused, naming its three EDIT-ME placeholders" shipped_config
step "backends: caplanced --bus=none, receiver mode $MODE$([ $MODE = kernel ] && echo ' (fou)') + httpd in be1..be4" backends_up || finish
step "spoofed inner sources through the tunnel reach no listener on be1, counted by kind" spoofed_inner
step "IPv6 outers: receivers in mode $MODE$([ $MODE = kernel ] && echo ' (fou -6)') in be5 (IPv6 VIP) and be6 (IPv4 VIP)" backends6_up
if step "systemctl start caplanced caplance-healthd -> both active" start_services; then
	step "systemctl status caplanced shows the STATUS line" status_line
	step "the VIP on br0 and the nft table inet caplance" vip_attached
	step "HTTP through the VIP from the client, served by be1 and be2" http_spread 30 be1 be2
	step "caplance-healthd reports every backend up (caplancectl list, HEALTH)" healthd_reports
	step "caplancectl add-backend as root" add_backend_root
	step "HTTP through the VIP served by be1, be2 and the added be3" http_spread 40 be1 be2 be3
	step "caplancectl add-backend as nobody: denied by the bus policy (exit 1, names caplance-admin)" add_backend_unprivileged
	step "a member of caplance-admin may change backends (set-weight)" admin_group
	step "run-time services over IPv6 backends: IPv6 in IPv6 (be5) and IPv4 in IPv6 (be6), then removed" ipv6_services
	if step "watchdog: pings keep caplanced alive past WatchdogSec" watchdog_pings; then :; fi
	if step "watchdog: kill -STOP the main PID -> restarted by the watchdog" watchdog_restart; then
		step "after the restart: HTTP through the VIP, be3 kept (backends.json)" http_spread 40 be1 be2 be3
		step "watchdog: a wedged worker (CAPLANCE_TEST_WEDGE) -> restarted by systemd" watchdog_wedge
		step "after the wedge restart: HTTP through the VIP" http_spread 40 be1 be2 be3
	else
		skip "after the restart: HTTP through the VIP" "no watchdog restart"
		systemctl kill -s CONT caplanced 2>/dev/null
		systemctl restart caplanced
	fi
	step "systemctl reload, good config (+be4): caplancectl list shows be4, same PID" reload_good
	step "HTTP through the VIP served by be1..be4" http_spread 40 be1 be2 be3 be4
	step "systemctl reload, bad config: stays active, same PID, old backends" reload_bad
	step "bad config: the error in journalctl -u caplanced" bad_reload_journal
	step "bad config: the error in the STATUS line" bad_reload_status
	step "systemctl reload with the good config again clears the error" reload_restore
	step "metrics: enable caplanced-metrics.socket, restart caplanced, curl a scrape counting the flows" metrics_socket
	step "metrics: enable caplance-healthd-metrics.socket, restart caplance-healthd, curl a scrape of its probes" healthd_metrics_socket
	step "systemctl stop caplanced: no VIP, no nft table, sysctls restored" stop_clean
	step "metrics: the socket stopped with caplanced (PartOf), nothing answers on 9469" metrics_socket_stopped
else
	skip "the service steps" "caplanced did not start"
fi
step "apt purge caplance: binaries, units, policy, state, config and users gone" purge
finish
