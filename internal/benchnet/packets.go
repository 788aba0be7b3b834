package benchnet

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The benchmark's load: Flows UDP flows (source ports SrcPort…) to DstPort,
// datagrams of Payload bytes.
const (
	Flows   = 256
	Payload = 64
	SrcPort = 20000
	DstPort = 9000
)

// Phase says which part of a run a datagram belongs to; it is the byte
// after the magic in every payload.
type Phase byte

const (
	// Warm datagrams are sent before the measurement and not counted.
	Warm Phase = 1
	// Measured datagrams are the ones counted.
	Measured Phase = 2
	// Stale is what a check says of a well-formed datagram of an earlier
	// run: one that a forwarder still had queued after that run's drain.
	Stale Phase = 3
)

// magic starts every payload; the next byte is the phase, the one after it
// the flow's index, then the run's number.
var magic = []byte("caplbnch")

// Load is one run's traffic from Src to Dst: for each phase, one IP packet
// per flow (Packets) and the same in an Ethernet frame from SrcMAC to DstMAC
// (Frames), which is what the generator sends.
type Load struct {
	Src, Dst       netip.Addr
	SrcMAC, DstMAC net.HardwareAddr
	Run            byte
	// Packets and Frames are indexed by phase (Warm, Measured), then flow.
	Packets, Frames [3][][]byte
}

// NewLoad builds the warm-up and measured frames of run run from src to dst
// (same family), IPv4 or IPv6, with valid checksums: nothing on the way
// fills them in (the frames leave from a packet socket).
func NewLoad(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, run byte) (*Load, error) {
	if src.Is4() != dst.Is4() {
		return nil, fmt.Errorf("load from %v to %v: mixed address families", src, dst)
	}
	l := &Load{Src: src, Dst: dst, SrcMAC: srcMAC, DstMAC: dstMAC, Run: run}
	for _, ph := range []Phase{Warm, Measured} {
		for f := range Flows {
			frame, err := l.frame(ph, f)
			if err != nil {
				return nil, err
			}
			l.Frames[ph] = append(l.Frames[ph], frame)
			l.Packets[ph] = append(l.Packets[ph], frame[14:])
		}
	}
	return l, nil
}

// frame builds phase ph's frame of flow f.
func (l *Load) frame(ph Phase, f int) ([]byte, error) {
	payload := make([]byte, Payload)
	copy(payload, magic)
	payload[len(magic)] = byte(ph)
	payload[len(magic)+1] = byte(f)
	payload[len(magic)+2] = l.Run
	eth := &layers.Ethernet{SrcMAC: l.SrcMAC, DstMAC: l.DstMAC}
	udp := &layers.UDP{SrcPort: layers.UDPPort(SrcPort + f), DstPort: DstPort}
	var ip gopacket.SerializableLayer
	if l.Dst.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: l.Src.AsSlice(), DstIP: l.Dst.AsSlice()}
		if err := udp.SetNetworkLayerForChecksum(ip4); err != nil {
			return nil, err
		}
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: l.Src.AsSlice(), DstIP: l.Dst.AsSlice()}
		if err := udp.SetNetworkLayerForChecksum(ip6); err != nil {
			return nil, err
		}
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		return nil, fmt.Errorf("building a frame from %v to %v: %w", l.Src, l.Dst, err)
	}
	return buf.Bytes(), nil
}

// CheckPayload returns the phase of a datagram's payload p that arrived from
// source port sport: Stale if it is of another run, 0 if it is not one of
// the load's.
func (l *Load) CheckPayload(p []byte, sport uint16) Phase {
	ph, f, ok := l.parse(p, sport)
	switch {
	case !ok:
		return 0
	case p[len(magic)+2] != l.Run:
		return Stale
	}
	if !bytes.Equal(p, l.Packets[ph][f][len(l.Packets[ph][f])-Payload:]) {
		return 0
	}
	return ph
}

// CheckPacket returns the phase of an IP packet p that a forwarder
// delivered unchanged (caplanced's inner packet): Stale if it is of another
// run, 0 if it is not byte for byte one the load sent. Comparing with what
// was sent checks the headers and checksums without computing any.
func (l *Load) CheckPacket(p []byte) Phase {
	hl := 20
	if l.Dst.Is6() {
		hl = 40
	}
	if len(p) != hl+8+Payload {
		return 0
	}
	u := p[hl:]
	ph, f, ok := l.parse(u[8:], uint16(u[0])<<8|uint16(u[1]))
	switch {
	case !ok:
		return 0
	case u[8+len(magic)+2] != l.Run:
		if bytes.Equal(p[:hl], l.Packets[ph][f][:hl]) {
			return Stale
		}
		return 0
	case !bytes.Equal(p, l.Packets[ph][f]):
		return 0
	}
	return ph
}

// parse reads a payload's phase and flow, checking the magic and that the
// flow matches the source port.
func (l *Load) parse(p []byte, sport uint16) (Phase, int, bool) {
	m := len(magic)
	if len(p) != Payload || !bytes.Equal(p[:m], magic) {
		return 0, 0, false
	}
	ph, f := Phase(p[m]), int(p[m+1])
	if (ph != Warm && ph != Measured) || int(sport)-SrcPort != f {
		return 0, 0, false
	}
	return ph, f, true
}
