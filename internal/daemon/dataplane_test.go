package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/conntrack"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/netnstest"
)

// TestDataplaneChoice: auto takes AF_XDP where it can and falls back to raw
// sockets saying why; xdp fails when it cannot; raw never tries. The host
// is a lab's (eth0 a veth, which takes XDP natively).
func TestDataplaneChoice(t *testing.T) {
	lab := netnstest.NewForTest(t, "dpc")
	host, err := lab.AddHost("lb", netip.MustParsePrefix("10.8.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("10.8.0.100") // in eth0's subnet
	tests := []struct {
		name, dataplane, iface string
		want                   string // Dataplane(), or the error
		wantLog                string
	}{
		{name: "auto on the VIPs' interface", dataplane: "auto", want: "xdp (native)", wantLog: "dataplane=\"xdp (native)\" interface=eth0"},
		{name: "auto on a non-Ethernet interface falls back", dataplane: "auto", iface: "lo", want: "raw",
			wantLog: `reason="balancer: xdp: nexthop: interface lo: not an Ethernet interface`},
		{name: "xdp", dataplane: "xdp", iface: "eth0", want: "xdp (native)"},
		{name: "raw", dataplane: "raw", want: "raw", wantLog: "dataplane=raw"},
		{name: "auto falls back", dataplane: "auto", iface: "nosuch", want: "raw",
			wantLog: `level=WARN msg="AF_XDP could not be set up: using raw sockets" reason="balancer: xdp: interface \"nosuch\": Link not found"`},
		{name: "xdp refuses", dataplane: "xdp", iface: "nosuch",
			want: `dataplane xdp: balancer: xdp: interface "nosuch": Link not found (dataplane auto would fall back to raw sockets)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			r := &running{log: slog.New(slog.NewTextHandler(&logs, nil))}
			cfg := &config.Config{
				Balancer: &config.Balancer{EncapPort: 5555, Workers: 1, Interface: tt.iface, Dataplane: config.Dataplane(tt.dataplane)},
				Services: []model.Service{{Name: "web", VIPs: []model.VIP{{Addr: vip}}}},
			}
			ct, err := conntrack.New(1024, conntrack.DefaultTimeouts)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			err = host.Do(func() error {
				bal, err := r.openBalancer(cfg, ct)
				if err != nil {
					return err
				}
				got = bal.Dataplane()
				bal.Close()
				return nil
			})
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log %q does not say %q", logs.String(), tt.wantLog)
			}
		})
	}
}

// TestDataplaneUnsupported: without CAP_BPF (the unit's other capabilities
// kept) loading the program fails with xdp.ErrUnsupported, which auto
// reports as XDP not being available here, not as a failure. The test
// binary runs dataplaneHelper (init) under setpriv in the lab host.
func TestDataplaneUnsupported(t *testing.T) {
	lab := netnstest.NewForTest(t, "dpu")
	host, err := lab.AddHost("lb", netip.MustParsePrefix("10.8.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := host.Command(t.Context(), "setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all",
		os.Args[0])
	cmd.Env = append(os.Environ(), "DATAPLANE_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for _, want := range []string{`level=INFO msg="AF_XDP is not available here: using raw sockets"`, "dataplane: raw"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("helper output does not say %q:\n%s", want, out)
		}
	}
}

// init runs dataplaneHelper instead of the tests in
// TestDataplaneUnsupported's process.
func init() {
	if os.Getenv("DATAPLANE_HELPER") != "" {
		if err := dataplaneHelper(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// dataplaneHelper opens a balancer on auto on eth0 and prints its data
// plane, after the log.
func dataplaneHelper() error {
	r := &running{log: slog.New(slog.NewTextHandler(os.Stdout, nil))}
	cfg := &config.Config{Balancer: &config.Balancer{EncapPort: 5555, Workers: 1, Interface: "eth0", Dataplane: config.DataplaneAuto}}
	ct, err := conntrack.New(1024, conntrack.DefaultTimeouts)
	if err != nil {
		return err
	}
	bal, err := r.openBalancer(cfg, ct)
	if err != nil {
		return err
	}
	defer bal.Close()
	fmt.Println("dataplane:", bal.Dataplane())
	return nil
}
