package nft_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/nft"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// chainView and tableView are what the kernel reports about the table.
type chainView struct {
	Type     nftables.ChainType
	Hook     uint32
	Priority int32
	Policy   nftables.ChainPolicy
	Rules    []string // comments, in order
}

type tableView struct {
	Chains map[string]chainView
	Sets   map[string][]string // elements as nft prints them, sorted
}

// view lists table inet caplance in ns through a connection of its own;
// ok is false if there is no such table.
func view(t *testing.T, ns netns.NsHandle) (v tableView, ok bool) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	i := slices.IndexFunc(tables, func(tb *nftables.Table) bool { return tb.Name == nft.TableName })
	if i < 0 {
		return tableView{}, false
	}
	table := tables[i]

	v = tableView{Chains: map[string]chainView{}, Sets: map[string][]string{}}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != nft.TableName {
			continue
		}
		cv := chainView{Type: ch.Type}
		if ch.Hooknum != nil {
			cv.Hook = uint32(*ch.Hooknum)
		}
		if ch.Priority != nil {
			cv.Priority = int32(*ch.Priority)
		}
		if ch.Policy != nil {
			cv.Policy = *ch.Policy
		}
		rules, err := c.GetRules(table, ch)
		if err != nil {
			t.Fatalf("rules of %s: %v", ch.Name, err)
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			cv.Rules = append(cv.Rules, comment)
		}
		v.Chains[ch.Name] = cv
	}

	sets, err := c.GetSets(table)
	if err != nil {
		t.Fatalf("list sets: %v", err)
	}
	for _, s := range sets {
		els, err := c.GetSetElements(s)
		if err != nil {
			t.Fatalf("elements of %s: %v", s.Name, err)
		}
		elements := []string{}
		for _, e := range els {
			elements = append(elements, element(t, s, e.Key))
		}
		slices.Sort(elements)
		v.Sets[s.Name] = elements
	}
	return v, true
}

// element formats a set element's key as nft prints it: an address, or an
// address and a port ("10.0.0.1 . 80"), an interface name or a protocol
// number.
func element(t *testing.T, s *nftables.Set, key []byte) string {
	t.Helper()
	switch s.KeyType.Name {
	case nftables.TypeIPAddr.Name:
		if len(key) == 4 {
			return netip.AddrFrom4([4]byte(key)).String()
		}
	case nftables.TypeIP6Addr.Name:
		if len(key) == 16 {
			return netip.AddrFrom16([16]byte(key)).String()
		}
	case nftables.TypeInetProto.Name:
		if len(key) == 1 {
			return fmt.Sprint(key[0])
		}
	case nftables.TypeIFName.Name:
		if len(key) == unix.IFNAMSIZ {
			return string(bytes.TrimRight(key, "\x00"))
		}
	case nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService).Name:
		if len(key) == 8 {
			return fmt.Sprintf("%s . %d", netip.AddrFrom4([4]byte(key)), binary.BigEndian.Uint16(key[4:]))
		}
	case nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService).Name:
		if len(key) == 20 {
			return fmt.Sprintf("%s . %d", netip.AddrFrom16([16]byte(key)), binary.BigEndian.Uint16(key[16:]))
		}
	}
	t.Fatalf("set %s (%s): unexpected element %x", s.Name, s.KeyType.Name, key)
	return ""
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

var (
	fullRules = nft.Rules{
		SilenceVIPs: addrs("10.99.0.101", "2001:db8::100", "10.99.0.100", "10.99.0.101"), // unsorted, duplicate
		Forward: []nft.Forward{
			{VIP: netip.MustParseAddr("10.99.0.100"), Protocols: model.TCP | model.UDP},
			{VIP: netip.MustParseAddr("2001:db8::100"), Protocols: model.TCP},
			{VIP: netip.MustParseAddr("2001:db8::100"), Protocols: model.UDP, Ports: []model.PortRange{{First: 53, Last: 53}}},
			{VIP: netip.MustParseAddr("10.99.0.101"), Protocols: model.TCP, Ports: []model.PortRange{{First: 443, Last: 443}, {First: 80, Last: 81}}},
			{VIP: netip.MustParseAddr("10.99.0.101"), Protocols: model.TCP | model.UDP, Ports: []model.PortRange{{First: 81, Last: 81}}}, // a duplicate
		},
		Tunnel: &nft.Tunnel{
			Port:      5555,
			Balancers: addrs("10.99.0.2", "2001:db8::2", "10.99.0.3"),
			Devices:   []string{"caplance0", "caplance1"},
			VIPs:      addrs("10.99.0.100"),
		},
	}
	outputChain = chainView{
		Type:     nftables.ChainTypeFilter,
		Hook:     unix.NF_INET_LOCAL_OUT,
		Priority: 0,
		Policy:   nftables.ChainPolicyAccept,
		Rules:    []string{nft.RuleSilenceTCPReset, nft.RuleSilencePortUnreachable, nft.RuleSilenceEchoReply},
	}
	fullView = tableView{
		Chains: map[string]chainView{
			"output": {
				Type:     nftables.ChainTypeFilter,
				Hook:     unix.NF_INET_LOCAL_OUT,
				Priority: 0,
				Policy:   nftables.ChainPolicyAccept,
				Rules: []string{nft.RuleSilenceTCPReset, nft.RuleSilencePortUnreachable, nft.RuleSilenceEchoReply,
					nft.RuleSilenceTCPReset6, nft.RuleSilencePortUnreachable6, nft.RuleSilenceEchoReply6},
			},
			"input": {
				Type:     nftables.ChainTypeFilter,
				Hook:     unix.NF_INET_LOCAL_IN,
				Priority: 0,
				Policy:   nftables.ChainPolicyAccept,
				Rules:    []string{nft.RuleTunnelRaw, nft.RuleTunnelForeignSource, nft.RuleTunnelForeignSource6},
			},
			"prerouting": {
				Type:     nftables.ChainTypeFilter,
				Hook:     unix.NF_INET_PRE_ROUTING,
				Priority: 0,
				Policy:   nftables.ChainPolicyAccept,
				Rules: []string{nft.RuleForwardTCP, nft.RuleForwardTCPPorts, nft.RuleForwardUDP, nft.RuleForwardUDPPorts,
					nft.RuleForwardTCP6, nft.RuleForwardUDPPorts6,
					nft.RuleTunnelForeignDestination, nft.RuleTunnelSourceUnspecified, nft.RuleTunnelSourceLoopback,
					nft.RuleTunnelSourceMulticast, nft.RuleTunnelSourceBroadcast, nft.RuleTunnelSourceReserved,
					nft.RuleTunnelSourceLocal, nft.RuleTunnelForeignDestination6},
			},
		},
		Sets: map[string][]string{
			"silence_vips":           {"10.99.0.100", "10.99.0.101"},
			"silence_vips6":          {"2001:db8::100"},
			"forward_tcp_vips6":      {"2001:db8::100"},
			"forward_udp_vip_ports6": {"2001:db8::100 . 53"},
			"forward_tcp_vips":       {"10.99.0.100"},
			"forward_udp_vips":       {"10.99.0.100"},
			"forward_tcp_vip_ports":  {"10.99.0.101 . 443", "10.99.0.101 . 80", "10.99.0.101 . 81"},
			"forward_udp_vip_ports":  {"10.99.0.101 . 81"},
			"balancers":              {"10.99.0.2", "10.99.0.3"},
			"tunnel_vips":            {"10.99.0.100"},
			"balancers6":             {"2001:db8::2"},
			"tunnel_vips6":           {},
			"tunnel_devices":         {"caplance0", "caplance1"},
			"tunnel_protos":          {"4", "41"},
		},
	}
)

func TestStructure(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ns := newNetNS(t)

	// Someone else's table, which must survive everything below.
	other := &nftables.Table{Name: "other", Family: nftables.TableFamilyINet}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(other)
	c.AddChain(&nftables.Chain{Name: "output", Table: other, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	if err := c.Flush(); err != nil {
		t.Fatalf("add table inet other: %v", err)
	}
	otherExists := func() bool {
		t.Helper()
		_, err := c.ListTableOfFamily("other", nftables.TableFamilyINet)
		return err == nil
	}

	if existed, err := nft.Remove(int(ns)); err != nil || existed {
		t.Fatalf("Remove before Apply = %v, %v; want false, nil", existed, err)
	}

	want := func(step string, want tableView) {
		t.Helper()
		got, ok := view(t, ns)
		if !ok {
			t.Fatalf("%s: table inet %s missing", step, nft.TableName)
		}
		if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
			t.Errorf("%s: table (-want +got):\n%s", step, diff)
		}
	}

	for _, step := range []string{"first Apply", "second Apply"} {
		if err := nft.Apply(int(ns), fullRules); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		want(step, fullView)
	}

	ctrs, err := nft.Counters(int(ns))
	if err != nil {
		t.Fatalf("Counters: %v", err)
	}
	wantCtrs := map[string]nft.Counter{
		nft.RuleSilenceTCPReset:           {},
		nft.RuleSilencePortUnreachable:    {},
		nft.RuleSilenceEchoReply:          {},
		nft.RuleSilenceTCPReset6:          {},
		nft.RuleSilencePortUnreachable6:   {},
		nft.RuleSilenceEchoReply6:         {},
		nft.RuleForwardTCP6:               {},
		nft.RuleForwardUDPPorts6:          {},
		nft.RuleForwardTCP:                {},
		nft.RuleForwardUDP:                {},
		nft.RuleForwardTCPPorts:           {},
		nft.RuleForwardUDPPorts:           {},
		nft.RuleTunnelForeignSource:       {},
		nft.RuleTunnelForeignDestination:  {},
		nft.RuleTunnelSourceUnspecified:   {},
		nft.RuleTunnelSourceLoopback:      {},
		nft.RuleTunnelSourceMulticast:     {},
		nft.RuleTunnelSourceBroadcast:     {},
		nft.RuleTunnelSourceReserved:      {},
		nft.RuleTunnelSourceLocal:         {},
		nft.RuleTunnelForeignSource6:      {},
		nft.RuleTunnelRaw:                 {},
		nft.RuleTunnelForeignDestination6: {},
	}
	if diff := cmp.Diff(wantCtrs, ctrs); diff != "" {
		t.Errorf("Counters (-want +got):\n%s", diff)
	}

	// Replacing drops what the new rules no longer ask for.
	if err := nft.Apply(int(ns), nft.Rules{SilenceVIPs: addrs("10.99.0.102")}); err != nil {
		t.Fatalf("Apply silence only: %v", err)
	}
	want("Apply silence only", tableView{
		Chains: map[string]chainView{"output": outputChain},
		Sets:   map[string][]string{"silence_vips": {"10.99.0.102"}},
	})

	// A rejected Apply leaves the table as it was.
	if err := nft.Apply(int(ns), nft.Rules{}); !errors.Is(err, nft.ErrNoRules) {
		t.Errorf("Apply(Rules{}) = %v, want ErrNoRules", err)
	}
	want("rejected Apply", tableView{
		Chains: map[string]chainView{"output": outputChain},
		Sets:   map[string][]string{"silence_vips": {"10.99.0.102"}},
	})

	for _, wantExisted := range []bool{true, false} {
		existed, err := nft.Remove(int(ns))
		if err != nil || existed != wantExisted {
			t.Fatalf("Remove = %v, %v; want %v, nil", existed, err, wantExisted)
		}
		if _, ok := view(t, ns); ok {
			t.Fatalf("table inet %s still there after Remove", nft.TableName)
		}
	}
	if _, err := nft.Counters(int(ns)); !errors.Is(err, nft.ErrNoTable) {
		t.Errorf("Counters without a table = %v, want ErrNoTable", err)
	}
	if !otherExists() {
		t.Error("table inet other is gone")
	}
}

// TestCurrentNetNS checks that CurrentNetNS works in the calling thread's
// namespace.
func TestCurrentNetNS(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ns := newNetNS(t)

	mustInNetNS(t, ns, func() (any, error) { return nil, nft.Apply(nft.CurrentNetNS, fullRules) })
	want := func(step string, want bool) {
		t.Helper()
		if _, ok := view(t, ns); ok != want {
			t.Fatalf("%s: table in the test namespace = %v, want %v", step, ok, want)
		}
	}
	want("Apply", true)
	existed := mustInNetNS(t, ns, func() (bool, error) { return nft.Remove(-1) })
	if !existed {
		t.Error("Remove(-1) = false, want true")
	}
	want("Remove", false)
}
