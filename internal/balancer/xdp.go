package balancer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/nexthop"
	"github.com/caplance/caplance/internal/xdp"
)

// XDP configures the AF_XDP data path (Config.XDP): the XDP program on one
// interface hands the packets to the VIPs that arrive there to one AF_XDP
// socket per receive queue, before the host's stack sees them; each worker
// owns the socket of its queue, runs the same decision as on the raw path
// (process) on the frames in place, and transmits them on that socket with
// the Ethernet header of the backend's next hop. What it cannot send that
// way goes out through its raw sockets (viaRawReason). The raw sockets
// stay open and filtered as in raw mode: what the program leaves to the
// stack (fragments, IPv6 extension headers, ICMP) and what arrives on other
// interfaces reaches them as before, and nothing reaches both, since a
// redirected frame never reaches the stack.
type XDP struct {
	// Interface is where the program attaches; its receive queue count is
	// the worker count (Config.Workers is ignored).
	Interface string
}

// viaRawReason says why the XDP path handed a packet to the raw path.
type viaRawReason int

const (
	// viaRawNoNextHop: the backend's next hop is not resolved, or the
	// route to it leaves by another interface (nexthop.Table.Lookup).
	viaRawNoNextHop viaRawReason = iota
	// viaRawTooBig: the encapsulated packet exceeds the route's MTU; the
	// raw path fragments it or answers the client (tooBig).
	viaRawTooBig
	numViaRawReasons
)

func (r viaRawReason) String() string {
	return [...]string{"no_next_hop", "too_big"}[r]
}

// ethLen is the length of an untagged Ethernet header.
const ethLen = 14

// xdpPath is the balancer's part of the AF_XDP data path: the program,
// how it is attached, and the backends' next hops. The sockets are the
// workers'.
type xdpPath struct {
	iface    string
	prog     *xdp.Program
	mode     xdp.Mode
	hops     *nexthop.Table
	zeroCopy bool
}

// rxQueues returns the index and receive queue count of the interface
// name: the driver's channels (ETHTOOL_GCHANNELS: its receive and combined
// queues, what an AF_XDP socket may bind to), or 1 for a driver that does
// not tell. Not /sys/class/net/NAME/queues: sysfs shows the namespace it
// was mounted in, not the caller's; nor netlink's IFLA_NUM_RX_QUEUES, the
// queues allocated rather than those in use (2 on a veth that uses 1).
func rxQueues(name string) (ifindex, queues int, err error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return 0, 0, fmt.Errorf("balancer: xdp: interface %.16q: %w", name, err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("balancer: xdp: %w", err)
	}
	defer unix.Close(fd)
	// struct ethtool_channels.
	var ch struct {
		cmd                                         uint32
		maxRx, maxTx, maxOther, maxCombined         uint32
		rxCount, txCount, otherCount, combinedCount uint32
	}
	ch.cmd = unix.ETHTOOL_GCHANNELS
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:unix.IFNAMSIZ-1], name)
	ifr.data = uintptr(unsafe.Pointer(&ch))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&ch)
	if errno != 0 {
		err = errno
	}
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return link.Attrs().Index, 1, nil
	case err != nil:
		return 0, 0, fmt.Errorf("balancer: xdp: interface %.16q: read its queues (ETHTOOL_GCHANNELS): %w", name, err)
	}
	return link.Attrs().Index, min(max(int(ch.rxCount+ch.combinedCount), 1), maxXDPQueues), nil
}

// maxXDPQueues bounds the AF_XDP workers, as config.MaxWorkers bounds the
// raw ones (the unit's LimitMEMLOCK covers that many UMEMs); the packets
// of higher queues pass to the stack and the raw path.
const maxXDPQueues = 64

// openXDP loads and attaches the program on ifindex, opens and registers
// a socket per worker (worker i on queue i) and starts the next hop table.
// On an error it leaves nothing behind; an error that says the kernel or
// the driver cannot do it wraps xdp.ErrUnsupported.
func (b *Balancer) openXDP(iface string, ifindex int) (err error) {
	x := &xdpPath{iface: iface, zeroCopy: true}
	defer func() {
		if err != nil {
			x.close()
			for _, w := range b.workers {
				w.closeXDP()
			}
		}
	}()
	if x.prog, err = xdp.Load(xdp.Options{MaxVIPs: MaxVIPs, MaxQueues: len(b.workers)}); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	if x.mode, err = x.prog.Attach(ifindex); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	for _, w := range b.workers {
		sock, err := xdp.NewSocket(xdp.SocketConfig{Ifindex: ifindex, Queue: w.index})
		if err != nil {
			return fmt.Errorf("balancer: %w", err)
		}
		w.xq = newXDPQueue(w, sock)
		x.zeroCopy = x.zeroCopy && sock.ZeroCopy()
		if err := x.prog.Register(sock); err != nil {
			return fmt.Errorf("balancer: %w", err)
		}
	}
	if x.hops, err = nexthop.New(ifindex, nexthop.Options{Logger: b.log}); err != nil {
		return fmt.Errorf("balancer: xdp: %w", err)
	}
	for _, w := range b.workers {
		w.xq.hops = x.hops
	}
	b.xdp = x
	return nil
}

// close detaches the program and releases it and the next hop table.
func (x *xdpPath) close() {
	if x.hops != nil {
		x.hops.Close()
	}
	if x.prog != nil {
		x.prog.Close()
	}
}

// follow makes the program take vips and the next hop table follow the
// backends of s.
func (x *xdpPath) follow(s *snapshot) error {
	if err := x.prog.SetVIPs(s.vips); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	dsts := make([]netip.Addr, 0, len(s.backends))
	for _, t := range s.backends {
		dsts = append(dsts, t.Address)
	}
	if err := x.hops.SetDestinations(dsts); err != nil {
		return fmt.Errorf("balancer: %w", err)
	}
	return nil
}

// Dataplane says how packets reach the workers: "xdp (native)" or
// "xdp (generic)" on the AF_XDP path, with ", zero-copy" when the
// driver runs its sockets so, or "raw".
func (b *Balancer) Dataplane() string {
	if b.xdp == nil {
		return "raw"
	}
	s := "xdp (" + b.xdp.mode.String()
	if b.xdp.zeroCopy {
		s += ", zero-copy"
	}
	return s + ")"
}

// XDPInterface is the interface of the AF_XDP path, "" in raw mode.
func (b *Balancer) XDPInterface() string {
	if b.xdp == nil {
		return ""
	}
	return b.xdp.iface
}

// xdpQueue is a worker's AF_XDP socket and the frames it owns. It is the
// worker loop's rawio.Source.
type xdpQueue struct {
	w    *worker
	sock *xdp.Socket
	hops *nexthop.Table
	rx   [xdp.DefaultBatch]xdp.Desc
	tx   [xdp.DefaultBatch]xdp.Desc
	// txSvc is the service of each frame in tx, whose drops count a
	// failed transmission.
	txSvc [xdp.DefaultBatch]*serviceCounters
	done  [xdp.DefaultBatch]uint64
	// free holds the frames the worker owns and has not given to the fill
	// ring; its capacity is every frame of the UMEM, so it never grows.
	free []uint64
	// inFlight counts the frames on the TX ring not yet completed.
	inFlight int
}

func newXDPQueue(w *worker, sock *xdp.Socket) *xdpQueue {
	q := &xdpQueue{w: w, sock: sock, free: make([]uint64, 0, sock.Frames())}
	// NewSocket gave the fill ring what it holds; the rest start here.
	for i := xdp.DefaultRingSize; i < sock.Frames(); i++ {
		q.free = append(q.free, sock.FrameAddr(i))
	}
	return q
}

// FD is the socket's, for the loop's poll.
func (q *xdpQueue) FD() int { return q.sock.FD() }

// Handle takes the sent frames back, forwards what was received, gives the
// free frames to the fill ring and kicks the kernel again while frames wait
// on the TX ring; it reports whether anything was received or sent.
func (q *xdpQueue) Handle() bool {
	n := q.sock.Complete(q.done[:])
	q.free = append(q.free, q.done[:n]...)
	q.inFlight -= n
	got := q.sock.Receive(q.rx[:])
	if got > 0 {
		q.forward(got)
	}
	if len(q.free) > 0 {
		k := q.sock.Fill(q.free)
		q.free = q.free[:copy(q.free, q.free[k:])]
	}
	if got == 0 && q.inFlight > 0 {
		// A kick stops early when the device is busy and leaves the rest
		// on the ring: without another kick they would wait for the next
		// received packet. An error leaves them there for the next round.
		_ = q.sock.Kick()
	}
	return got > 0 || n > 0
}

// forward handles the n frames of the last Receive: each is encapsulated
// in place and queued for transmission on the socket, or sent through the
// raw path, or dropped; the frames not transmitted go to the free list,
// after the raw path's flush, which sends straight from them.
func (q *xdpQueue) forward(n int) {
	w := q.w
	s := w.b.snap.Load()
	now := int64(time.Since(epoch))
	w.received.Add(uint64(n))
	w.xdpReceived.Add(uint64(n))
	ntx := 0
	for _, d := range q.rx[:n] {
		if q.forwardFrame(s, d, now, ntx) {
			ntx++
			continue
		}
		q.free = append(q.free, d.Addr)
	}
	// The kick's error leaves the frames on the ring for the next kick.
	sent, _ := q.sock.Transmit(q.tx[:ntx])
	for i := sent; i < ntx; i++ {
		w.dropIn(q.txSvc[i], dropSendError)
		q.free = append(q.free, q.tx[i].Addr)
	}
	q.inFlight += sent
	w.forwarded.Add(uint64(sent))
	w.flush()
}

// forwardFrame runs the shared decision on the IP packet of frame d and
// puts the result in q.tx[i], reporting whether it did; otherwise the
// packet was dropped or handed to the raw path.
func (q *xdpQueue) forwardFrame(s *snapshot, d xdp.Desc, now int64, i int) bool {
	w := q.w
	head := q.sock.Headroom(d)
	base := d.Addr - uint64(head)
	// The whole frame from its start: the headroom, Ethernet, IP.
	framed := q.sock.Data(xdp.Desc{Addr: base, Len: d.Len + uint32(head)})
	room := head + ethLen
	if len(framed) < room {
		w.drop(dropTruncated) // the program redirects none such
		return false
	}
	framed = framed[:room+ipLength(framed[room:])]
	frame, t, sc := w.process(s, framed, room, now)
	switch {
	case frame == nil:
		return false
	case len(frame) > t.mtu:
		w.viaRaw[viaRawTooBig].Add(1)
		w.tooBig(frame, t, sc)
		return false
	}
	hop, ok := q.hops.Lookup(t.Address)
	if !ok {
		w.viaRaw[viaRawNoNextHop].Add(1)
		w.queueRaw(frame, t, sc)
		return false
	}
	start := room - t.outer.Len() - ethLen
	eth := framed[start : start+ethLen]
	copy(eth[0:6], hop.DstMAC[:])
	copy(eth[6:12], hop.SrcMAC[:])
	binary.BigEndian.PutUint16(eth[12:14], hop.EtherType)
	q.tx[i] = xdp.Desc{Addr: base + uint64(start), Len: uint32(ethLen + len(frame))}
	q.txSvc[i] = sc
	return true
}

// ipLength is the length the IP header of pkt gives its datagram when that
// fits in pkt, else len(pkt) (flow.Parse judges): a frame shorter than
// Ethernet's minimum carries padding after the datagram, which must not
// go into the tunnel. The raw path gets datagrams the stack has trimmed.
func ipLength(pkt []byte) int {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		if n := int(binary.BigEndian.Uint16(pkt[2:4])); n >= 20 && n <= len(pkt) {
			return n
		}
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		if n := 40 + int(binary.BigEndian.Uint16(pkt[4:6])); n <= len(pkt) {
			return n
		}
	}
	return len(pkt)
}

// xdpStats reads the kernel's counters of the worker's socket.
func (w *worker) xdpStats() (xdp.Stats, error) {
	if w.xq == nil {
		return xdp.Stats{}, errors.New("balancer: xdp: the socket is closed")
	}
	return w.xq.sock.Stats()
}

// closeXDP closes the worker's socket, if any.
func (w *worker) closeXDP() {
	if w.xq != nil {
		w.xq.sock.Close()
		w.xq = nil
	}
}
