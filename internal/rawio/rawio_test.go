package rawio_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/rawio"
)

var loopback = [4]byte{127, 0, 0, 1}

// listen opens a UDP socket on 127.0.0.1 and returns it, its descriptor
// (valid until the test ends, when the socket is closed) and its address.
func listen(t testing.TB) (*net.UDPConn, int, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatalf("SyscallConn: %v", err)
	}
	var fd int
	if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
		t.Fatalf("Control: %v", err)
	}
	return c, fd, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// socket is a blocking UDP socket made without the Go runtime, as the data
// path's send sockets are, bound to an ephemeral port on 127.0.0.1; with
// connect non-zero it is connected to that port. It returns the descriptor
// and the bound address.
func socket(t testing.TB, connect uint16) (int, netip.AddrPort) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	if connect != 0 {
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: loopback, Port: int(connect)}); err != nil {
			t.Fatalf("connect: %v", err)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	s4 := sa.(*unix.SockaddrInet4)
	return fd, netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), uint16(s4.Port))
}

// send writes each datagram to the connected socket fd.
func send(t testing.TB, fd int, dgrams ...[]byte) {
	t.Helper()
	for i, d := range dgrams {
		if _, err := unix.Write(fd, d); err != nil {
			t.Fatalf("send datagram %d (%d bytes): %v", i, len(d), err)
		}
	}
}

// dgram is a recognisable datagram of n bytes, numbered i.
func dgram(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j)
	}
	return b
}

// received is one datagram as a Batch reports it.
type received struct {
	Data   []byte
	Source netip.AddrPort
	Trunc  bool
}

func collect(b *rawio.Batch, n int) []received {
	var got []received
	for i := range n {
		got = append(got, received{bytes.Clone(b.Packet(i)), b.Source(i), b.Truncated(i)})
	}
	return got
}

var equateAddrPort = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

func TestBatchRecv(t *testing.T) {
	const headroom, size, capacity = 28, 512, 4
	_, fd, addr := listen(t)
	sfd, from := socket(t, addr.Port())
	b := rawio.NewBatch(capacity, headroom, size)
	if b.Cap() != capacity {
		t.Errorf("Cap() = %d, want %d", b.Cap(), capacity)
	}

	// Before any Recv, Framed(i) is the headroom alone: fill it with a
	// canary that receiving must leave in place.
	canary := bytes.Repeat([]byte{0xa5}, headroom)
	for i := range capacity {
		if n := len(b.Framed(i)); n != headroom {
			t.Fatalf("Framed(%d) before Recv: %d bytes, want the %d of headroom", i, n, headroom)
		}
		copy(b.Framed(i), canary)
	}

	if n, err := b.Recv(fd); n != 0 || err != nil {
		t.Fatalf("Recv with nothing waiting = %d, %v; want 0, nil", n, err)
	}

	tests := []struct {
		name string
		sent [][]byte
		want []received // over as many Recv calls as it takes
	}{
		{
			name: "three datagrams",
			sent: [][]byte{dgram(0, 1), dgram(1, 100), dgram(2, size)},
			want: []received{{dgram(0, 1), from, false}, {dgram(1, 100), from, false}, {dgram(2, size), from, false}},
		},
		{
			name: "more than Cap, over two calls",
			sent: [][]byte{dgram(0, 10), dgram(1, 11), dgram(2, 12), dgram(3, 13), dgram(4, 14), dgram(5, 15)},
			want: []received{
				{dgram(0, 10), from, false}, {dgram(1, 11), from, false}, {dgram(2, 12), from, false},
				{dgram(3, 13), from, false}, {dgram(4, 14), from, false}, {dgram(5, 15), from, false},
			},
		},
		{
			// The truncated datagram is cut to the buffer; the flag is
			// per datagram, and cleared for the next Recv.
			name: "truncated",
			sent: [][]byte{dgram(0, size+1), dgram(1, 20), dgram(2, 65000)},
			want: []received{{dgram(0, size), from, true}, {dgram(1, 20), from, false}, {dgram(2, 65000)[:size], from, true}},
		},
		{
			name: "after truncation",
			sent: [][]byte{dgram(7, 30), dgram(8, 31), dgram(9, 32)},
			want: []received{{dgram(7, 30), from, false}, {dgram(8, 31), from, false}, {dgram(9, 32), from, false}},
		},
		{
			name: "empty datagram",
			sent: [][]byte{{}},
			want: []received{{[]byte{}, from, false}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			send(t, sfd, tt.sent...)
			var got []received
			for call := 0; len(got) < len(tt.want); call++ {
				n, err := recvSoon(b, fd)
				if err != nil || n == 0 || n > capacity {
					t.Fatalf("Recv call %d = %d, %v; want 1 to %d datagrams (have %d of %d)", call, n, err, capacity, len(got), len(tt.want))
				}
				got = append(got, collect(b, n)...)
				for i := range n {
					f := b.Framed(i)
					if diff := cmp.Diff(canary, f[:headroom]); diff != "" {
						t.Errorf("call %d, datagram %d: headroom changed (-want +got):\n%s", call, i, diff)
					}
					if p := b.Packet(i); len(f) != headroom+len(p) || (len(p) > 0 && &f[headroom] != &p[0]) {
						t.Errorf("call %d: Framed(%d) is not the headroom followed by Packet(%d)", call, i, i)
					}
				}
			}
			if n, err := b.Recv(fd); n != 0 || err != nil {
				t.Errorf("Recv after the last datagram = %d, %v; want 0, nil", n, err)
			}
			if diff := cmp.Diff(tt.want, got, equateAddrPort); diff != "" {
				t.Errorf("received (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("bad descriptor", func(t *testing.T) {
		if n, err := b.Recv(-1); n != 0 || !errors.Is(err, unix.EBADF) {
			t.Errorf("Recv(-1) = %d, %v; want 0, EBADF", n, err)
		}
	})
}

// recvSoon calls Recv until it returns datagrams or an error, for up to a
// second: loopback delivery normally completes within the sending call, but
// nothing promises it.
func recvSoon(b *rawio.Batch, fd int) (int, error) {
	deadline := time.Now().Add(time.Second)
	for {
		n, err := b.Recv(fd)
		if err != nil || n > 0 || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(time.Millisecond)
	}
}

// readAll reads n datagrams from c, then checks that no further one arrives
// within a short wait.
func readAll(t *testing.T, c *net.UDPConn, n int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 1<<16)
	for len(got) < n {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		m, _, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("read datagram %d of %d: %v", len(got), n, err)
		}
		got = append(got, append([]byte(nil), buf[:m]...))
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if m, _, err := c.ReadFromUDP(buf); err == nil {
		t.Errorf("datagram of %d bytes after the %d expected", m, n)
	}
	return got
}

func TestQueueFlush(t *testing.T) {
	recv, _, addr := listen(t)
	fd, _ := socket(t, 0)
	dst, port := addr.Addr().As4(), addr.Port()

	q := rawio.NewQueue(5)
	if q.Cap() != 5 || q.Len() != 0 || q.Full() {
		t.Fatalf("new queue: Cap %d, Len %d, Full %v; want 5, 0, false", q.Cap(), q.Len(), q.Full())
	}

	t.Run("empty", func(t *testing.T) {
		calls := 0
		if n := q.Flush(fd, func(int, error) { calls++ }); n != 0 || calls != 0 {
			t.Errorf("Flush of an empty queue = %d with %d errors, want 0 with none", n, calls)
		}
	})

	// The third datagram is above the 65507-byte UDP maximum, so the kernel
	// refuses it (EMSGSIZE) in the middle of the sendmmsg batch.
	dgrams := [][]byte{dgram(1, 100), dgram(2, 200), dgram(3, 70000), dgram(4, 400), dgram(5, 500)}

	t.Run("a failure in the middle loses only that datagram", func(t *testing.T) {
		for i, d := range dgrams {
			if q.Full() {
				t.Fatalf("Full before Add %d", i)
			}
			q.Add(d, dst, port)
			if q.Len() != i+1 {
				t.Fatalf("Len after %d Adds = %d", i+1, q.Len())
			}
		}
		if !q.Full() {
			t.Error("not Full after Cap Adds")
		}
		type failure struct {
			Index int
			Err   error
		}
		var failures []failure
		n := q.Flush(fd, func(i int, err error) { failures = append(failures, failure{i, err}) })
		if n != 4 {
			t.Errorf("Flush = %d, want 4", n)
		}
		if diff := cmp.Diff([]failure{{2, unix.EMSGSIZE}}, failures, cmp.Comparer(func(a, b error) bool { return errors.Is(a, b) })); diff != "" {
			t.Errorf("onError calls (-want +got):\n%s", diff)
		}
		if q.Len() != 0 || q.Full() {
			t.Errorf("after Flush: Len %d, Full %v; want 0, false", q.Len(), q.Full())
		}
		want := [][]byte{dgrams[0], dgrams[1], dgrams[3], dgrams[4]}
		if diff := cmp.Diff(want, readAll(t, recv, len(want))); diff != "" {
			t.Errorf("received (-want +got):\n%s", diff)
		}
	})

	t.Run("reusable after Flush", func(t *testing.T) {
		q.Add(dgrams[4], dst, port)
		q.Add(dgrams[0], dst, port)
		if n := q.Flush(fd, func(i int, err error) { t.Errorf("onError(%d, %v)", i, err) }); n != 2 {
			t.Errorf("Flush = %d, want 2", n)
		}
		if diff := cmp.Diff([][]byte{dgrams[4], dgrams[0]}, readAll(t, recv, 2)); diff != "" {
			t.Errorf("received (-want +got):\n%s", diff)
		}
	})

	t.Run("every datagram failing", func(t *testing.T) {
		q.Add(dgrams[2], dst, port)
		q.Add(dgrams[2], dst, port)
		var idx []int
		if n := q.Flush(fd, func(i int, err error) { idx = append(idx, i) }); n != 0 {
			t.Errorf("Flush = %d, want 0", n)
		}
		if diff := cmp.Diff([]int{0, 1}, idx); diff != "" {
			t.Errorf("onError indices (-want +got):\n%s", diff)
		}
		readAll(t, recv, 0)
	})
}

// TestLoop runs a Loop whose idle poll lasts an hour, so that whatever it
// handles once idle, it handles because poll woke for it.
func TestLoop(t *testing.T) {
	rawio.SetIdlePoll(t, time.Hour)
	_, fdA, addrA := listen(t)
	_, fdB, addrB := listen(t)
	sA, fromA := socket(t, addrA.Port())
	sB, fromB := socket(t, addrB.Port())

	// Waiting before Loop starts: its first round reads them, A then B.
	send(t, sA, dgram(1, 10), dgram(2, 20), dgram(3, 30))
	send(t, sB, dgram(4, 40), dgram(5, 50))

	calls, stop, alive, done := startLoop(t, fdA, fdB)
	// A test that fails early must not leave the Loop in poll for an hour.
	t.Cleanup(func() {
		stop.Store(true)
		send(t, sA, dgram(9, 90))
	})
	next := func() loopCall {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("handle not called within 5s")
			return loopCall{}
		}
	}
	want := []loopCall{
		{N: 3, Got: []received{{dgram(1, 10), fromA, false}, {dgram(2, 20), fromA, false}, {dgram(3, 30), fromA, false}}},
		{N: 2, Got: []received{{dgram(4, 40), fromB, false}, {dgram(5, 50), fromB, false}}},
	}
	if diff := cmp.Diff(want, []loopCall{next(), next()}, equateAddrPort); diff != "" {
		t.Errorf("handle calls (-want +got):\n%s", diff)
	}
	if !alive.Load() {
		t.Error("alive not set after a round")
	}

	// Idle now, soon blocked in poll for an hour: the datagram must wake
	// it. The busy rounds before it blocks last 2 ms at most; sleeping
	// longer than that makes the test meet the blocked poll, without
	// depending on it (a datagram read in a busy round passes too).
	time.Sleep(50 * time.Millisecond)
	send(t, sB, dgram(6, 60))
	if diff := cmp.Diff(loopCall{N: 1, Got: []received{{dgram(6, 60), fromB, false}}}, next(), equateAddrPort); diff != "" {
		t.Errorf("handle call (-want +got):\n%s", diff)
	}

	// Stopped while blocked, it stops after the next wake-up.
	time.Sleep(50 * time.Millisecond)
	stop.Store(true)
	send(t, sA, dgram(7, 70))
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Loop did not stop within 5s of a wake-up after stop")
	}
}

// busySource is a Source that always has work, as an AF_XDP socket under
// load, and counts its rounds.
type busySource struct {
	fd     int
	rounds atomic.Int64
}

func (s *busySource) Handle() bool { s.rounds.Add(1); return true }
func (s *busySource) FD() int      { return s.fd }

// TestLoopWithBusySource: next to a Source that always has work, the Loop
// still reads its sockets, each datagram once, those waiting before it
// starts and those arriving while it runs.
func TestLoopWithBusySource(t *testing.T) {
	_, fdA, addrA := listen(t)
	_, fdB, addrB := listen(t)
	sA, fromA := socket(t, addrA.Port())
	sB, fromB := socket(t, addrB.Port())
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(efd) })
	src := &busySource{fd: efd}

	send(t, sB, dgram(1, 10))
	calls, _, _, _ := startLoopWith(t, src, fdA, fdB)
	next := func() loopCall {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("handle not called within 5s")
			return loopCall{}
		}
	}
	if diff := cmp.Diff(loopCall{N: 1, Got: []received{{dgram(1, 10), fromB, false}}}, next(), equateAddrPort); diff != "" {
		t.Errorf("the datagram waiting at the start (-want +got):\n%s", diff)
	}
	for deadline := time.Now().Add(5 * time.Second); src.rounds.Load() < 100; {
		if time.Now().After(deadline) {
			t.Fatalf("the source was handled %d times in 5s", src.rounds.Load())
		}
		time.Sleep(time.Millisecond)
	}
	send(t, sA, dgram(2, 20))
	if diff := cmp.Diff(loopCall{N: 1, Got: []received{{dgram(2, 20), fromA, false}}}, next(), equateAddrPort); diff != "" {
		t.Errorf("a datagram arriving while the source is busy (-want +got):\n%s", diff)
	}
	select {
	case c := <-calls:
		t.Errorf("an extra handle call: %+v", c)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestLoopIdle runs a Loop with nothing to read: every idle round sets
// alive, and setting stop ends it by the end of its idle poll.
func TestLoopIdle(t *testing.T) {
	rawio.SetIdlePoll(t, 10*time.Millisecond)
	_, fd, _ := listen(t)
	calls, stop, alive, done := startLoop(t, fd)
	for round := range 3 {
		alive.Store(false)
		deadline := time.Now().Add(5 * time.Second)
		for !alive.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: an idle Loop did not set alive within 5s", round)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	stop.Store(true)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("an idle Loop did not stop within 5s")
	}
	select {
	case c := <-calls:
		t.Errorf("unexpected handle(%d)", c.N)
	default:
	}
}

// TestSleepWhenEmpty checks the idle policy: after an empty round a Loop
// sleeps only while its last busy round read a batch (it is under load) and
// for at most BusyRounds empty rounds; a last round of one datagram, or none
// (poll found nothing), blocks in poll at once.
func TestSleepWhenEmpty(t *testing.T) {
	tests := []struct {
		name        string
		empty, last int
		want        bool
	}{
		{"first empty round after a batch", 0, rawio.BusyBatch, true},
		{"first empty round after a full batch", 0, 32, true},
		{"last sleep after a batch", rawio.BusyRounds - 1, rawio.BusyBatch, true},
		{"too many empty rounds", rawio.BusyRounds, 32, false},
		{"after a single datagram", 0, rawio.BusyBatch - 1, false},
		{"after poll found nothing", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rawio.SleepWhenEmpty(tt.empty, tt.last); got != tt.want {
				t.Errorf("SleepWhenEmpty(%d, %d) = %v, want %v", tt.empty, tt.last, got, tt.want)
			}
		})
	}
}

// loopCall is one call of a Loop's handle.
type loopCall struct {
	N   int
	Got []received
}

// startLoop starts a Loop on fds, whose handle reports each call on calls;
// done closes when it returns. It is stopped when the test ends.
func startLoop(t *testing.T, fds ...int) (calls chan loopCall, stop, alive *atomic.Bool, done chan struct{}) {
	t.Helper()
	return startLoopWith(t, nil, fds...)
}

// startLoopWith is startLoop with a Source.
func startLoopWith(t *testing.T, src rawio.Source, fds ...int) (calls chan loopCall, stop, alive *atomic.Bool, done chan struct{}) {
	t.Helper()
	calls = make(chan loopCall, 16)
	batch := rawio.NewBatch(8, 0, 256)
	stop, alive, done = new(atomic.Bool), new(atomic.Bool), make(chan struct{})
	var pfds []unix.PollFd
	for _, fd := range fds {
		pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
	go func() {
		defer close(done)
		rawio.Loop(pfds, batch, src, stop, alive, func(n int) {
			calls <- loopCall{N: n, Got: collect(batch, n)}
		})
	}()
	t.Cleanup(func() {
		stop.Store(true)
		<-done
	})
	return calls, stop, alive, done
}

func TestAllocs(t *testing.T) {
	_, fd, addr := listen(t)
	sfd, _ := socket(t, addr.Port())
	b := rawio.NewBatch(8, 28, 2048)
	msg := dgram(0, 1000)

	if n := testing.AllocsPerRun(100, func() {
		if n, err := b.Recv(fd); n != 0 || err != nil {
			t.Fatalf("Recv = %d, %v; want 0, nil", n, err)
		}
	}); n != 0 {
		t.Errorf("Recv with nothing waiting: %v allocs per run, want 0", n)
	}

	// The datagrams are sent inside the measured function too, with a
	// plain write(2), which allocates nothing itself.
	if n := testing.AllocsPerRun(100, func() {
		for range 4 {
			if _, err := unix.Write(sfd, msg); err != nil {
				t.Fatal(err)
			}
		}
		got := 0
		for got < 4 {
			n, err := b.Recv(fd)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}); n != 0 {
		t.Errorf("Recv with data waiting: %v allocs per run, want 0", n)
	}

	q := rawio.NewQueue(4)
	qfd, _ := socket(t, 0)
	dst, port := addr.Addr().As4(), addr.Port()
	onError := func(i int, err error) { t.Errorf("onError(%d, %v)", i, err) }
	if n := testing.AllocsPerRun(100, func() {
		for !q.Full() {
			q.Add(msg, dst, port)
		}
		if n := q.Flush(qfd, onError); n != 4 {
			t.Fatalf("Flush = %d, want 4", n)
		}
		// Drain, so the receive buffer never overflows.
		for got := 0; got < 4; {
			n, err := b.Recv(fd)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}); n != 0 {
		t.Errorf("Add+Flush: %v allocs per run, want 0", n)
	}
}

// TestQueueFlushWaitsForAFullBuffer: with the socket's send buffer full
// (a slow qdisc holds what was sent), Flush waits for room instead of
// dropping or failing, and every datagram arrives.
func TestQueueFlushWaitsForAFullBuffer(t *testing.T) {
	lab := netnstest.NewForTest(t, "rio")
	from, err := lab.AddHost("from", netip.MustParsePrefix("10.9.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	to, err := lab.AddHost("to", netip.MustParsePrefix("10.9.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	// 8 Mbit/s: a 1000-byte datagram leaves every millisecond.
	if out, err := from.Command(t.Context(), "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
		"rate", "8mbit", "burst", "2kb", "limit", "1mb").CombinedOutput(); err != nil {
		t.Fatalf("tc: %v\n%s", err, out)
	}
	var sink int
	err = to.Do(func() (err error) {
		sink, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Bind(sink, &unix.SockaddrInet4{Addr: [4]byte{10, 9, 0, 2}, Port: 9})
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(sink) })

	dst := [4]byte{10, 9, 0, 2}
	payload := dgram(7, 1000)
	var filled int
	var failures []error
	q := rawio.NewQueue(32)
	err = from.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
			return err
		}
		// Fill the send buffer until the kernel says it is full.
		for ; ; filled++ {
			err := unix.Sendto(fd, payload, unix.MSG_DONTWAIT, &unix.SockaddrInet4{Addr: dst, Port: 9})
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil || filled == 1000 {
				return fmt.Errorf("filling the send buffer: %d sent, then %v", filled, err)
			}
		}
		for range q.Cap() {
			q.Add(payload, dst, 9)
		}
		if n := q.Flush(fd, func(_ int, err error) { failures = append(failures, err) }); n != q.Cap() {
			return fmt.Errorf("Flush sent %d of %d", n, q.Cap())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(failures) > 0 {
		t.Errorf("Flush reported failures: %v", failures)
	}
	want := filled + q.Cap()
	buf := make([]byte, 2000)
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	if err := unix.SetsockoptTimeval(sink, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < want; got++ {
		if n, _, err := unix.Recvfrom(sink, buf, 0); err != nil || n != len(payload) {
			t.Fatalf("datagram %d of %d: %d bytes, %v", got+1, want, n, err)
		}
	}
}

// TestQueueBothFamilies: one queue sends to IPv6 destinations (Add6) and,
// reused, to IPv4 ones (Add), each datagram to its own address.
func TestQueueBothFamilies(t *testing.T) {
	recv6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { recv6.Close() })
	port6 := uint16(recv6.LocalAddr().(*net.UDPAddr).Port)
	fd6, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd6) })
	recv4, _, addr4 := listen(t)
	fd4, _ := socket(t, 0)

	q := rawio.NewQueue(2)
	onError := func(i int, err error) { t.Errorf("onError(%d, %v)", i, err) }
	q.Add6(dgram(1, 10), netip.IPv6Loopback().As16(), port6)
	q.Add6(dgram(2, 20), netip.IPv6Loopback().As16(), port6)
	if n := q.Flush(fd6, onError); n != 2 {
		t.Errorf("Flush to ::1 = %d, want 2", n)
	}
	if diff := cmp.Diff([][]byte{dgram(1, 10), dgram(2, 20)}, readAll(t, recv6, 2)); diff != "" {
		t.Errorf("received on ::1 (-want +got):\n%s", diff)
	}
	q.Add(dgram(3, 30), addr4.Addr().As4(), addr4.Port())
	if n := q.Flush(fd4, onError); n != 1 {
		t.Errorf("Flush to 127.0.0.1 after ::1 = %d, want 1", n)
	}
	if diff := cmp.Diff([][]byte{dgram(3, 30)}, readAll(t, recv4, 1)); diff != "" {
		t.Errorf("received on 127.0.0.1 (-want +got):\n%s", diff)
	}
}

// TestIPv6: a Batch reports an IPv6 sender's address and port, and the same
// Batch an IPv4 sender's afterwards; Add6 sends to an IPv6 address on an
// IPv6 socket.
func TestIPv6(t *testing.T) {
	c6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { c6.Close() })
	addr6 := c6.LocalAddr().(*net.UDPAddr).AddrPort()
	fd6, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd6) })
	if err := unix.Bind(fd6, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := unix.Getsockname(fd6)
	if err != nil {
		t.Fatal(err)
	}
	from6 := netip.AddrPortFrom(netip.IPv6Loopback(), uint16(sa.(*unix.SockaddrInet6).Port))

	q := rawio.NewQueue(2)
	q.Add6(dgram(6, 60), addr6.Addr().As16(), addr6.Port())
	if n := q.Flush(fd6, func(i int, err error) { t.Errorf("onError(%d, %v)", i, err) }); n != 1 {
		t.Fatalf("Flush = %d, want 1", n)
	}
	if diff := cmp.Diff([][]byte{dgram(6, 60)}, readAll(t, c6, 1)); diff != "" {
		t.Errorf("received over IPv6 (-want +got):\n%s", diff)
	}

	// Receive: the listener's descriptor, read with a Batch.
	rc, err := c6.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var lfd6 int
	if err := rc.Control(func(s uintptr) { lfd6 = int(s) }); err != nil {
		t.Fatal(err)
	}
	b := rawio.NewBatch(2, 48, 512)
	q.Add6(dgram(7, 70), addr6.Addr().As16(), addr6.Port())
	q.Flush(fd6, func(i int, err error) { t.Errorf("onError(%d, %v)", i, err) })
	n, err := recvSoon(b, lfd6)
	if err != nil || n != 1 {
		t.Fatalf("Recv = %d, %v; want 1", n, err)
	}
	want := []received{{Data: dgram(7, 70), Source: from6}}
	if diff := cmp.Diff(want, collect(b, n), equateAddrPort); diff != "" {
		t.Errorf("IPv6 batch (-want +got):\n%s", diff)
	}

	_, fd4, addr4 := listen(t)
	sfd4, from4 := socket(t, addr4.Port())
	send(t, sfd4, dgram(4, 40))
	if n, err = recvSoon(b, fd4); err != nil || n != 1 {
		t.Fatalf("Recv = %d, %v; want 1", n, err)
	}
	want = []received{{Data: dgram(4, 40), Source: from4}}
	if diff := cmp.Diff(want, collect(b, n), equateAddrPort); diff != "" {
		t.Errorf("IPv4 batch after an IPv6 one (-want +got):\n%s", diff)
	}

	msg, dst := dgram(8, 80), addr6.Addr().As16()
	if n := testing.AllocsPerRun(100, func() {
		q.Add6(msg, dst, addr6.Port())
		if q.Flush(fd6, func(int, error) {}) != 1 {
			t.Fatal("Flush sent nothing")
		}
		for got := 0; got < 1; {
			n, err := b.Recv(lfd6)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
		_ = b.Source(0)
	}); n != 0 {
		t.Errorf("Add6+Flush+Recv+Source over IPv6: %v allocs per run, want 0", n)
	}
}

// TestQueueAdd6From: a datagram queued with Add6From leaves with the given
// source (IPV6_PKTINFO; IPV6_FREEBIND lets the test use one the host does
// not have), and its slot, reused by Add6, carries no source any more.
func TestQueueAdd6From(t *testing.T) {
	recv, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { recv.Close() })
	port := uint16(recv.LocalAddr().(*net.UDPAddr).Port)
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
		t.Fatal(err)
	}

	q := rawio.NewQueue(2)
	onError := func(i int, err error) { t.Errorf("onError(%d, %v)", i, err) }
	src := netip.MustParseAddr("2001:db8::7")
	loopback := netip.IPv6Loopback().As16()
	q.Add6From(dgram(1, 10), src.As16(), loopback, port)
	q.Add6(dgram(2, 20), loopback, port)
	if n := q.Flush(fd, onError); n != 2 {
		t.Errorf("Flush = %d, want 2", n)
	}
	q.Add6(dgram(3, 30), loopback, port) // slot 0 again
	if n := q.Flush(fd, onError); n != 1 {
		t.Errorf("Flush = %d, want 1", n)
	}

	type from struct {
		Payload []byte
		Source  netip.Addr
	}
	var got []from
	buf := make([]byte, 2048)
	for range 3 {
		if err := recv.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, a, err := recv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, from{bytes.Clone(buf[:n]), a.Addr()})
	}
	want := []from{{dgram(1, 10), src}, {dgram(2, 20), netip.IPv6Loopback()}, {dgram(3, 30), netip.IPv6Loopback()}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("received (-want +got):\n%s", diff)
	}
	msg := dgram(4, 40)
	if n := testing.AllocsPerRun(100, func() {
		q.Add6From(msg, src.As16(), loopback, port)
		if n := q.Flush(fd, onError); n != 1 {
			t.Fatalf("Flush = %d, want 1", n)
		}
		if _, _, err := recv.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Add6From+Flush: %v allocs per run, want 0", n)
	}
}
