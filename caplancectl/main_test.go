package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The binary's exit codes come from ctl.App, not from cli.Main: 3 must
// survive the wiring.
func TestExitCodes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "caplancectl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	noBus := "unix:path=" + filepath.Join(t.TempDir(), "none")
	tests := []struct {
		args       []string
		wantCode   int
		wantStderr string
	}{
		{[]string{"--bus", noBus, "status"}, 3, "systemctl start caplanced"},
		{[]string{"set-weight", "web1", "x"}, 2, `caplancectl: set-weight: weight "x": not a number`},
		// A bad service flag is a usage error before any bus is dialled
		// (this one does not exist).
		{[]string{"--bus", noBus, "add-service", "web", "--vip", "10.0.0.100", "--port", "80,http"}, 2, `caplancectl: add-service: --port: `},
		{[]string{"--bus", noBus, "change-service", "web", "--table-size", "big"}, 2, `caplancectl: change-service: --table-size "big": not a number`},
		{[]string{"--version"}, 0, ""},
	}
	for _, tt := range tests {
		cmd := exec.Command(bin, tt.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		_ = cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != tt.wantCode || !strings.Contains(stderr.String(), tt.wantStderr) {
			t.Errorf("caplancectl %v: exit code %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.wantCode, tt.wantStderr)
		}
	}
}
