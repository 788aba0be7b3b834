package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The binary's exit codes: 2 usage (a bad --bus among them), 1 failed
// (among them no bus at all, with its own message); 3 (a working bus
// without caplanced) is TestOverBus's, in package ctl.
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
		{[]string{"--bus", noBus, "status"}, 1, "caplancectl: no bus at \"" + noBus + "\" (dial unix "},
		{[]string{"status", "--bus", noBus}, 1, "caplancectl: no bus at \"" + noBus + "\" (dial unix "},
		{[]string{"list", "--bus", "bogus"}, 2, "caplancectl: --bus \"bogus\": not a D-Bus address"},
		{[]string{"set-weight", "web1", "x"}, 2, `caplancectl: set-weight: weight "x": not a number`},
		// A bad service flag is a usage error before any bus is dialled
		// (this one does not exist).
		{[]string{"--bus", noBus, "add-service", "web", "--vip", "10.0.0.100", "--port", "80,http"}, 2, `caplancectl: add-service: --port: `},
		{[]string{"--bus", noBus, "change-service", "web", "--table-size", "big"}, 2, `caplancectl: change-service: --table-size "big": not a number`},
		{[]string{"--version"}, 0, ""},
		// No system bus at all: its own message, not "is caplanced running?".
		{[]string{"drain", "web1"}, 1, "caplancectl: no system bus at \"" + noBus + "\" (dial unix "},
	}
	for _, tt := range tests {
		cmd := exec.Command(bin, tt.args...)
		cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+noBus)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		_ = cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != tt.wantCode || !strings.Contains(stderr.String(), tt.wantStderr) ||
			strings.Contains(stderr.String(), "caplanced running") {
			t.Errorf("caplancectl %v: exit code %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), tt.wantCode, tt.wantStderr)
		}
	}
}
