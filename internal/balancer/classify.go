package balancer

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/flow"
	"github.com/caplance/caplance/internal/model"
)

// classifier maps a packet's (destination VIP, protocol, destination port)
// to its service: a map from VIP and protocol to a span of port rules,
// sorted and disjoint, searched by halving. One map lookup of an integer key
// and a few comparisons, no allocation.
type classifier struct {
	spans map[uint64]span
	rules []rule
}

// span is rules[lo:hi].
type span struct{ lo, hi uint32 }

// rule gives destination ports first to last to svc.
type rule struct {
	first, last uint16
	svc         *service
}

// portless stands for the protocol of the packets that have no ports of
// their own (ICMP echo, keyed on its identifier): they go to the first
// service, by name, that has the VIP, so that pinging a VIP reaches a
// backend.
const portless = 0

// classKey packs a VIP, IPv4 as a big-endian integer, and a protocol.
func classKey(vip uint32, proto uint8) uint64 { return uint64(vip)<<8 | uint64(proto) }

// classify returns the service of the flow k, nil when none takes it. The
// raw sockets are IPv4, so k.Dst is IPv4-mapped.
func (c *classifier) classify(k *flow.Key) *service {
	proto, port := k.Proto, k.DstPort
	if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP {
		proto, port = portless, 0
	}
	sp, ok := c.spans[classKey(binary.BigEndian.Uint32(k.Dst[12:16]), proto)]
	if !ok {
		return nil
	}
	rules := c.rules[sp.lo:sp.hi]
	// The last rule that starts at or below port.
	lo, hi := 0, len(rules)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rules[m].first <= port {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 || port > rules[lo-1].last {
		return nil
	}
	return rules[lo-1].svc
}

// newClassifier builds the classifier of services, sorted by name, and
// fails when two of them (or one twice) would take the same VIP, protocol
// and port.
func newClassifier(services []*service) (classifier, error) {
	byKey := map[uint64][]rule{}
	for _, svc := range services {
		for _, v := range svc.VIPs {
			a := v.Addr.As4()
			vip := binary.BigEndian.Uint32(a[:])
			for _, p := range []struct {
				proto model.Protocols
				num   uint8
			}{{model.TCP, unix.IPPROTO_TCP}, {model.UDP, unix.IPPROTO_UDP}} {
				if svc.Protocols&p.proto == 0 {
					continue
				}
				k := classKey(vip, p.num)
				if v.Ports == nil {
					byKey[k] = append(byKey[k], rule{0, 65535, svc})
				}
				for _, r := range v.Ports {
					byKey[k] = append(byKey[k], rule{r.First, r.Last, svc})
				}
			}
			if k := classKey(vip, portless); byKey[k] == nil {
				byKey[k] = []rule{{0, 65535, svc}}
			}
		}
	}
	c := classifier{spans: make(map[uint64]span, len(byKey))}
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		rules := byKey[k]
		slices.SortFunc(rules, func(a, b rule) int { return cmp.Compare(a.first, b.first) })
		for i := 1; i < len(rules); i++ {
			if a, b := rules[i-1], rules[i]; b.first <= a.last {
				return classifier{}, overlapError(k, b.first, a.svc, b.svc)
			}
		}
		c.spans[k] = span{uint32(len(c.rules)), uint32(len(c.rules) + len(rules))}
		c.rules = append(c.rules, rules...)
	}
	return c, nil
}

func overlapError(k uint64, port uint16, a, b *service) error {
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], uint32(k>>8))
	proto := model.TCP
	if uint8(k) == unix.IPPROTO_UDP {
		proto = model.UDP
	}
	where := fmt.Sprintf("VIP %s %v port %d", netip.AddrFrom4(v), proto, port)
	if a == b {
		return fmt.Errorf("balancer: service %s takes %s twice", a.Name, where)
	}
	if a.Name > b.Name {
		a, b = b, a
	}
	return fmt.Errorf("balancer: services %s and %s both take %s", a.Name, b.Name, where)
}
