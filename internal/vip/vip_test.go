package vip_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/vip"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestAttachVIP(t *testing.T) {
	tests := []struct {
		name    string
		links   [][]string // each: name, then its addresses
		vip     string
		iface   string
		want    string // interface used
		wantErr string
		// wantChanges is nil when the VIP was already there.
		wantChanges []vip.Change
	}{
		{
			name:        "explicit interface",
			links:       [][]string{{"eth0", "192.168.1.2/24"}, {"eth1", "10.0.0.2/24"}},
			vip:         "10.0.0.100",
			iface:       "eth0",
			want:        "eth0",
			wantChanges: []vip.Change{{Kind: vip.KindAddress, Link: "eth0", Address: pfx("10.0.0.100/32")}},
		},
		{
			name:        "by subnet",
			links:       [][]string{{"eth0", "192.168.1.2/24"}, {"eth1", "10.0.0.2/24"}},
			vip:         "10.0.0.100",
			want:        "eth1",
			wantChanges: []vip.Change{{Kind: vip.KindAddress, Link: "eth1", Address: pfx("10.0.0.100/32")}},
		},
		{
			name:        "by subnet, second address of the interface",
			links:       [][]string{{"eth0", "192.168.1.2/24", "10.9.0.1/16"}, {"eth1", "10.0.0.2/24"}},
			vip:         "10.9.200.1",
			want:        "eth0",
			wantChanges: []vip.Change{{Kind: vip.KindAddress, Link: "eth0", Address: pfx("10.9.200.1/32")}},
		},
		{
			name:  "no candidate",
			links: [][]string{{"eth0", "192.168.1.2/24", "10.9.0.1/16"}, {"eth1", "10.0.0.2/24"}},
			vip:   "172.16.0.1",
			wantErr: "VIP 172.16.0.1: no interface has an address in its subnet " +
				"(interfaces: eth0 192.168.1.2/24 10.9.0.1/16, eth1 10.0.0.2/24); set balancer.interface",
		},
		{
			name:    "no IPv4 address anywhere",
			links:   [][]string{{"eth0"}},
			vip:     "10.0.0.100",
			wantErr: "VIP 10.0.0.100: no interface has an address in its subnet (interfaces: none has an IPv4 address); set balancer.interface",
		},
		{
			name:  "several candidates",
			links: [][]string{{"eth0", "10.0.0.2/24"}, {"eth1", "192.168.1.2/24"}, {"eth2", "10.0.0.3/16"}},
			vip:   "10.0.0.100",
			wantErr: "VIP 10.0.0.100: several interfaces have an address in its subnet " +
				"(eth0 10.0.0.2/24, eth2 10.0.0.3/16); set balancer.interface",
		},
		{
			name:  "already present",
			links: [][]string{{"eth0", "192.168.1.2/24"}, {"eth1", "10.0.0.2/24", "10.0.0.100/32"}},
			vip:   "10.0.0.100",
			iface: "eth1",
			want:  "eth1",
		},
		{
			name:  "already present with another prefix length",
			links: [][]string{{"eth0", "10.0.0.100/24"}},
			vip:   "10.0.0.100",
			want:  "eth0",
		},
		{
			name:    "unknown interface",
			links:   [][]string{{"eth0", "192.168.1.2/24"}},
			vip:     "10.0.0.100",
			iface:   "eth9",
			wantErr: `VIP 10.0.0.100: interface "eth9": Link not found`,
		},
		{
			name:        "IPv6, explicit interface",
			links:       [][]string{{"eth0", "192.168.1.2/24"}},
			vip:         "2001:db8::1",
			iface:       "eth0",
			want:        "eth0",
			wantChanges: []vip.Change{{Kind: vip.KindAddress, Link: "eth0", Address: pfx("2001:db8::1/128")}},
		},
		{
			name:        "IPv6 by subnet",
			links:       [][]string{{"eth0", "192.168.1.2/24", "fd00:1::2/64"}, {"eth1", "10.0.0.2/24", "fd00:2::2/64"}},
			vip:         "fd00:2::100",
			want:        "eth1",
			wantChanges: []vip.Change{{Kind: vip.KindAddress, Link: "eth1", Address: pfx("fd00:2::100/128")}},
		},
		{
			name:  "IPv6, no candidate",
			links: [][]string{{"eth0", "192.168.1.2/24", "fd00:1::2/64"}, {"eth1", "10.0.0.2/24"}},
			vip:   "2001:db8::1",
			wantErr: "VIP 2001:db8::1: no interface has an address in its subnet " +
				"(interfaces: eth0 fd00:1::2/64); set balancer.interface",
		},
		{
			name:    "no IPv6 address anywhere",
			links:   [][]string{{"eth0", "192.168.1.2/24"}},
			vip:     "2001:db8::1",
			wantErr: "VIP 2001:db8::1: no interface has an address in its subnet (interfaces: none has an IPv6 address); set balancer.interface",
		},
		{
			name:    "a zone",
			links:   [][]string{{"eth0", "192.168.1.2/24"}},
			vip:     "fe80::1%eth0",
			wantErr: "VIP fe80::1%eth0: not an IPv4 or IPv6 address",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t)
			for _, l := range tt.links {
				addVeth(t, l[0], l[1:]...)
			}
			before := map[string][]string{}
			for _, l := range tt.links {
				before[l[0]] = addrsOf(t, l[0])
			}
			dir := t.TempDir()
			h := openHost(t, dir)

			got, err := h.AttachVIP(ip(tt.vip), tt.iface)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("AttachVIP error = %v, want %q", err, tt.wantErr)
				}
				if c := h.Changes(); len(c) != 0 {
					t.Errorf("failed AttachVIP recorded %v", c)
				}
				return
			}
			if err != nil {
				t.Fatalf("AttachVIP: %v", err)
			}
			if got != tt.want {
				t.Errorf("AttachVIP used %q, want %q", got, tt.want)
			}
			if diff := cmp.Diff(tt.wantChanges, h.Changes(), equateAddrs); diff != "" {
				t.Errorf("recorded changes (-want +got):\n%s", diff)
			}
			if !contains(addrsOf(t, got), tt.vip) {
				t.Errorf("%s has %v, no %s", got, addrsOf(t, got), tt.vip)
			}
			if a := ip(tt.vip); a.Is6() && tt.wantChanges != nil {
				if flags := addrFlags(t, got, a); flags&unix.IFA_F_NODAD == 0 || flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("%s on %s has flags %#x, want nodad and not tentative: it would serve only after DAD", a, got, flags)
				}
			}

			if err := h.Undo(); err != nil {
				t.Fatalf("Undo: %v", err)
			}
			after := map[string][]string{}
			for _, l := range tt.links {
				after[l[0]] = addrsOf(t, l[0])
			}
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("addresses after Undo (-before +after):\n%s", diff)
			}
			if journalExists(t, dir) {
				t.Error("journal left after Undo")
			}
		})
	}
}

func contains(addrs []string, addr string) bool {
	for _, a := range addrs {
		if strings.HasPrefix(a, addr+"/") {
			return true
		}
	}
	return false
}

// A VIP no service has any more goes, with its journal entry; an address
// the host had before, and one of an earlier run's journal, stay.
func TestDetachVIP(t *testing.T) {
	inNetns(t)
	addVeth(t, "eth0", "10.0.0.2/24", "10.0.0.7/32")
	dir := t.TempDir()
	h := openHost(t, dir)
	for _, a := range []string{"10.0.0.100", "10.0.0.101", "10.0.0.7"} {
		if _, err := h.AttachVIP(ip(a), ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []string{"10.0.0.100", "10.0.0.7", "10.0.0.99"} {
		if err := h.DetachVIP(ip(a)); err != nil {
			t.Fatalf("DetachVIP(%s): %v", a, err)
		}
	}
	if diff := cmp.Diff([]string{"10.0.0.2/24", "10.0.0.7/32", "10.0.0.101/32"}, addrsOf(t, "eth0")); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	want := []vip.Change{{Kind: vip.KindAddress, Link: "eth0", Address: pfx("10.0.0.101/32")}}
	if diff := cmp.Diff(want, h.Changes(), equateAddrs); diff != "" {
		t.Errorf("journal (-want +got):\n%s", diff)
	}
	// The journal on disk says the same: a crash now undoes only 101.
	h.Close()
	h = openHost(t, dir)
	if diff := cmp.Diff(want, h.Leftovers(), equateAddrs); diff != "" {
		t.Errorf("journal on disk (-want +got):\n%s", diff)
	}
	if err := h.DetachVIP(ip("10.0.0.101")); err != nil {
		t.Fatal(err)
	}
	if !contains(addrsOf(t, "eth0"), "10.0.0.101") {
		t.Error("DetachVIP removed an earlier run's address, which is Undo's")
	}
}

// An IPv6 VIP goes the same way: its /128 and its journal entry.
func TestDetachVIP6(t *testing.T) {
	inNetns(t)
	addVeth(t, "eth0", "10.0.0.2/24")
	h := openHost(t, t.TempDir())
	for _, a := range []string{"2001:db8::100", "2001:db8::101"} {
		if _, err := h.AttachVIP(ip(a), "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.DetachVIP(ip("2001:db8::100")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"10.0.0.2/24", "2001:db8::101/128"}, addrsOf(t, "eth0")); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	want := []vip.Change{{Kind: vip.KindAddress, Link: "eth0", Address: pfx("2001:db8::101/128")}}
	if diff := cmp.Diff(want, h.Changes(), equateAddrs); diff != "" {
		t.Errorf("journal (-want +got):\n%s", diff)
	}
}

// TestReceiver attaches a VIP to lo and sets the ARP sysctls in a fresh
// namespace, then checks that Undo restores exactly what was there.
func TestReceiver(t *testing.T) {
	const ignore, announce = "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce"
	tests := []struct {
		name             string
		ignore, announce string // before
		onLo             string // already on lo, "" for none
		wantIgnore       string // while attached
		wantAnnounce     string
		wantChanges      []vip.Change
	}{
		{
			name: "defaults", ignore: "0", announce: "0",
			wantIgnore: "1", wantAnnounce: "2",
			wantChanges: []vip.Change{
				{Kind: vip.KindAddress, Link: "lo", Address: pfx("10.0.0.100/32")},
				{Kind: vip.KindSysctl, Sysctl: ignore, Value: "0"},
				{Kind: vip.KindSysctl, Sysctl: announce, Value: "0"},
			},
		},
		{
			name: "arp_ignore 3 answers for lo addresses", ignore: "3", announce: "1",
			wantIgnore: "1", wantAnnounce: "2",
			wantChanges: []vip.Change{
				{Kind: vip.KindAddress, Link: "lo", Address: pfx("10.0.0.100/32")},
				{Kind: vip.KindSysctl, Sysctl: ignore, Value: "3"},
				{Kind: vip.KindSysctl, Sysctl: announce, Value: "1"},
			},
		},
		{
			name: "already set", ignore: "1", announce: "2",
			wantIgnore: "1", wantAnnounce: "2",
			wantChanges: []vip.Change{
				{Kind: vip.KindAddress, Link: "lo", Address: pfx("10.0.0.100/32")},
			},
		},
		{
			name: "stricter arp_ignore kept, address already on lo", ignore: "2", announce: "0", onLo: "10.0.0.100/32",
			wantIgnore: "2", wantAnnounce: "2",
			wantChanges: []vip.Change{
				{Kind: vip.KindSysctl, Sysctl: announce, Value: "0"},
			},
		},
		{
			name: "arp_ignore 8 kept", ignore: "8", announce: "2",
			wantIgnore: "8", wantAnnounce: "2",
			wantChanges: []vip.Change{
				{Kind: vip.KindAddress, Link: "lo", Address: pfx("10.0.0.100/32")},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t)
			setSysctl(t, ignore, tt.ignore)
			setSysctl(t, announce, tt.announce)
			if tt.onLo != "" {
				addAddr(t, "lo", tt.onLo)
			}
			loBefore := addrsOf(t, "lo")
			dir := t.TempDir()
			h := openHost(t, dir)

			if err := h.AttachLoopback(ip("10.0.0.100")); err != nil {
				t.Fatalf("AttachLoopback: %v", err)
			}
			if err := h.ReceiverSysctls(); err != nil {
				t.Fatalf("ReceiverSysctls: %v", err)
			}
			if diff := cmp.Diff(tt.wantChanges, h.Changes(), equateAddrs); diff != "" {
				t.Errorf("recorded changes (-want +got):\n%s", diff)
			}
			if got := getSysctl(t, ignore); got != tt.wantIgnore {
				t.Errorf("arp_ignore = %s, want %s", got, tt.wantIgnore)
			}
			if got := getSysctl(t, announce); got != tt.wantAnnounce {
				t.Errorf("arp_announce = %s, want %s", got, tt.wantAnnounce)
			}
			if !contains(addrsOf(t, "lo"), "10.0.0.100") {
				t.Errorf("lo has %v, no 10.0.0.100", addrsOf(t, "lo"))
			}

			if err := h.Undo(); err != nil {
				t.Fatalf("Undo: %v", err)
			}
			got := []string{getSysctl(t, ignore), getSysctl(t, announce)}
			if diff := cmp.Diff([]string{tt.ignore, tt.announce}, got); diff != "" {
				t.Errorf("arp_ignore, arp_announce after Undo (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(loBefore, addrsOf(t, "lo")); diff != "" {
				t.Errorf("lo's addresses after Undo (-want +got):\n%s", diff)
			}
			if journalExists(t, dir) {
				t.Error("journal left after Undo")
			}
			if c := h.Changes(); len(c) != 0 {
				t.Errorf("changes left after Undo: %v", c)
			}
		})
	}
}

func TestSetSysctl(t *testing.T) {
	tests := []struct {
		name, sysctl, value string
		before              string // written first, "" to leave as is
		wantErr             string
		wantChanges         []vip.Change
	}{
		{
			name: "changed", sysctl: "net.ipv4.conf.all.arp_ignore", before: "0", value: "1",
			wantChanges: []vip.Change{{Kind: vip.KindSysctl, Sysctl: "net.ipv4.conf.all.arp_ignore", Value: "0"}},
		},
		{
			name: "already at the value", sysctl: "net.ipv4.conf.all.arp_ignore", before: "1", value: "1",
		},
		{
			name: "white space between fields does not matter", sysctl: "net.ipv4.ip_local_port_range",
			before: "32768 60999", value: "32768   60999",
		},
		{
			name: "several fields", sysctl: "net.ipv4.ip_local_port_range", before: "32768 60999", value: "40000 50000",
			wantChanges: []vip.Change{{Kind: vip.KindSysctl, Sysctl: "net.ipv4.ip_local_port_range", Value: "32768\t60999"}},
		},
		{
			name: "interface with a dot in its name", sysctl: "net.ipv4.conf.v/5.rp_filter", before: "0", value: "2",
			wantChanges: []vip.Change{{Kind: vip.KindSysctl, Sysctl: "net.ipv4.conf.v/5.rp_filter", Value: "0"}},
		},
		{
			name: "value the kernel rejects", sysctl: "net.ipv4.conf.all.arp_ignore", before: "0", value: "banana",
			wantErr: "sysctl net.ipv4.conf.all.arp_ignore=banana: write /proc/sys/net/ipv4/conf/all/arp_ignore: invalid argument",
		},
		{
			name: "no such sysctl", sysctl: "net.ipv4.conf.nope0.rp_filter", value: "1",
			wantErr: "sysctl net.ipv4.conf.nope0.rp_filter: open /proc/sys/net/ipv4/conf/nope0/rp_filter: no such file or directory",
		},
		{
			name: "not net", sysctl: "kernel.hostname", value: "x",
			wantErr: `sysctl "kernel.hostname": only net.* sysctls can be set`,
		},
		{
			name: "path tricks", sysctl: "net.ipv4.conf.//.rp_filter", value: "1",
			wantErr: `sysctl "net.ipv4.conf.//.rp_filter": not a valid name`,
		},
		{
			name: "empty component", sysctl: "net.ipv4..rp_filter", value: "1",
			wantErr: `sysctl "net.ipv4..rp_filter": not a valid name`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t)
			addVeth(t, "v.5")
			path := "/proc/sys/" + strings.NewReplacer(".", "/", "/", ".").Replace(tt.sysctl)
			read := func() string {
				b, err := os.ReadFile(path)
				if err != nil {
					return err.Error()
				}
				return strings.TrimSpace(string(b))
			}
			if tt.before != "" {
				if err := os.WriteFile(path, []byte(tt.before), 0); err != nil {
					t.Fatal(err)
				}
			}
			prior := read()
			dir := t.TempDir()
			h := openHost(t, dir)

			err := h.SetSysctl(tt.sysctl, tt.value)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("SetSysctl error = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("SetSysctl: %v", err)
			}
			if diff := cmp.Diff(tt.wantChanges, h.Changes(), equateAddrs); diff != "" {
				t.Errorf("recorded changes (-want +got):\n%s", diff)
			}
			if got, want := journalExists(t, dir), len(tt.wantChanges) > 0; got != want {
				t.Errorf("journal exists = %v, want %v", got, want)
			}
			if err := h.Undo(); err != nil {
				t.Fatalf("Undo: %v", err)
			}
			if got := read(); got != prior {
				t.Errorf("after Undo %s = %q, want %q", tt.sysctl, got, prior)
			}
		})
	}
}

func TestRelaxRPFilter(t *testing.T) {
	const all = "net.ipv4.conf.all.rp_filter"
	const dev = "net.ipv4.conf.v/5.rp_filter"
	tests := []struct {
		name             string
		all, dev         string // before
		wantAll, wantDev string
		wantChanges      []vip.Change
	}{
		{"strict everywhere", "1", "1", "2", "2", []vip.Change{
			{Kind: vip.KindSysctl, Sysctl: dev, Value: "1"},
			{Kind: vip.KindSysctl, Sysctl: all, Value: "1"},
		}},
		{"all off", "0", "1", "0", "2", []vip.Change{{Kind: vip.KindSysctl, Sysctl: dev, Value: "1"}}},
		{"already loose or off", "2", "0", "2", "0", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t)
			addVeth(t, "v.5")
			write := func(p, v string) {
				if err := os.WriteFile(p, []byte(v), 0); err != nil {
					t.Fatal(err)
				}
			}
			read := func(p string) string {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				return strings.TrimSpace(string(b))
			}
			allFile, devFile := "/proc/sys/net/ipv4/conf/all/rp_filter", "/proc/sys/net/ipv4/conf/v.5/rp_filter"
			write(allFile, tt.all)
			write(devFile, tt.dev)
			h := openHost(t, t.TempDir())

			if err := h.RelaxRPFilter("v.5"); err != nil {
				t.Fatalf("RelaxRPFilter: %v", err)
			}
			if diff := cmp.Diff(tt.wantChanges, h.Changes(), equateAddrs); diff != "" {
				t.Errorf("recorded changes (-want +got):\n%s", diff)
			}
			if got := []string{read(allFile), read(devFile)}; !cmp.Equal(got, []string{tt.wantAll, tt.wantDev}) {
				t.Errorf("all, v.5 rp_filter = %v, want %v", got, []string{tt.wantAll, tt.wantDev})
			}
			if err := h.Undo(); err != nil {
				t.Fatalf("Undo: %v", err)
			}
			if got := []string{read(allFile), read(devFile)}; !cmp.Equal(got, []string{tt.all, tt.dev}) {
				t.Errorf("after Undo: all, v.5 rp_filter = %v, want %v", got, []string{tt.all, tt.dev})
			}
		})
	}
}

// TestJournalFormat pins the journal's text: it is public behaviour.
func TestJournalFormat(t *testing.T) {
	inNetns(t)
	setSysctl(t, "net.ipv4.conf.all.arp_ignore", "0")
	setSysctl(t, "net.ipv4.conf.all.arp_announce", "0")
	dir := t.TempDir()
	h := openHost(t, dir)
	if err := h.AttachLoopback(ip("10.0.0.100")); err != nil {
		t.Fatal(err)
	}
	if err := h.ReceiverSysctls(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "host-changes.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "version": 1,
  "changes": [
    {"kind":"address","link":"lo","address":"10.0.0.100/32"},
    {"kind":"sysctl","sysctl":"net.ipv4.conf.all.arp_ignore","value":"0"},
    {"kind":"sysctl","sysctl":"net.ipv4.conf.all.arp_announce","value":"0"}
  ]
}
`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("journal (-want +got):\n%s", diff)
	}
	if err := h.Undo(); err != nil {
		t.Fatal(err)
	}
}

func TestChangeString(t *testing.T) {
	tests := []struct {
		c    vip.Change
		want string
	}{
		{vip.Change{Kind: vip.KindAddress, Link: "eth0", Address: pfx("10.0.0.100/32")}, "address 10.0.0.100/32 on eth0"},
		{vip.Change{Kind: vip.KindSysctl, Sysctl: "net.ipv4.conf.all.arp_ignore", Value: "0"}, "sysctl net.ipv4.conf.all.arp_ignore=0"},
		{vip.Change{Kind: vip.KindLinkUp, Link: "tunl0"}, "link tunl0 set up"},
		{vip.Change{Kind: vip.KindLinkCreated, Link: "caplance-ipip", LinkType: "ipip"}, "ipip link caplance-ipip created"},
		{vip.Change{Kind: vip.KindFOU, Port: 5555, IPProto: 4}, "foo-over-UDP port 5555 ipproto 4"},
		{vip.Change{Kind: vip.KindRoute, Link: "lo", Address: pfx("2001:db8::100/128"), Table: 100, Protocol: 252}, "route 2001:db8::100/128 dev lo table 100 proto 252"},
		{vip.Change{Kind: "tunnel"}, `unknown change "tunnel"`},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

// TestLock: a second Open of the same directory (caplanced --cleanup while
// caplanced runs) fails until the first Host is closed.
func TestLock(t *testing.T) {
	dir := t.TempDir()
	h, err := vip.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vip.Open(dir); !errors.Is(err, vip.ErrLocked) {
		t.Fatalf("second Open error = %v, want ErrLocked", err)
	} else if want := filepath.Join(dir, "host-changes.lock"); !strings.Contains(err.Error(), want) {
		t.Errorf("second Open error %q does not name %s", err, want)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Undo(); err == nil {
		t.Error("Undo on a closed Host succeeded")
	}
	h2, err := vip.Open(dir)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	h2.Close()
}
