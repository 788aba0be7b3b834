package balancer

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/model"
)

var client = netip.MustParseAddr("10.0.0.1")

// udpPacket is a UDP datagram src:sport → dst:dport with 8 bytes of payload.
func udpPacket(src, dst netip.Addr, sport, dport uint16) []byte {
	pkt := clientUDP(sport, 8)
	copy(pkt[12:16], src.AsSlice())
	copy(pkt[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(pkt[22:24], dport)
	return pkt
}

// onVIP is a service on benchVIP's ports over UDP and TCP.
func onVIP(name string, hash model.Hash, ports ...uint16) model.Service {
	v := model.VIP{Addr: benchVIP}
	for _, p := range ports {
		v.Ports = append(v.Ports, model.PortRange{First: p, Last: p})
	}
	return model.Service{Name: name, VIPs: []model.VIP{v}, Protocols: model.TCP | model.UDP, Hash: hash, TableSize: 1009}
}

// backend is backend number i, at 127.0.0.(1+i), of service svc.
func backend(svc string, i int) model.Backend {
	return model.Backend{ID: uint32(i), Name: fmt.Sprintf("%s%d", svc, i), Service: svc,
		Address: netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i)}), Weight: 1}
}

// forwardUDP sends pkts and has the worker forward them (one worker, not
// running), and returns how many packets each backend got.
func (h *hotPath) forwardUDP(t *testing.T, pkts ...[]byte) map[string]int {
	t.Helper()
	before := h.b.Stats()
	for _, p := range pkts {
		h.out.Add(p, benchVIP.As4(), 0)
	}
	h.out.Flush(h.sender, func(_ int, err error) { t.Fatal(err) })
	for got := 0; got < len(pkts); {
		got += h.forwardBatch(t)
	}
	was := map[string]uint64{}
	for _, b := range before.Backends {
		was[b.Name] = b.Packets
	}
	got := map[string]int{}
	for _, a := range h.b.Stats().Backends {
		if a.Packets > was[a.Name] {
			got[a.Name] = int(a.Packets - was[a.Name])
		}
	}
	return got
}

// TestSetServicesRebuildsOnlyTheChangedService: a change to one service
// builds only its table; the other services are reused as they are.
func TestSetServicesRebuildsOnlyTheChangedService(t *testing.T) {
	h := newHotPath(t)
	// The services' backends interleave, as they do in a set sorted by name.
	set := model.Set{Services: []model.Service{onVIP("dns", model.FiveTuple, 53), onVIP("web", model.FiveTuple, 80)},
		Backends: []model.Backend{backend("dns", 1), backend("web", 3), backend("dns", 2), backend("web", 4)}}
	steps := []struct {
		what string
		// change changes set; rebuilt are the services whose table is
		// built anew, the others are reused as they are.
		change  func()
		rebuilt []string
	}{
		{"a web backend's weight", func() { set.Backends[1].Weight = 7 }, []string{"web"}},
		{"a web backend added", func() { set.Backends = append(set.Backends, backend("web", 5)) }, []string{"web"}},
		{"a service added", func() {
			set.Services = append(set.Services, onVIP("ntp", model.FiveTuple, 123))
			set.Backends = append(set.Backends, backend("ntp", 6))
		}, []string{"ntp"}},
		{"dns's hash", func() { set.Services[0].Hash = model.SourceIP }, nil},
		{"a service removed", func() { set.Services, set.Backends = set.Services[:2], set.Backends[:5] }, nil},
		{"a web backend removed", func() { set.Backends = slices.Delete(set.Backends, 1, 2) }, []string{"web"}},
	}
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	for _, step := range steps {
		before := h.b.snap.Load()
		step.change()
		if err := h.b.SetServices(set); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		after := h.b.snap.Load()
		var want, got []string
		for i, be := range set.Backends {
			want = append(want, be.Name)
			got = append(got, after.backends[i].Name)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: the snapshot's backends (-want +got):\n%s", step.what, diff)
		}
		for _, d := range set.Services {
			old, now := before.service(d.Name), after.service(d.Name)
			rebuilt := slices.Contains(step.rebuilt, d.Name)
			switch {
			case old == nil:
				if !rebuilt {
					t.Errorf("%s: %s is new but not in the test's list", step.what, d.Name)
				}
			case rebuilt:
				if old.table == now.table {
					t.Errorf("%s: the table of %s was not rebuilt", step.what, d.Name)
				}
			case old.table != now.table:
				t.Errorf("%s: the table of %s was rebuilt", step.what, d.Name)
			case old.Service.Equal(d) && old != now:
				t.Errorf("%s: %s did not change but was not reused as it was", step.what, d.Name)
			}
		}
	}
}

// TestSetServicesRefusesBadSets: a set the data path cannot forward by is
// refused with a clear error and changes nothing.
func TestSetServicesRefusesBadSets(t *testing.T) {
	h := newHotPath(t)
	good := func() model.Set {
		return model.Set{Services: []model.Service{onVIP("dns", model.FiveTuple, 53), onVIP("web", model.FiveTuple, 80)},
			Backends: []model.Backend{backend("dns", 1), backend("web", 2)}}
	}
	tests := []struct {
		name   string
		change func(*model.Set)
		want   string
	}{
		{"a backend of no service", func(s *model.Set) { s.Backends[1].Service = "www" },
			`balancer: backend web2: no service "www"`},
		{"two services of one name", func(s *model.Set) { s.Services[1].Name = "dns" },
			"balancer: two services named dns"},
		{"a service without a name", func(s *model.Set) { s.Services[0].Name = "" },
			"balancer: a service without a name"},
		{"an IPv4-mapped VIP", func(s *model.Set) { s.Services[0].VIPs[0].Addr = netip.MustParseAddr("::ffff:10.0.0.100") },
			"balancer: service dns: VIP ::ffff:10.0.0.100: not a plain IPv4 or IPv6 address"},
		{"a reversed port range", func(s *model.Set) { s.Services[0].VIPs[0].Ports[0] = model.PortRange{First: 60, Last: 50} },
			"balancer: service dns: VIP 10.0.0.100: port range 60-50 ends before it starts"},
		{"no protocol", func(s *model.Set) { s.Services[0].Protocols = 0 },
			"balancer: service dns: protocols protocols(0)"},
		{"an unknown hash", func(s *model.Set) { s.Services[0].Hash = 9 },
			"balancer: service dns: unknown hash(9)"},
		{"a table size that is not prime", func(s *model.Set) { s.Services[1].TableSize = 1000 },
			"balancer: service web: invalid table size 1000: want a prime from 101 to 16777213, such as 1009"},
		{"an overlap", func(s *model.Set) { s.Services[1].VIPs[0].Ports = nil },
			"balancer: services dns and web both take VIP 10.0.0.100 tcp port 53"},
		{"too many VIPs", func(s *model.Set) {
			for i := range MaxVIPs {
				s.Services[1].VIPs = append(s.Services[1].VIPs, model.VIP{Addr: netip.AddrFrom4([4]byte{9, 0, byte(i >> 8), byte(i)})})
			}
		}, "balancer: 1025 VIPs, at most 1024 are supported"},
		{"IPv6 VIPs spread too wide for the filter", func(s *model.Set) {
			for i := range 80 {
				s.Services[1].VIPs = append(s.Services[1].VIPs, model.VIP{Addr: netip.AddrFrom16([16]byte{0x20, byte(i), 15: 1})})
			}
		}, "balancer: the 80 IPv6 VIPs need a socket filter of 1140 instructions, at most 1061 fit (VIPs that share their first 96 bits cost one each, others up to 14)"},
	}
	if err := h.b.SetServices(good()); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := h.b.snap.Load()
			set := good()
			tt.change(&set)
			err := h.b.SetServices(set)
			if got := errText(err); got != tt.want {
				t.Errorf("error %q, want %q", got, tt.want)
			}
			if h.b.snap.Load() != before {
				t.Error("the refused set was installed")
			}
		})
	}
	if got := h.forwardUDP(t, udpPacket(client, benchVIP, 40000, 80)); got["web2"] != 1 {
		t.Errorf("after the refused sets a packet to web went to %v, want web2", got)
	}
}

// TestFlowsStayInTheirService: a change to one service never moves a flow
// of another; and a tracked flow whose port moves to another service goes to
// that service's backends, not to its old backend.
func TestFlowsStayInTheirService(t *testing.T) {
	h := newHotPath(t)
	set := model.Set{Services: []model.Service{onVIP("a", model.FiveTuple, 80), onVIP("b", model.FiveTuple, 443)},
		Backends: []model.Backend{backend("a", 1), backend("a", 2), backend("b", 3), backend("b", 4)}}
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	var flows [][]byte
	for i := range batchSize {
		flows = append(flows, udpPacket(client, benchVIP, uint16(30000+i), 80))
	}
	first := h.forwardUDP(t, flows...)
	if len(first) != 2 {
		t.Fatalf("a's flows went to %v, want both of a's backends", first)
	}
	// b changes every way it can: a's flows stay where they are.
	set.Backends = append(set.Backends[:2], backend("b", 5), backend("b", 6))
	set.Services[1].VIPs[0].Ports = append(set.Services[1].VIPs[0].Ports, model.PortRange{First: 8443, Last: 8443})
	set.Services = append(set.Services, onVIP("c", model.SourceIP, 53))
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, h.forwardUDP(t, flows...)); diff != "" {
		t.Errorf("a's flows after changes to b and c (-before +after):\n%s", diff)
	}
	// Port 80 moves to b: the tracked flows follow it to b's backends.
	set.Services[0].VIPs[0].Ports[0] = model.PortRange{First: 81, Last: 81}
	set.Services[1].VIPs[0].Ports[0] = model.PortRange{First: 80, Last: 80}
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	moved := h.forwardUDP(t, flows...)
	if moved["a1"] != 0 || moved["a2"] != 0 || moved["b5"]+moved["b6"] != batchSize {
		t.Errorf("after port 80 moved from a to b its flows went to %v, want b's backends only", moved)
	}
}

// TestHashes: source-ip sends every flow of a client to one backend and
// spreads clients; source-ip-port keeps a client's port on one backend
// whatever port of the service it reaches; 5-tuple spreads a client's ports.
func TestHashes(t *testing.T) {
	h := newHotPath(t)
	set := func(hash model.Hash) {
		t.Helper()
		if err := h.b.SetServices(model.Set{Services: []model.Service{onVIP("s", hash, 80, 81)},
			Backends: []model.Backend{backend("s", 1), backend("s", 2), backend("s", 3), backend("s", 4)}}); err != nil {
			t.Fatal(err)
		}
	}
	fromPorts := func(src netip.Addr, first uint16, dport uint16) [][]byte {
		var pkts [][]byte
		for i := range batchSize {
			pkts = append(pkts, udpPacket(src, benchVIP, first+uint16(i), dport))
		}
		return pkts
	}
	var clients [][]byte
	for i := range batchSize {
		clients = append(clients, udpPacket(netip.AddrFrom4([4]byte{10, 0, 1, byte(i)}), benchVIP, 40000, 80))
	}

	set(model.SourceIP)
	if got := h.forwardUDP(t, fromPorts(client, 10000, 80)...); len(got) != 1 {
		t.Errorf("source-ip: one client's %d source ports went to %v, want one backend", batchSize, got)
	}
	if got := h.forwardUDP(t, clients...); len(got) < 3 {
		t.Errorf("source-ip: %d clients went to %v, want at least 3 backends of 4", batchSize, got)
	}

	set(model.SourceIPPort)
	var samePort [][]byte
	for i := range batchSize {
		samePort = append(samePort, udpPacket(client, benchVIP, 20000, 80+uint16(i%2)))
	}
	if got := h.forwardUDP(t, samePort...); len(got) != 1 {
		t.Errorf("source-ip-port: one client port to two service ports went to %v, want one backend", got)
	}
	if got := h.forwardUDP(t, fromPorts(client, 21000, 80)...); len(got) < 3 {
		t.Errorf("source-ip-port: one client's %d source ports went to %v, want at least 3 backends of 4", batchSize, got)
	}

	set(model.FiveTuple)
	if got := h.forwardUDP(t, fromPorts(client, 22000, 80)...); len(got) < 3 {
		t.Errorf("5-tuple: one client's %d source ports went to %v, want at least 3 backends of 4", batchSize, got)
	}
}

// TestServiceStats: per-service counters count what each service forwards
// and drops, sum their backends' flows, and last while the service does.
func TestServiceStats(t *testing.T) {
	h := newHotPath(t)
	defer func(age time.Duration) { flowCountsMaxAge = age }(flowCountsMaxAge)
	flowCountsMaxAge = 0
	set := model.Set{Services: []model.Service{onVIP("empty", model.FiveTuple, 81), onVIP("web", model.FiveTuple, 80)},
		Backends: []model.Backend{backend("web", 1), backend("web", 2)}}
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	var toWeb, toEmpty [][]byte
	for i := range 10 {
		toWeb = append(toWeb, udpPacket(client, benchVIP, uint16(30000+i), 80))
		toEmpty = append(toEmpty, udpPacket(client, benchVIP, uint16(30000+i), 81))
	}
	h.forwardUDP(t, append(toWeb, toEmpty...)...)
	size := uint64(len(toWeb[0]))
	want := []ServiceStats{
		{Name: "empty", Drops: 10},
		{Name: "web", Packets: 10, Bytes: 10 * size, NewFlows: 10, ActiveFlows: 10},
	}
	st := h.b.Stats()
	if diff := cmp.Diff(want, st.Services); diff != "" {
		t.Errorf("service counters (-want +got):\n%s", diff)
	}
	if st.Drops["no_backend"] != 10 {
		t.Errorf("%d drops counted as no_backend, want 10", st.Drops["no_backend"])
	}
	for _, b := range st.Backends {
		if b.Service != "web" {
			t.Errorf("backend %s is of service %q, want web", b.Name, b.Service)
		}
	}

	// Changes that keep web keep its counters.
	set.Backends[0].Weight = 5
	set.Services = append(set.Services, onVIP("ntp", model.FiveTuple, 123))
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	if got := h.b.Stats().Services; len(got) != 3 || got[2].Name != "web" || got[2].Packets != 10 {
		t.Errorf("after a change of web's backends and another service: %+v, want web to keep its 10 packets", got)
	}
	// A service removed and added again starts from zero.
	set.Services, set.Backends = set.Services[:1], nil
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	set.Services = append(set.Services, onVIP("web", model.FiveTuple, 80))
	if err := h.b.SetServices(set); err != nil {
		t.Fatal(err)
	}
	if got := h.b.Stats().Services; len(got) != 2 || got[1] != (ServiceStats{Name: "web"}) {
		t.Errorf("web removed and added again: %+v, want its counters at zero", got)
	}
}

// TestSocketsTakeOnlyVIPs: the sockets take every local address, but their
// filters keep only the packets to the services' VIPs, none before the first
// SetServices, and follow the VIP set as it changes; a packet to another
// local address is never seen, not even counted. Two workers, running: the
// filters also split the VIPs' flows between them.
func TestSocketsTakeOnlyVIPs(t *testing.T) {
	h := newHotPathWorkers(t, 2)
	other, next := netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("10.0.0.101")
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{other, next} {
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- h.b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// send sends, in one sendmmsg, for each of 4 source ports a packet to
	// each of dsts in turn. Packets of one flow land on one worker in the
	// order sent, so once the last of them is counted the others would be.
	sport := uint16(1000)
	send := func(dsts ...netip.Addr) {
		t.Helper()
		for range 4 {
			for _, d := range dsts {
				h.out.Add(udpPacket(client, d, sport, 80), d.As4(), 0)
			}
			sport++
		}
		h.out.Flush(h.sender, func(_ int, err error) { t.Fatal(err) })
	}
	// expect waits until forwarded packets are, and then checks that as many
	// were received and none dropped.
	expect := func(what string, forwarded uint64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for h.b.Stats().Forwarded < forwarded {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d packets forwarded within 20 s, want %d", what, h.b.Stats().Forwarded, forwarded)
			}
			time.Sleep(10 * time.Millisecond)
		}
		st := h.b.Stats()
		drops := 0
		for _, n := range st.Drops {
			drops += int(n)
		}
		if st.Received != forwarded || st.Forwarded != forwarded || drops != 0 {
			t.Errorf("%s: %d received, %d forwarded, drops %v; want %d, %d and none", what, st.Received, st.Forwarded, st.Drops, forwarded, forwarded)
		}
	}
	web := func(vips ...netip.Addr) model.Set {
		s := model.Service{Name: "web", Protocols: model.UDP, TableSize: 1009}
		for _, v := range vips {
			s.VIPs = append(s.VIPs, model.VIP{Addr: v})
		}
		return model.Set{Services: []model.Service{s}, Backends: []model.Backend{backend("web", 1)}}
	}

	send(benchVIP, other) // before any service: taken by none
	if err := h.b.SetServices(web(benchVIP)); err != nil {
		t.Fatal(err)
	}
	sport = 1000 // the same flows: these come after those on each socket
	send(benchVIP)
	expect("packets to the VIP once a service has it", 4)
	send(other, benchVIP)
	expect("packets to another local address, then to the VIP", 8)

	// The VIP moves: benchVIP is no VIP any more, next is, behind 700
	// others (the filter's comparisons then span several runs).
	var vips []netip.Addr
	for i := range 700 {
		vips = append(vips, netip.AddrFrom4([4]byte{9, 0, byte(i >> 8), byte(i)}))
	}
	if err := h.b.SetServices(web(append(vips, next)...)); err != nil {
		t.Fatal(err)
	}
	send(benchVIP, next)
	expect("packets to the old VIP, then to the new one", 12)

	// A ping of the VIP (worker 0's ICMP socket) reaches web's backend.
	echo := clientPacket(unix.IPPROTO_ICMP, 0, 8)
	copy(echo[16:20], next.AsSlice())
	echo[20], echo[24], echo[25] = 8, 0x12, 0x34 // echo request, identifier 0x1234
	h.out.Add(echo, next.As4(), 0)
	h.out.Flush(h.sender, func(_ int, err error) { t.Fatal(err) })
	expect("an ICMP echo request to the VIP", 13)
	if st := h.b.Stats(); st.Services[0].Packets != 13 {
		t.Errorf("web forwarded %d packets, want 13", st.Services[0].Packets)
	}
}

// BenchmarkSetServicesOneChange: SetServices at 4000 backends in one
// service, changing one backend's weight each time: what the registry's
// BenchmarkChange costs in the data path (one Maglev build, M = 65537, and
// little else).
func BenchmarkSetServicesOneChange(b *testing.B) {
	h := newHotPath(b)
	var bes []model.Backend
	for i := range 4000 {
		bes = append(bes, model.Backend{ID: uint32(i + 1), Name: fmt.Sprintf("be%04d", i), Address: netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), Weight: 1})
	}
	all := oneService(65537, nil, bes...)
	bes = all.Backends
	set := func() error { return h.b.SetServices(all) }
	if err := set(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		bes[7].Weight = 3 - bes[7].Weight
		if err := set(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMaxVIPsFit: the filter for MaxVIPs VIPs fits the socket option memory
// of a kernel with the smaller default limit (net.core.optmem_max 20480,
// Debian 12's 6.1; 6.9 and later allow 131072), and replaces an equally
// large one, which stays charged to the socket while it does. Below that,
// the change is refused, says why, and changes nothing.
func TestMaxVIPsFit(t *testing.T) {
	h := newHotPathWorkers(t, 2)
	optmem := func(limit string) {
		t.Helper()
		if err := os.WriteFile("/proc/sys/net/core/optmem_max", []byte(limit), 0); err != nil {
			t.Fatal(err)
		}
	}
	// many has MaxVIPs VIPs, v6 of them IPv6 sharing their first 96 bits.
	many := func(second byte, v6 int) model.Set {
		s := model.Service{Name: "many", Protocols: model.TCP | model.UDP, TableSize: 1009}
		for i := range MaxVIPs - v6 {
			s.VIPs = append(s.VIPs, model.VIP{Addr: netip.AddrFrom4([4]byte{9, second, byte(i >> 8), byte(i)})})
		}
		for i := range v6 {
			s.VIPs = append(s.VIPs, model.VIP{Addr: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 4: second, 14: byte(i >> 8), 15: byte(i)})})
		}
		return model.Set{Services: []model.Service{s}}
	}
	var largest []netip.Addr
	for _, v := range many(0, MaxVIPs).Services[0].VIPs {
		largest = append(largest, v.Addr)
	}
	if n := len(vipFilter6(largest, nil)); n != maxFilter6 {
		t.Fatalf("the filter of %d IPv6 VIPs sharing their first 96 bits has %d instructions, maxFilter6 is %d", MaxVIPs, n, maxFilter6)
	}
	optmem("20480")
	// The largest IPv6 filter replacing another, then the largest IPv4
	// filter replacing another.
	for i, v6 := range []int{MaxVIPs, MaxVIPs, 0, 0} {
		if err := h.b.SetServices(many(byte(i), v6)); err != nil {
			t.Fatalf("%d VIPs, %d of them IPv6 (set %d): %v", MaxVIPs, v6, i+1, err)
		}
	}
	optmem("12000")
	before := h.b.snap.Load()
	err := h.b.SetServices(many(4, 0))
	if want := "balancer: BPF filter for 1024 VIPs on the raw tcp socket: cannot allocate memory (a socket's filter counts against net.core.optmem_max)"; errText(err) != want {
		t.Errorf("error %q, want %q", errText(err), want)
	}
	if h.b.snap.Load() != before {
		t.Error("the refused set was installed")
	}
}
