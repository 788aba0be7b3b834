package healthd

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/cmdtest"
	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/registry"
)

// TestExecChecksBinary runs the real caplance-healthd as the shipped unit
// does (user caplance-health, CAP_NET_RAW ambient) against caplanced's API
// on a private bus: the exec checks of caplanced.toml's backends run with
// no capabilities and an environment of their own while caplance-healthd
// keeps CAP_NET_RAW; of the backends added over D-Bus, one whose program is
// in exec_dir runs, one running /bin/sh is refused, reported down with the
// reason, and never runs.
func TestExecChecksBinary(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	// caplance-health must reach the files; root owns them all.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	execDir := filepath.Join(dir, "checks.d")
	ranDir := filepath.Join(dir, "ran") // where a program that should not run would leave a mark
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{execDir, 0o755}, {ranDir, 0o777}} {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
	}
	installed := filepath.Join(execDir, "ok")
	if err := os.WriteFile(installed, []byte("#!/bin/sh\necho installed check\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "caplance-healthd.toml")
	conf := fmt.Sprintf("exec_dir = %q\n[defaults]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\njitter = \"0s\"\n", execDir)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	fromFile := func(name, address, spec string) config.Backend {
		return config.Backend{Name: name, Address: netip.MustParseAddr(address), Weight: 100, Check: spec}
	}
	e.startCaplanced(
		fromFile("caps", "10.0.1.11", "exec:///bin/grep?arg="+url.QueryEscape("^Cap")+"&arg=/proc/self/status"),
		fromFile("env", "10.0.1.12", "exec:///usr/bin/env"),
	)
	shell := filepath.Join(ranDir, "shell")
	for _, b := range []struct{ name, address, spec string }{
		{"shell", "10.0.1.13", "exec:///bin/sh?arg=-c&arg=" + url.QueryEscape("touch "+shell)},
		{"installed", "10.0.1.14", "exec://" + installed},
	} {
		if _, err := e.registry().Add(b.name, b.address, registry.AddOptions{Check: b.spec, Runtime: true}); err != nil {
			t.Fatal(err)
		}
	}

	pid := runHealthdAs(t, e, cfg)

	e.waitFor("caps to be reported", 5*time.Second, func() bool { return strings.HasPrefix(e.health("caps"), "up: ") })
	caps := map[string]string{}
	for _, m := range regexp.MustCompile(`(Cap\w+): ([0-9a-f]{16})`).FindAllStringSubmatch(e.health("caps"), -1) {
		caps[m[1]] = m[2]
	}
	for _, set := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
		if caps[set] != "0000000000000000" {
			t.Errorf("the exec check ran with %s %q, want none (%s)", set, caps[set], e.health("caps"))
		}
	}
	// caplance-healthd itself keeps CAP_NET_RAW (bit 13) permitted and
	// effective on every thread, for tunnel checks. (Not ambient: a thread
	// that started a program has none, and it runs nothing else.)
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("the threads of caplance-healthd: %v, %v", tasks, err)
	}
	for _, task := range tasks {
		status, err := os.ReadFile(task)
		if err != nil {
			continue // the thread has ended
		}
		for _, set := range []string{"CapPrm", "CapEff"} {
			m := regexp.MustCompile(`(?m)^` + set + `:\s+([0-9a-f]+)$`).FindSubmatch(status)
			if m == nil || string(m[1]) != "0000000000002000" {
				t.Errorf("%s: %s %q, want CAP_NET_RAW (0000000000002000)", task, set, m)
			}
		}
	}

	e.waitHealth("env", "up: exec: exit status 0: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; "+
		"CAPLANCE_BACKEND_NAME=env; CAPLANCE_BACKEND_ADDRESS=10.0.1.12 after 1 try", 5*time.Second)
	e.waitHealth("installed", "up: exec: exit status 0: installed check after 1 try", 5*time.Second)
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	refused := "exec check refused: /bin/sh is not under " + execDir +
		" (exec_dir in caplance-healthd.toml); backends added over D-Bus may run only programs there"
	if sh != "/bin/sh" {
		refused += " (it resolves to " + sh + ")"
	}
	e.waitHealth("shell", "down: "+refused, 5*time.Second)
	time.Sleep(settle) // several intervals: a check that ran would have left its mark
	if _, err := os.Stat(shell); !os.IsNotExist(err) {
		t.Errorf("the refused program ran: %s: %v", shell, err)
	}
}

// runHealthdAs runs the caplance-healthd binary with the configuration
// cfg on e's bus as the unit does: as caplance-health, with CAP_NET_RAW
// inheritable and ambient, and a variable in its environment that no
// check may see. It returns its pid; the test's cleanup stops it (SIGTERM)
// and fails unless it exits 0.
func runHealthdAs(t *testing.T, e *env, cfg string) int {
	t.Helper()
	log := &logBuffer{}
	cmd := exec.CommandContext(context.Background(), "setpriv",
		"--reuid=caplance-health", "--regid=caplance-health", "--init-groups",
		"--inh-caps=+net_raw", "--ambient-caps=+net_raw",
		cmdtest.Binary(t, "caplance-healthd"), "--config", cfg, "--bus", e.bus.Address)
	cmd.Env = append(os.Environ(), "CAPLANCE_TEST_SECRET=leaked")
	cmd.Stdout, cmd.Stderr = log, log
	// Registered first, so it runs after the stop and sees how it went.
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("caplance-healthd's log:\n%s", log.String())
		}
	})
	cmdtest.Start(t, cmd, log.String)
	return cmd.Process.Pid
}
