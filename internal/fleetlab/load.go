package fleetlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/caplance/caplance/internal/testbed"
)

// Load is ab (apache2-utils) running on the client: new HTTP connections
// to the VIP, one request each, from Concurrency clients at once, until
// Stop.
type Load struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	exited chan struct{}
}

// abMaxRequests bounds a run: ab keeps a record of every request.
const abMaxRequests = 200000

// StartLoad starts ab with concurrency clients; -r keeps it going past a
// failed request (Stop counts them), -l accepts answers of any length (each
// backend says its own name), -s 10 lets a request wait out a failover.
func (l *Lab) StartLoad(concurrency int) (*Load, error) {
	url := "http://" + netip.AddrPortFrom(testbed.VIP, testbed.HTTPPort).String() + "/"
	ld := &Load{exited: make(chan struct{})}
	ld.cmd = l.Client.Command(context.Background(), "ab", "-r", "-l", "-s", "10", "-c", strconv.Itoa(concurrency),
		"-t", "600", "-n", strconv.Itoa(abMaxRequests), url)
	ld.cmd.Stdout, ld.cmd.Stderr = &ld.out, &ld.out
	if err := l.Client.Start(ld.cmd); err != nil {
		return nil, fmt.Errorf("ab: %w", err)
	}
	go func() { ld.cmd.Wait(); close(ld.exited) }()
	return ld, nil
}

// LoadResult is what ab reports.
type LoadResult struct {
	Complete, Failed int
	// Output is ab's whole report.
	Output string
}

var (
	abComplete = regexp.MustCompile(`(?m)^Complete requests:\s+(\d+)`)
	abFailed   = regexp.MustCompile(`(?m)^Failed requests:\s+(\d+)`)
)

// Stop interrupts ab (on SIGINT it reports what it did so far) and returns
// its counts. An ab that stopped on its own (it gives up on a connection
// error it cannot skip, such as a reset during connect) is an error.
func (ld *Load) Stop() (LoadResult, error) {
	select {
	case <-ld.exited:
		return LoadResult{Output: ld.out.String()}, fmt.Errorf("ab stopped before the end of the load (%v):\n%s",
			ld.cmd.ProcessState, ld.out.String())
	default:
	}
	if err := ld.cmd.Process.Signal(syscall.SIGINT); err != nil {
		return LoadResult{}, err
	}
	select {
	case <-ld.exited:
	case <-time.After(30 * time.Second):
		ld.cmd.Process.Kill()
		<-ld.exited
		return LoadResult{}, errors.New("ab: no exit within 30s of SIGINT")
	}
	res := LoadResult{Output: ld.out.String()}
	c, f := abComplete.FindStringSubmatch(res.Output), abFailed.FindStringSubmatch(res.Output)
	if c == nil || f == nil {
		return res, fmt.Errorf("ab printed no report:\n%s", res.Output)
	}
	res.Complete, _ = strconv.Atoi(c[1])
	res.Failed, _ = strconv.Atoi(f[1])
	return res, nil
}

// Close kills ab if it still runs, without a report: for a test that
// ends early.
func (ld *Load) Close() {
	ld.cmd.Process.Kill()
	<-ld.exited
}

// Conns are long-lived HTTP connections from the client to the VIP, each
// sending a request every interval on the same TCP connection and
// checking the answer comes from the same backend.
type Conns struct {
	interval time.Duration
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []*connState
}

type connState struct {
	backend   string
	exchanges int
	local     string
	last      time.Time
	maxGap    time.Duration
	maxGapEnd time.Time
	err       error
}

// ConnsReport sums up long-lived connections.
type ConnsReport struct {
	Conns, Exchanges int
	// Broken are the errors of the connections that broke (reset, timed
	// out, or answered by another backend).
	Broken []error
	// MaxGap is the longest time any connection waited between two
	// answers: the interval, or the time it took to recover from a loss.
	MaxGap time.Duration
	// Slowest says which connection waited MaxGap, and when it ended.
	Slowest string
	// Stalled is how many connections once waited more than three
	// intervals: those a failover caught.
	Stalled int
}

// StartConns opens n connections to the VIP, through the client's current
// route, and starts their exchanges.
func (l *Lab) StartConns(n int, interval time.Duration) (*Conns, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cs := &Conns{interval: interval, cancel: cancel}
	client := l.HTTPClient(true)
	dial := client.Transport.(*http.Transport).DialContext
	for range n {
		c, err := dial(ctx, "tcp", netip.AddrPortFrom(testbed.VIP, testbed.HTTPPort).String())
		if err != nil {
			cs.Stop()
			return nil, fmt.Errorf("long-lived connection: %w", err)
		}
		st := &connState{local: c.LocalAddr().String(), last: time.Now()}
		cs.conns = append(cs.conns, st)
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			defer c.Close()
			cs.run(ctx, c, st, interval)
		}()
	}
	return cs, nil
}

// exchangeTimeout bounds one request and answer: TCP retransmits lost
// segments with backoff, so a failover costs a second or two, not more.
const exchangeTimeout = 15 * time.Second

func (cs *Conns) run(ctx context.Context, c net.Conn, st *connState, interval time.Duration) {
	r := bufio.NewReader(c)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		name, err := exchange(c, r)
		now := time.Now()
		cs.mu.Lock()
		switch {
		case err != nil && ctx.Err() == nil:
			st.err = err
		case err == nil && st.backend != "" && name != st.backend:
			st.err = fmt.Errorf("answered by %s after %s", name, st.backend)
		case err == nil:
			st.backend = name
			st.exchanges++
			if gap := now.Sub(st.last); gap > st.maxGap {
				st.maxGap, st.maxGapEnd = gap, now
			}
			st.last = now
		}
		failed := st.err != nil
		cs.mu.Unlock()
		if failed {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// exchange sends one request on c and returns the name the backend
// answers with.
func exchange(c net.Conn, r *bufio.Reader) (string, error) {
	c.SetDeadline(time.Now().Add(exchangeTimeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: vip\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var name string
	if _, err := fmt.Sscanf(string(body), "%s", &name); err != nil {
		return "", fmt.Errorf("answer %q: %w", body, err)
	}
	return name, nil
}

// Exchanges returns how many answers each connection has had so far.
func (cs *Conns) Exchanges() []int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var out []int
	for _, st := range cs.conns {
		out = append(out, st.exchanges)
	}
	return out
}

// WaitExchanges waits until every connection that has not broken has had
// more answers than since[i], or timeout passes: proof they all still
// carry traffic.
func (cs *Conns) WaitExchanges(since []int, more int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		behind := 0
		cs.mu.Lock()
		for i, st := range cs.conns {
			if st.err == nil && st.exchanges < since[i]+more {
				behind++
			}
		}
		cs.mu.Unlock()
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d long-lived connections had fewer than %d more answers within %v", behind, more, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the exchanges, closes the connections and reports. It may be
// called more than once.
func (cs *Conns) Stop() ConnsReport {
	cs.cancel()
	cs.wg.Wait()
	rep := ConnsReport{Conns: len(cs.conns)}
	for i, st := range cs.conns {
		rep.Exchanges += st.exchanges
		if st.maxGap > rep.MaxGap {
			rep.MaxGap = st.maxGap
			rep.Slowest = fmt.Sprintf("connection %d (%s to %s) until %s", i, st.local, st.backend, st.maxGapEnd.Format("15:04:05.000"))
		}
		if st.maxGap > 3*cs.interval {
			rep.Stalled++
		}
		if st.err != nil {
			rep.Broken = append(rep.Broken, fmt.Errorf("connection %d (%s, %d answers): %w", i, st.backend, st.exchanges, st.err))
		}
	}
	return rep
}
