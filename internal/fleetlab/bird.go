package fleetlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/caplance/caplance/internal/netnstest"
)

// birdTimeout bounds how long BIRD may take to open its control socket.
const birdTimeout = 10 * time.Second

// Bird is one BIRD process, run in the foreground (-f) with its
// configuration, control socket (-s), pid file (-P) and log in a directory
// of the lab's, never the host's /etc/bird or /run/bird.
type Bird struct {
	// Socket is the control socket, for `birdc -s`.
	Socket  string
	Config  string
	LogPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startBird writes config into dir and starts BIRD on host, and returns
// once its control socket answers. On error no BIRD of it runs.
func startBird(host *netnstest.Host, dir, config string) (*Bird, error) {
	b := &Bird{
		Socket:  filepath.Join(dir, "bird.ctl"),
		Config:  filepath.Join(dir, "bird.conf"),
		LogPath: filepath.Join(dir, "bird.log"),
	}
	if err := os.WriteFile(b.Config, []byte(config), 0o644); err != nil {
		return nil, err
	}
	if err := b.start(host); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bird) start(host *netnstest.Host) error {
	logf, err := os.OpenFile(b.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	b.cmd = host.Command(context.Background(), "bird", "-f", "-c", b.Config, "-s", b.Socket,
		"-P", filepath.Join(filepath.Dir(b.Config), "bird.pid"))
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	if err := host.Start(b.cmd); err != nil {
		return fmt.Errorf("bird: %w", err)
	}
	b.exited = make(chan struct{})
	exited := b.exited
	go func() { b.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(birdTimeout)
	for {
		_, err := b.Show("status")
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("bird %s exited (%v):\n%s", b.Config, b.cmd.ProcessState, b.Log())
		default:
		}
		if time.Now().After(deadline) {
			b.Kill()
			return fmt.Errorf("bird %s: no control socket within %v: %v\n%s", b.Config, birdTimeout, err, b.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Show runs `birdc -s SOCKET show WHAT…` and returns its output. birdc
// needs no namespace: the control socket is a file.
func (b *Bird) Show(what ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", b.Socket, "show"}, what...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("birdc show %s: %w: %s", strings.Join(what, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Protocols returns the state of each protocol: the last column of `show
// protocols` ("Established" for a BGP session that is up), by name.
func (b *Bird) Protocols() (map[string]string, error) {
	out, err := b.Show("protocols")
	if err != nil {
		return nil, err
	}
	return parseProtocols(out), nil
}

// parseProtocols reads `birdc show protocols`: a banner, a header line
// starting with "Name", then one line per protocol whose fields are name,
// protocol, table, state, since (a time, and a date once it is older than
// a day) and info, which may have spaces.
func parseProtocols(out string) map[string]string {
	states := map[string]string{}
	header := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "Name" {
			header = true
			continue
		}
		if !header || len(f) < 5 {
			continue
		}
		info := strings.Join(f[5:], " ")
		if info == "" {
			info = f[3] // up, down, start
		}
		states[f[0]] = info
	}
	return states
}

// Log returns what BIRD has logged.
func (b *Bird) Log() string {
	data, _ := os.ReadFile(b.LogPath)
	return string(data)
}

// Kill sends SIGKILL, as a crash would, and waits for the process to go.
func (b *Bird) Kill() error {
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-b.exited
	return nil
}

// The router's configuration: BGP with BFD to every balancer the lab may
// have (the sessions of those not started yet stay down; in a dual-stack
// lab a second one over IPv6, lbNv6), every learnt path of the VIPs merged
// into one ECMP route of the kernel's main table. Short retry and
// error-wait times let a balancer that comes back rejoin within seconds.
// Over IPv6 a neighbour sends a global and a link-local next hop: the
// global one, the balancer's address, makes the route readable.
var routerConfig = template.Must(template.New("router").Parse(`# The lab's router: written by package fleetlab.
log stderr all;
router id {{.Router}};

protocol device {}

protocol bfd {
	interface "eth0" {
		interval 100 ms;
		multiplier 3;
	};
}

protocol kernel {
	merge paths on;
	ipv4 {
		import none;
		export all;
	};
}
{{if .IPv6}}
protocol kernel {
	merge paths on;
	ipv6 {
		import none;
		export all;
	};
}
{{end}}{{range .Balancers}}
protocol bgp {{.Name}} {
	local as {{$.RouterAS}};
	neighbor {{.Addr}} as {{$.BalancerAS}};
	bfd on;
	connect retry time 1;
	error wait time 1, 5;
	ipv4 {
		import all;
		export none;
	};
}
{{if $.IPv6}}
protocol bgp {{.Name}}v6 {
	local as {{$.RouterAS}};
	neighbor {{.Addr6}} as {{$.BalancerAS}};
	bfd on;
	connect retry time 1;
	error wait time 1, 5;
	ipv6 {
		import all;
		export none;
		next hop prefer global;
	};
}
{{end}}{{end}}`))

// The balancers' configuration: the shipped snippet, contrib/bird/caplance.conf,
// and a session to the router from its template, for each family.
var balancerConfig = template.Must(template.New("balancer").Parse(`# Balancer {{.Addr}}: written by package fleetlab.
log stderr all;
router id {{.Addr}};

define CAPLANCE_TABLE = {{.Table}};
define CAPLANCE_PROTOCOL = {{.Protocol}};
define CAPLANCE_LOCAL_AS = {{.BalancerAS}};

protocol device {}

include "{{.Snippet}}";

protocol bgp uplink from caplance_router4 {
	neighbor {{.Router}} as {{.RouterAS}};
}
{{if .IPv6}}
protocol bgp uplink6 from caplance_router6 {
	neighbor {{.Router6}} as {{.RouterAS}};
}
{{end}}`))

// routerBirdConfig is the router's configuration for a lab of up to n
// balancers.
func routerBirdConfig(n int, ipv6 bool) (string, error) {
	type neighbour struct {
		Name        string
		Addr, Addr6 netip.Addr
	}
	var balancers []neighbour
	for i := range n {
		balancers = append(balancers, neighbour{BalancerName(i), BalancerAddr(i), BalancerAddr6(i)})
	}
	var b strings.Builder
	err := routerConfig.Execute(&b, map[string]any{
		"Router": RouterAddr, "RouterAS": RouterAS, "BalancerAS": BalancerAS, "Balancers": balancers, "IPv6": ipv6,
	})
	return b.String(), err
}

// balancerBirdConfig is the configuration of the balancer at addr.
func balancerBirdConfig(addr netip.Addr, ipv6 bool, snippet string) (string, error) {
	var b strings.Builder
	err := balancerConfig.Execute(&b, map[string]any{
		"Addr": addr, "Router": RouterAddr, "Router6": RouterAddr6, "RouterAS": RouterAS, "BalancerAS": BalancerAS,
		"Table": RouteTable, "Protocol": RouteProtocol, "Snippet": snippet, "IPv6": ipv6,
	})
	return b.String(), err
}
