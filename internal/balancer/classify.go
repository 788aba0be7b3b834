package balancer

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/flow"
	"github.com/caplance/caplance/internal/model"
)

// classifier maps a packet's (destination VIP, protocol, destination port)
// to its service: an open-addressing hash table from VIP and protocol to a
// span of port rules, sorted and disjoint, searched by halving. A multiply
// and a probe or two, then a few comparisons; no allocation. (A Go map in its
// place took three times as long.) IPv4 and IPv6 VIPs share the table: the
// key is the full 128-bit address, IPv4 in its IPv4-mapped form, as
// flow.Key has it.
type classifier struct {
	// slots has a power-of-two length, at most half full; protocol 0 marks
	// an empty slot (no key has it: no classified protocol is 0).
	slots []slot
	shift uint8 // 64 - log2(len(slots))
	rules []rule
}

// classKey is a VIP, as the two big-endian halves of its 16-byte form,
// and a protocol.
type classKey struct {
	hi, lo uint64
	proto  uint8
}

// slot gives the rules of one VIP and protocol: rules[lo:hi].
type slot struct {
	key    classKey
	lo, hi uint32
}

// rule gives destination ports first to last to svc.
type rule struct {
	first, last uint16
	svc         *service
}

// portless stands for the protocol of the packets that have no ports of
// their own (ICMP echo, keyed on its identifier): they go to the first
// service, by name, that has the VIP, so that pinging a VIP reaches a
// backend. 255 is IANA's reserved protocol number, which no packet has.
const portless = 255

// keyOf is the key of VIP addr (16-byte form) and protocol proto.
func keyOf(addr *[16]byte, proto uint8) classKey {
	return classKey{binary.BigEndian.Uint64(addr[:8]), binary.BigEndian.Uint64(addr[8:]), proto}
}

// addr is the VIP of k.
func (k classKey) addr() netip.Addr {
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], k.hi)
	binary.BigEndian.PutUint64(a[8:], k.lo)
	return netip.AddrFrom16(a).Unmap()
}

// home is the slot where key's probe starts (Fibonacci hashing of the
// halves mixed; an IPv4 VIP's hi is the same for all, its lo differs).
func (c *classifier) home(k classKey) uint64 {
	return ((k.hi*0xff51afd7ed558ccd ^ k.lo ^ uint64(k.proto)) * 0x9e3779b97f4a7c15) >> (c.shift & 63)
}

// classify returns the service of the flow k, nil when none takes it.
func (c *classifier) classify(k *flow.Key) *service {
	proto, port := k.Proto, k.DstPort
	if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP {
		proto, port = portless, 0
	}
	key := keyOf(&k.Dst, proto)
	mask := uint64(len(c.slots) - 1)
	for i := c.home(key); ; i++ {
		s := &c.slots[i&mask]
		if s.key == key {
			return search(c.rules[s.lo:s.hi], port)
		}
		if s.key.proto == 0 {
			return nil
		}
	}
}

// search returns the service of the rule that takes port, nil when none
// does; rules are sorted and disjoint, and there is at least one.
func search(rules []rule, port uint16) *service {
	// Halve towards the last rule that starts at or below port.
	base, n := 0, len(rules)
	for n > 1 {
		half := n / 2
		if rules[base+half].first <= port {
			base += half
		}
		n -= half
	}
	if r := &rules[base]; r.first <= port && port <= r.last {
		return r.svc
	}
	return nil
}

// newClassifier builds the classifier of services, sorted by name, and
// fails when two of them (or one twice) would take the same VIP, protocol
// and port.
func newClassifier(services []*service) (classifier, error) {
	byKey := map[classKey][]rule{}
	for _, svc := range services {
		for _, v := range svc.VIPs {
			vip := v.Addr.As16()
			for _, p := range []struct {
				proto model.Protocols
				num   uint8
			}{{model.TCP, unix.IPPROTO_TCP}, {model.UDP, unix.IPPROTO_UDP}} {
				if svc.Protocols&p.proto == 0 {
					continue
				}
				k := keyOf(&vip, p.num)
				if v.Ports == nil {
					byKey[k] = append(byKey[k], rule{0, 65535, svc})
				}
				for _, r := range v.Ports {
					byKey[k] = append(byKey[k], rule{r.First, r.Last, svc})
				}
			}
			if k := keyOf(&vip, portless); byKey[k] == nil {
				byKey[k] = []rule{{0, 65535, svc}}
			}
		}
	}
	size := 2
	for size < 2*len(byKey) {
		size *= 2
	}
	c := classifier{slots: make([]slot, size), shift: uint8(64 - bits.TrailingZeros(uint(size)))}
	for _, k := range slices.SortedFunc(maps.Keys(byKey), compareKeys) {
		rules := byKey[k]
		slices.SortFunc(rules, func(a, b rule) int { return cmp.Compare(a.first, b.first) })
		for i := 1; i < len(rules); i++ {
			if a, b := rules[i-1], rules[i]; b.first <= a.last {
				return classifier{}, overlapError(k, b.first, a.svc, b.svc)
			}
		}
		i := c.home(k)
		for c.slots[i&uint64(size-1)].key.proto != 0 {
			i++
		}
		c.slots[i&uint64(size-1)] = slot{key: k, lo: uint32(len(c.rules)), hi: uint32(len(c.rules) + len(rules))}
		c.rules = append(c.rules, rules...)
	}
	return c, nil
}

// compareKeys orders keys, so that the table is built alike every time.
func compareKeys(a, b classKey) int {
	return cmp.Or(cmp.Compare(a.hi, b.hi), cmp.Compare(a.lo, b.lo), cmp.Compare(a.proto, b.proto))
}

func overlapError(k classKey, port uint16, a, b *service) error {
	proto := model.TCP
	if k.proto == unix.IPPROTO_UDP {
		proto = model.UDP
	}
	where := fmt.Sprintf("VIP %s %v port %d", k.addr(), proto, port)
	if a == b {
		return fmt.Errorf("balancer: service %s takes %s twice", a.Name, where)
	}
	if a.Name > b.Name {
		a, b = b, a
	}
	return fmt.Errorf("balancer: services %s and %s both take %s", a.Name, b.Name, where)
}
