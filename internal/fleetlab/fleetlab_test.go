package fleetlab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseProtocols(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      map[string]string
	}{{
		name: "sessions up and down",
		out: `BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     14:28:37.747  
kernel1    Kernel     master4    up     14:28:37.747  
lb1        BGP        ---        up     14:28:42.559  Established   
lb4        BGP        ---        start  14:28:37.747  Active        Socket: Connection refused
`,
		want: map[string]string{"device1": "up", "kernel1": "up", "lb1": "Established",
			"lb4": "Active Socket: Connection refused"},
	}, {
		name: "a date once older than a day",
		out: `BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
uplink     BGP        ---        up     2026-12-05    Established   
`,
		want: map[string]string{"uplink": "Established"},
	}, {
		name: "not ready",
		out:  "Unable to connect to server control socket (/x/bird.ctl): No such file or directory\n",
		want: map[string]string{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, parseProtocols(tc.out)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestBirdConfigs checks that BIRD itself (bird -p: parse, then exit)
// accepts the router's configuration and a balancer's, which includes the
// shipped snippet.
func TestBirdConfigs(t *testing.T) {
	snippet, err := findSnippet()
	if err != nil {
		t.Fatal(err)
	}
	router, err := routerBirdConfig(3, true)
	if err != nil {
		t.Fatal(err)
	}
	balancer, err := balancerBirdConfig(BalancerAddr(1), true, snippet)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"protocol bgp lb1 {", "protocol bgp lb3 {", "neighbor 198.18.0.4 as 65001;",
		"protocol bgp lb3v6 {", "neighbor 2001:db8:18::4 as 65001;", "merge paths on;"} {
		if !strings.Contains(router, want) {
			t.Errorf("the router's configuration lacks %q:\n%s", want, router)
		}
	}
	router4, err := routerBirdConfig(3, false)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(router4, "v6") {
		t.Errorf("an IPv4-only router's configuration has IPv6 sessions:\n%s", router4)
	}
	for name, cfg := range map[string]string{"router": router, "IPv4-only router": router4, "balancer": balancer} {
		path := filepath.Join(t.TempDir(), "bird.conf")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("bird", "-p", "-c", path).CombinedOutput(); err != nil {
			t.Errorf("bird -p rejects the %s's configuration: %v: %s\n%s", name, err, out, cfg)
		}
	}
}
