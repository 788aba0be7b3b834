// Package units checks the system integration files in packaging/ with
// systemd's own tools: the units with systemd-analyze verify and
// systemd-analyze security --offline=true (whose exposure must stay within
// bounds and match docs/security.md, which `make security-doc` writes), the
// sysusers.d and tmpfiles.d entries with systemd-sysusers and
// systemd-tmpfiles on a scratch root. It has only tests.
//
// systemd-analyze verify checks that every Exec*= binary exists, as seen
// from --root, and pulls in the default dependencies of a service
// (sysinit.target, basic.target, shutdown.target); the scratch root holds
// stubs of those targets, of the WantedBy= and After= targets, and
// executable stubs at the ExecStart=, ExecReload= and ExecStopPost= paths.
// --man=no: the man pages are not installed here. Warnings (unknown keys,
// bad values) do not change verify's exit status, so any output fails the
// test.
package units

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/metrics"
)

const (
	unitDir     = "../../packaging/systemd"
	sysusersDir = "../../packaging/sysusers.d"
	tmpfilesDir = "../../packaging/tmpfiles.d"
	securityDoc = "../../docs/security.md"
)

// maxExposure is the highest systemd-analyze security exposure each unit may
// have (issue 6). caplanced's was 2.0 until the AF_XDP data path (issue 14)
// needed bpf(2) (0.2: systemd rates an allowed @privileged call), CAP_BPF
// (0.1) and AF_XDP (0.3: an "exotic" family to systemd): 2.3.
var maxExposure = map[string]float64{
	"caplanced.service":        2.3,
	"caplance-healthd.service": 1.5,
}

// execPaths are the commands the units run, where the packages install them.
var execPaths = []string{"/usr/sbin/caplanced", "/usr/sbin/caplance-healthd", "/bin/kill"}

// stubTargets are the units the services depend on that systemd provides.
var stubTargets = []string{"sysinit.target", "basic.target", "shutdown.target", "network-online.target", "multi-user.target"}

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed (Debian package systemd): %v", name, err)
	}
	return p
}

// units are every unit shipped: the services and their sockets.
func units(t *testing.T) []string {
	t.Helper()
	return unitsLike(t, "*.service", "*.socket")
}

// services are the service units, which systemd-analyze security rates.
func services(t *testing.T) []string {
	t.Helper()
	return unitsLike(t, "*.service")
}

func unitsLike(t *testing.T, patterns ...string) []string {
	t.Helper()
	var paths []string
	for _, pattern := range patterns {
		found, err := filepath.Glob(filepath.Join(unitDir, pattern))
		if err != nil || len(found) == 0 {
			t.Fatalf("no %s units in %s: %v", pattern, unitDir, err)
		}
		paths = append(paths, found...)
	}
	var names []string
	for _, p := range paths {
		names = append(names, filepath.Base(p))
	}
	return names
}

// scratchRoot returns a root with the units installed, stub targets and
// stub executables.
func scratchRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	sysDir := filepath.Join(root, "usr/lib/systemd/system")
	if err := os.MkdirAll(sysDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range units(t) {
		data, err := os.ReadFile(filepath.Join(unitDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sysDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, target := range stubTargets {
		stub := fmt.Sprintf("[Unit]\nDescription=stub %s\n", target)
		if err := os.WriteFile(filepath.Join(sysDir, target), []byte(stub), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range execPaths {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestVerify(t *testing.T) {
	analyze := tool(t, "systemd-analyze")
	root := scratchRoot(t)
	args := append([]string{"verify", "--root=" + root, "--man=no"}, units(t)...)
	out, err := exec.Command(analyze, args...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze %s: %v\n%s", strings.Join(args, " "), err, out)
	}

	// The check itself works: a missing binary and an unknown key are caught.
	if err := os.Remove(filepath.Join(root, "usr/sbin/caplanced")); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command(analyze, "verify", "--root="+root, "--man=no", "caplanced.service").CombinedOutput()
	if !strings.Contains(string(out), "/usr/sbin/caplanced is not executable") {
		t.Errorf("verify did not notice a missing ExecStart= binary:\n%s", out)
	}
}

// TestUnitsMatchDaemons guards the lines the daemons' code depends on.
func TestUnitsMatchDaemons(t *testing.T) {
	for name, want := range map[string][]string{
		"caplanced.service": {
			"Type=notify", "NotifyAccess=main", "ExecStart=/usr/sbin/caplanced",
			"ExecReload=/bin/kill -HUP $MAINPID", "ExecStopPost=/usr/sbin/caplanced --cleanup",
			"Restart=on-failure", "User=caplance", "RuntimeDirectory=caplance",
			"RuntimeDirectoryPreserve=yes", "StateDirectory=caplance",
			"AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN CAP_BPF", "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN CAP_BPF",
			"ReadWritePaths=/proc/sys/net/ipv4/conf",
			"RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6 AF_PACKET AF_XDP", "SystemCallFilter=bpf",
			"LimitMEMLOCK=512M",
		},
		"caplance-healthd.service": {
			"Type=notify", "NotifyAccess=main", "ExecStart=/usr/sbin/caplance-healthd",
			"Restart=on-failure", "User=caplance-health", "Wants=caplanced.service", "After=caplanced.service",
			"AmbientCapabilities=CAP_NET_RAW", "CapabilityBoundingSet=CAP_NET_RAW",
		},
	} {
		lines := unitLines(t, name)
		for _, w := range want {
			if !lines[w] {
				t.Errorf("%s: no line %q", name, w)
			}
		}
		// WatchdogSec must leave the daemon room: it pings at half of it.
		found := false
		for l := range lines {
			if v, ok := strings.CutPrefix(l, "WatchdogSec="); ok {
				found = true
				if s, err := strconv.Atoi(strings.TrimSuffix(v, "s")); err != nil || s < 4 {
					t.Errorf("%s: %s, want whole seconds, at least 4", name, l)
				}
			}
		}
		if !found {
			t.Errorf("%s: no WatchdogSec=", name)
		}
	}
}

// The metrics sockets: loopback only, named as the daemons look for them,
// and tied to their daemon's lifecycle (caplanced(8), METRICS).
func TestMetricsSockets(t *testing.T) {
	for name, daemon := range map[string]string{
		"caplanced-metrics.socket":        "caplanced.service",
		"caplance-healthd-metrics.socket": "caplance-healthd.service",
	} {
		lines := unitLines(t, name)
		for _, w := range []string{
			"FileDescriptorName=" + metrics.FDName, "Service=" + daemon, "PartOf=" + daemon, "WantedBy=" + daemon,
			"IPAddressDeny=any", "IPAddressAllow=localhost", "BindIPv6Only=ipv6-only",
		} {
			if !lines[w] {
				t.Errorf("%s: no line %q", name, w)
			}
		}
		loopback := false
		for l := range lines {
			if addr, ok := strings.CutPrefix(l, "ListenStream="); ok {
				ap, err := netip.ParseAddrPort(addr)
				loopback = err == nil && ap.Addr().IsLoopback()
			}
		}
		if !loopback {
			t.Errorf("%s: ListenStream= is not a loopback address and port", name)
		}
		// The daemon must not pull the socket in itself (Sockets= implies
		// Wants=): shipped disabled means off until enabled.
		for l := range unitLines(t, daemon) {
			if strings.HasPrefix(l, "Sockets=") {
				t.Errorf("%s: %s starts the socket even when it is not enabled", daemon, l)
			}
		}
	}
}

func unitLines(t *testing.T, name string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(unitDir, name))
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]bool{}
	for l := range strings.Lines(string(data)) {
		lines[strings.TrimSpace(l)] = true
	}
	return lines
}

var overallRE = regexp.MustCompile(`Overall exposure level for (\S+): (\d+\.\d)`)

// exposure runs systemd-analyze security --offline=true on the unit and
// returns its overall exposure and the lines of what is still exposed.
func exposure(t *testing.T, name string) (float64, []string) {
	t.Helper()
	analyze := tool(t, "systemd-analyze")
	cmd := exec.Command(analyze, "security", "--offline=true", filepath.Join(unitDir, name))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security %s: %v\n%s", name, err, out)
	}
	m := overallRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security %s: no overall exposure in:\n%s", name, out)
	}
	v, err := strconv.ParseFloat(string(m[2]), 64)
	if err != nil {
		t.Fatal(err)
	}
	var exposed []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "✗") {
			exposed = append(exposed, sc.Text())
		}
	}
	return v, exposed
}

func TestSecurityExposure(t *testing.T) {
	for _, name := range services(t) {
		limit, ok := maxExposure[name]
		if !ok {
			t.Errorf("%s: no exposure limit in maxExposure", name)
			continue
		}
		v, exposed := exposure(t, name)
		t.Logf("%s: exposure %.1f (limit %.1f)", name, v, limit)
		if v > limit {
			t.Errorf("%s: systemd-analyze security exposure %.1f, want at most %.1f; exposed:\n%s",
				name, v, limit, strings.Join(exposed, "\n"))
		}
	}
}

// docFigureRE matches a row of the generated table in docs/security.md.
var docFigureRE = regexp.MustCompile(`(?m)^\| (\S+\.service) \| (\d+\.\d) \|`)

// docs/security.md shows the current figures: `make security-doc` after a
// change to a unit. Skipped when this systemd is not the one the document
// was written with (scores differ between versions).
func TestSecurityDocIsCurrent(t *testing.T) {
	doc, err := os.ReadFile(securityDoc)
	if err != nil {
		t.Fatal(err)
	}
	analyze := tool(t, "systemd-analyze")
	version, err := exec.Command(analyze, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(version), "\n")
	if !strings.Contains(string(doc), first) {
		t.Skipf("docs/security.md was written with another systemd than %q", first)
	}
	figures := map[string]string{}
	for _, m := range docFigureRE.FindAllStringSubmatch(string(doc), -1) {
		figures[m[1]] = m[2]
	}
	for _, name := range services(t) {
		v, _ := exposure(t, name)
		if got, want := figures[name], fmt.Sprintf("%.1f", v); got != want {
			t.Errorf("docs/security.md: %s exposure %q, systemd-analyze says %s: run make security-doc", name, got, want)
		}
	}
}

func TestSysusersAndTmpfiles(t *testing.T) {
	sysusers, tmpfiles := tool(t, "systemd-sysusers"), tool(t, "systemd-tmpfiles")
	if os.Geteuid() != 0 {
		t.Skip("systemd-tmpfiles needs root to give a directory its owner")
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf, err := filepath.Abs(filepath.Join(sysusersDir, "caplance.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sysusers, "--root="+root, conf).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	group, err := os.ReadFile(filepath.Join(root, "etc/group"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"caplance", "caplance-health"} {
		if !regexp.MustCompile(`(?m)^` + u + `:x:\d+:\d+:[^:]*:[^:]*:/usr/sbin/nologin$`).Match(passwd) {
			t.Errorf("no system user %s with a nologin shell in:\n%s", u, passwd)
		}
	}
	for _, g := range []string{"caplance", "caplance-health", "caplance-admin"} {
		if !regexp.MustCompile(`(?m)^` + g + `:x:\d+:`).Match(group) {
			t.Errorf("no group %s in:\n%s", g, group)
		}
	}

	tconf, err := filepath.Abs(filepath.Join(tmpfilesDir, "caplance.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(tmpfiles, "--root="+root, "--create", tconf).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-tmpfiles --create: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(root, "var/lib/caplance"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o750 || !fi.IsDir() {
		t.Errorf("/var/lib/caplance: mode %v, want a directory, 0750 (as StateDirectoryMode=)", fi.Mode())
	}
	m := regexp.MustCompile(`(?m)^caplance:x:(\d+):(\d+):`).FindSubmatch(passwd)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && m != nil {
		if got, want := fmt.Sprintf("%d:%d", st.Uid, st.Gid), string(m[1])+":"+string(m[2]); got != want {
			t.Errorf("/var/lib/caplance: owner %s, want caplance's %s", got, want)
		}
	}
	if !unitLines(t, "caplanced.service")["StateDirectoryMode=0750"] {
		t.Error("caplanced.service: StateDirectoryMode= differs from the tmpfiles.d entry (0750)")
	}
}

// TestStopTimeoutCoversWithdrawDelay: systemd must not kill a routed
// caplanced in the middle of its stop: it withdraws its routes, forwards
// for withdraw_delay, then cleans up within --stop-timeout (5 s by default).
// caplanced.toml(5) tells operators who raise withdraw_delay to raise
// TimeoutStopSec in a drop-in.
func TestStopTimeoutCoversWithdrawDelay(t *testing.T) {
	const stopTimeout = 5 * time.Second
	for l := range unitLines(t, "caplanced.service") {
		v, ok := strings.CutPrefix(l, "TimeoutStopSec=")
		if !ok {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		if need := config.DefaultWithdrawDelay + stopTimeout; d <= need {
			t.Errorf("%s: want more than withdraw_delay (%s) + --stop-timeout (%s)", l, config.DefaultWithdrawDelay, stopTimeout)
		}
		return
	}
	t.Error("caplanced.service: no TimeoutStopSec=")
}
