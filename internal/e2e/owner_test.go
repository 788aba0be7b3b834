package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caplance/caplance/internal/netnstest"
)

// runCaplanced runs caplanced with args on host to its end and returns its
// output and exit code; one that does not end within 30 s fails the test.
func runCaplanced(t *testing.T, host *netnstest.Host, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := host.Command(ctx, caplancedBin, args...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("caplanced %q still ran after 30s:\n%s", args, out)
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	default:
		t.Fatalf("caplanced %q: %v", args, err)
	}
	return "", 0
}

// A network namespace has one owner of its caplance state, whatever the
// runtime directory: a second caplanced and a --cleanup elsewhere are
// refused while the first lives, which keeps its table, VIP and traffic;
// once it stopped or was killed, the next one starts.
func TestOneCaplancedPerNamespace(t *testing.T) {
	tb := newTestbed(t)
	lb := tb.Balancer
	serving := hostState{vipOn: "eth0", nftTable: true, arpIgnore: "0", arpAnnounce: "0", acceptLocal: "1", journal: true}
	other := t.TempDir()
	otherRun := filepath.Join(other, "run")
	holder := fmt.Sprintf("a caplanced already runs in this network namespace: PID %d, runtime directory %s", lb.PID(), lb.RuntimeDir)

	checkServing := func(t *testing.T) {
		t.Helper()
		got, err := readHostState(tb.LB, lb.RuntimeDir)
		if err != nil {
			t.Fatal(err)
		}
		if got != serving {
			t.Errorf("host state %+v, want %+v", got, serving)
		}
		if served := servedBy(t, tb, 10); len(served) == 0 {
			t.Errorf("no request served")
		}
	}

	t.Run("a second caplanced is refused", func(t *testing.T) {
		out, code := runCaplanced(t, tb.LB, "--config", lb.ConfigPath, "--runtime-dir", otherRun,
			"--state-dir", filepath.Join(other, "state"), "--bus", "none")
		if code != 1 || !strings.Contains(out, "caplanced: "+holder+": stop it first") {
			t.Errorf("second caplanced: exit code %d, output:\n%s\nwant 1 and %q", code, out, holder)
		}
		checkServing(t)
	})

	t.Run("--cleanup elsewhere is refused", func(t *testing.T) {
		out, code := runCaplanced(t, tb.LB, "--cleanup", "--runtime-dir", otherRun)
		if code != 1 || !strings.Contains(out, "caplanced: --cleanup refused, nothing changed: "+holder) {
			t.Errorf("--cleanup: exit code %d, output:\n%s\nwant 1 and %q", code, out, holder)
		}
		checkServing(t)
	})

	t.Run("--cleanup of its own runtime directory is refused", func(t *testing.T) {
		out, code := runCaplanced(t, tb.LB, "--cleanup", "--runtime-dir", lb.RuntimeDir)
		if code != 1 || !strings.Contains(out, holder) {
			t.Errorf("--cleanup: exit code %d, output:\n%s\nwant 1 and %q", code, out, holder)
		}
		checkServing(t)
	})

	t.Run("after a stop the next one starts", func(t *testing.T) {
		if err := lb.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := lb.Restart(tb.LB, caplancedBin); err != nil {
			t.Fatal(err)
		}
		checkServing(t)
	})

	t.Run("after SIGKILL the next one starts", func(t *testing.T) {
		if err := lb.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := lb.Restart(tb.LB, caplancedBin); err != nil {
			t.Fatal(err)
		}
		checkServing(t)
	})
}
