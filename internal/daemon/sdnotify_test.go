package daemon_test

// The systemd contract of the real caplanced binary, spoken over a real
// sd_notify socket (as go-systemd's sdnotify_test does): the watchdog pings
// at half of WATCHDOG_USEC only while the data path answers, and a refused
// reload shows in STATUS=. It runs as root in a network namespace
// (netnstest), with the D-Bus API on a private system bus (dbustest).

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/cmdtest"
	"github.com/caplance/caplance/internal/daemon"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/notifysock"
)

// watchdogUsec is the WATCHDOG_USEC the tests pass (WatchdogSec=400ms):
// pings are due every 200 ms.
const (
	watchdogUsec = 400000
	pingEvery    = 200 * time.Millisecond
)

// waitFor returns the index of the first message from index from on that
// has the line want (or a line starting with want, if want ends in "="),
// failing t after 15 s or when exited is closed.
func waitFor(t *testing.T, n *notifysock.Socket, from int, want string, exited <-chan struct{}) int {
	t.Helper()
	i, err := n.WaitFor(want, from, 15*time.Second, exited)
	if err != nil {
		t.Fatalf("caplanced: %v", err)
	}
	return i
}

// statusOf is the STATUS= value of msg, "" for none.
func statusOf(msg string) string {
	for line := range strings.SplitSeq(msg, "\n") {
		if s, ok := strings.CutPrefix(line, "STATUS="); ok {
			return s
		}
	}
	return ""
}

// TestMain removes the binaries built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	cmdtest.Cleanup()
	os.Exit(code)
}

// process is a caplanced under test.
type process struct {
	cmd    *exec.Cmd
	config string
	log    string
	exited chan struct{}
}

func (p *process) logText() string {
	data, _ := os.ReadFile(p.log)
	return string(data)
}

// stop sends SIGTERM and fails t unless caplanced exits 0 within 10 s.
func (p *process) stop(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("caplanced did not exit within 10s of SIGTERM\n%s", p.logText())
		return
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("caplanced exited %d after SIGTERM\n%s", code, p.logText())
	}
}

// The lab: one host, a balancer VIP on its eth0 subnet and a user-space
// receiver VIP, so that both kinds of data-path worker run.
const (
	hostAddr    = "198.18.0.2/24"
	balancerVIP = "198.18.0.100"
	receiverVIP = "198.18.0.200"
)

func configText(backends ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[balancer]\nvips = [%q]\nworkers = 2\n\n", balancerVIP)
	fmt.Fprintf(&b, "[receiver]\nvips = [%q]\nbalancers = [%q]\nmode = \"userspace\"\nworkers = 2\n", receiverVIP, "198.18.0.3")
	for i, addr := range backends {
		fmt.Fprintf(&b, "\n[[backend]]\nname = \"be%d\"\naddress = %q\n", i+1, addr)
	}
	return b.String()
}

// start runs caplanced on host with the D-Bus API on busAddr, under the
// watchdog, plus the environment extra, and waits for READY=1.
func start(t *testing.T, host *netnstest.Host, busAddr string, n *notifysock.Socket, extra ...string) *process {
	t.Helper()
	dir := t.TempDir()
	p := &process{config: filepath.Join(dir, "caplanced.toml"), log: filepath.Join(dir, "caplanced.log"), exited: make(chan struct{})}
	if err := os.WriteFile(p.config, []byte(configText("198.18.0.11")), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = host.Command(context.Background(), cmdtest.Binary(t, "caplanced"), "--config", p.config,
		"--runtime-dir", filepath.Join(dir, "run"), "--state-dir", filepath.Join(dir, "state"), "--bus", busAddr)
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.Path(), fmt.Sprintf("WATCHDOG_USEC=%d", watchdogUsec))
	p.cmd.Env = append(p.cmd.Env, extra...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := host.Start(p.cmd); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { p.stop(t) })
	waitFor(t, n, 0, "READY=1", p.exited)
	return p
}

// waitLog waits until p's log has text and returns when it saw it.
func waitLog(t *testing.T, p *process, text string) time.Time {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		log := p.logText()
		if strings.Contains(log, text) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say %q:\n%s", text, log)
		}
	}
}

func TestSystemdContract(t *testing.T) {
	lab := netnstest.NewForTest(t, "sdn")
	host, err := lab.AddHost("lb", netip.MustParsePrefix(hostAddr))
	if err != nil {
		t.Fatal(err)
	}
	bus := dbustest.Start(t)

	t.Run("the watchdog pings at half of WATCHDOG_USEC, reloads follow sd_notify", func(t *testing.T) {
		n := notifysock.ListenT(t)
		p := start(t, host, bus.Address, n)
		defer p.stop(t)

		// Ten pings however long a loaded machine takes, checked on when
		// each was sent.
		at, err := n.WaitPings(time.Time{}, 10, 30*time.Second, p.exited)
		if err != nil {
			t.Fatal(err)
		}
		notifysock.CheckPingRate(t, at, pingEvery)

		// A refused reload: the workers cannot change without a restart.
		bad := strings.Replace(configText("198.18.0.11", "198.18.0.12"), "workers = 2", "workers = 1", 1)
		if err := os.WriteFile(p.config, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		seen := len(n.Messages())
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		i := waitFor(t, n, seen, "RELOADING=1", p.exited)
		if msg := n.Messages()[i].Text; !strings.Contains(msg, "\nMONOTONIC_USEC=") {
			t.Errorf("RELOADING=1 without MONOTONIC_USEC (Type=notify-reload needs it): %q", msg)
		}
		i = waitFor(t, n, i+1, "READY=1", p.exited)
		status := statusOf(n.Messages()[i].Text)
		if !strings.HasPrefix(status, "reload refused: ") || !strings.Contains(status, "over 1 backend(s)") {
			t.Errorf("STATUS after a refused reload = %q, want \"reload refused: …\" and the running state (1 backend)", status)
		}
		// The watchdog is not disturbed.
		at, err = n.WaitPings(n.Messages()[i].At, 5, 30*time.Second, p.exited)
		if err != nil {
			t.Fatal(err)
		}
		notifysock.CheckPingRate(t, at, pingEvery)

		// A good reload clears it.
		if err := os.WriteFile(p.config, []byte(configText("198.18.0.11", "198.18.0.12")), 0o644); err != nil {
			t.Fatal(err)
		}
		seen = len(n.Messages())
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		i = waitFor(t, n, seen, "RELOADING=1", p.exited)
		i = waitFor(t, n, i+1, "READY=1", p.exited)
		if status := statusOf(n.Messages()[i].Text); strings.Contains(status, "refused") || !strings.Contains(status, "over 2 backend(s)") {
			t.Errorf("STATUS after a good reload = %q, want 2 backends and no refusal", status)
		}
	})

	t.Run("a wedged worker stops the pings", func(t *testing.T) {
		n := notifysock.ListenT(t)
		p := start(t, host, bus.Address, n, daemon.TestWedgeEnv+"=worker:2s")
		// Pings until the worker hangs.
		at, err := n.WaitPings(time.Time{}, 3, 30*time.Second, p.exited)
		if err != nil {
			t.Fatal(err)
		}
		notifysock.CheckPingRate(t, at, pingEvery)
		// From the hook's log line on, at most two checks may still pass:
		// the worker may have gone round since the previous one, and once
		// more as it was being wedged (it marks a round at its end).
		seen := waitLog(t, p, "wedging the first balancer worker")
		waitLog(t, p, "a balancer worker is stuck")
		time.Sleep(10 * pingEvery) // room for pings that must not come
		if late := n.Pings(seen, time.Now().Add(time.Hour)); len(late) > 2 {
			t.Errorf("%d WATCHDOG=1 after the worker hung, want at most two", len(late))
		}
		p.stop(t) // a wedged worker does not hold up the stop
	})
}
