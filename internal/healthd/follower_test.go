package healthd

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/dbustest"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/registry"
)

// recorder is a followerEvents that writes each event down as a line.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
}

func (r *recorder) upsert(name, service string, addr netip.Addr, spec, source string) {
	r.add("upsert %s/%s %s %s %s", service, name, addr, spec, source)
}
func (r *recorder) remove(name string) { r.add("remove %s", name) }
func (r *recorder) setTunnel(vips map[string]tunnelVIPs, port uint16) {
	// Each service's VIPs as "v4,v6", either alone when the other is
	// missing.
	text := map[string]string{}
	for name, v := range vips {
		var valid []string
		for _, a := range []netip.Addr{v.v4, v.v6} {
			if a.IsValid() {
				valid = append(valid, a.String())
			}
		}
		text[name] = strings.Join(valid, ",")
	}
	r.add("tunnel %v %d", text, port)
}
func (r *recorder) resynced() { r.add("resynced") }

func (r *recorder) taken() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// TestTunnelVIP: a tunnel check without vip= aims at the lowest of its
// service's VIPs of the backend's own family, so a dual-stack service's
// IPv6 backends are probed 6-in-6 and its IPv4 ones 4-in-4, as its clients
// of each family reach them; a service with VIPs of one family only aims
// all its backends at the lowest of those.
func TestTunnelVIP(t *testing.T) {
	t.Parallel()
	const v4, v6 = "10.0.1.11", "2001:db8:1::11"
	dual := map[string]string{"10.0.0.54": "53", "2001:db8::54": "53", "10.0.0.53": "53", "2001:db8::53": "53"}
	tests := []struct {
		name    string
		vips    map[string]string // the service's VIPs property
		backend string
		want    string // "" for none
	}{
		{"dual-stack, IPv4 backend", dual, v4, "10.0.0.53"},
		{"dual-stack, IPv6 backend", dual, v6, "2001:db8::53"},
		{"IPv4 VIPs, IPv4 backend", map[string]string{"10.0.0.54": "", "10.0.0.53": ""}, v4, "10.0.0.53"},
		{"IPv4 VIPs, IPv6 backend (4-in-6)", map[string]string{"10.0.0.54": "", "10.0.0.53": ""}, v6, "10.0.0.53"},
		{"IPv6 VIPs, IPv6 backend", map[string]string{"2001:db8::54": "", "2001:db8::53": ""}, v6, "2001:db8::53"},
		{"IPv6 VIPs, IPv4 backend (6-in-4)", map[string]string{"2001:db8::54": "", "2001:db8::53": ""}, v4, "2001:db8::53"},
		{"an unreadable VIP is skipped", map[string]string{"bogus": "", "2001:db8::53": ""}, v6, "2001:db8::53"},
		{"no VIPs", map[string]string{}, v4, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := newTunnelVIPs(dbus.MakeVariant(tt.vips)).forBackend(netip.MustParseAddr(tt.backend))
			want := netip.Addr{}
			if tt.want != "" {
				want = netip.MustParseAddr(tt.want)
			}
			if got != want {
				t.Errorf("VIP for backend %s of a service with VIPs %v: %v, want %v", tt.backend, tt.vips, got, want)
			}
		})
	}
}

// TestFollowerEvents runs the follower alone against the real caplanced
// API: it emits an upsert or remove only for what changed, in caplanced's
// order, and after caplanced comes back, the differences and resynced.
func TestFollowerEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	backend := func(name, addr string) config.Backend {
		return config.Backend{Name: name, Address: netip.MustParseAddr(addr), Weight: 100, Check: "tcp://" + addr + ":80"}
	}
	e.startCaplanced(backend("web1", "10.0.1.11"), backend("web2", "10.0.1.12"))

	conn, err := e.bus.DialAs(dbustest.Health(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, release, err := serveHealth1(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	rec := &recorder{}
	f, err := follow(conn, testLogger(t), rec, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	// The follower's state belongs to one goroutine, as in the daemon.
	ctx, cancel := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	defer func() { cancel(); <-loopDone }()
	go func() {
		defer close(loopDone)
		f.start(ctx)
		for {
			select {
			case <-ctx.Done():
				return
			case sig, ok := <-f.signals:
				if !ok {
					return
				}
				f.onSignal(ctx, sig)
			case <-f.retry.C:
				f.onRetry(ctx)
			}
		}
	}()
	want := []string{
		"tunnel map[] 5555",
		"tunnel map[default:" + testVIP + "] 5555",
		"upsert default/web1 10.0.1.11 tcp://10.0.1.11:80 config",
		"upsert default/web2 10.0.1.12 tcp://10.0.1.12:80 config",
		"resynced",
	}
	waitEvents := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cmp.Equal(want, rec.taken()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: events (-want +got):\n%s", what, cmp.Diff(want, rec.taken()))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitEvents("start")

	// A change the follower does not mirror (the weight) emits nothing:
	// the next event is web3's.
	if err := e.registry().SetWeight("web1", 7); err != nil {
		t.Fatal(err)
	}
	if _, err := e.registry().Add("web3", "10.0.1.13", registry.AddOptions{Check: "tcp://10.0.1.13:443"}); err != nil {
		t.Fatal(err)
	}
	want = append(want, "upsert default/web3 10.0.1.13 tcp://10.0.1.13:443 runtime")
	waitEvents("add")
	if err := e.registry().Remove("web3"); err != nil {
		t.Fatal(err)
	}
	want = append(want, "remove web3")
	waitEvents("remove")

	// A service: its VIPs aim its backends' tunnel checks; a change of its
	// check reaches its backend without one of its own; removed, its
	// backend goes first.
	dns := model.Service{Name: "dns", VIPs: []model.VIP{{Addr: netip.MustParseAddr("10.0.0.54")}, {Addr: netip.MustParseAddr("2001:db8::53")}, {Addr: netip.MustParseAddr("10.0.0.53")}},
		Protocols: model.UDP, TableSize: 251, Check: "tcp://:53"}
	if _, err := e.registry().AddService(dns, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.registry().Add("dns1", "10.0.1.11", registry.AddOptions{Service: "dns"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.registry().ChangeService("dns", func(s model.Service) (model.Service, error) {
		s.Check = "tcp://:5353"
		return s, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.registry().RemoveService("dns"); err != nil {
		t.Fatal(err)
	}
	want = append(want,
		"tunnel map[default:"+testVIP+" dns:10.0.0.53,2001:db8::53] 5555",
		"upsert dns/dns1 10.0.1.11 tcp://:53 runtime",
		"upsert dns/dns1 10.0.1.11 tcp://:5353 runtime",
		"remove dns1",
		"tunnel map[default:"+testVIP+"] 5555",
	)
	waitEvents("service")

	// caplanced restarts with web1 changed, web2 gone and web4 new: only
	// the differences, then resynced.
	e.stopCaplanced()
	e.startCaplanced(backend("web1", "10.0.1.21"), backend("web4", "10.0.1.14"))
	want = append(want,
		"upsert default/web1 10.0.1.21 tcp://10.0.1.21:80 config",
		"upsert default/web4 10.0.1.14 tcp://10.0.1.14:80 config",
		"remove web2",
		"resynced",
	)
	waitEvents("restart")
}
