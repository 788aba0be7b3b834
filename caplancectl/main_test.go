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
