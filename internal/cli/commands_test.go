package cli_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// buildCommands builds the three real binaries once, with a version stamped
// the way the Makefile does it.
func buildCommands(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir,
		"-ldflags", "-X github.com/caplance/caplance/internal/version.Version=9.8.7-test",
		"../../caplanced", "../../caplancectl", "../../caplance-healthd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

func TestCommands(t *testing.T) {
	bin := buildCommands(t)
	work := t.TempDir()
	good := filepath.Join(work, "good.toml")
	bad := filepath.Join(work, "bad.toml")
	writeFile(t, good, "[balancer]\n[[service]]\nname = \"web\"\nvips = [\"10.0.0.100\"]\n")
	writeFile(t, bad, "[balancer]\nvips = [\"10.0.0.300\"]\nencap_port = \"5555\"\ncolour = \"blue\"\n[[backend]]\nname = \"web1\"\naddress = \"10.0.1.300\"\n")

	tests := []struct {
		name       string
		cmd        []string
		env        []string
		wantCode   int
		wantStdout string
		wantStderr string // substring, "" means stderr must be empty
	}{
		{name: "caplanced version", cmd: []string{"caplanced", "--version"}, wantStdout: "caplanced 9.8.7-test\n"},
		{name: "caplancectl version", cmd: []string{"caplancectl", "--version"}, wantStdout: "caplancectl 9.8.7-test\n"},
		{name: "healthd version", cmd: []string{"caplance-healthd", "--version"}, wantStdout: "caplance-healthd 9.8.7-test\n"},
		{name: "check good config", cmd: []string{"caplanced", "--check-config", "--config", good}, wantStdout: "ok\n"},
		{name: "check bad config: every error with its line", cmd: []string{"caplanced", "--check-config", "--config", bad},
			env: []string{"CAPLANCED_BALANCER_WORKERS=many"}, wantCode: 1,
			wantStderr: "caplanced: " + bad + `: line 2: balancer: vips: "10.0.0.300": not an IP address` + "\n" +
				"caplanced: " + bad + `: line 3: balancer.encap_port: must be an integer, not a string` + "\n" +
				"caplanced: " + bad + `: line 4: unknown key "balancer.colour"` + "\n" +
				"caplanced: " + bad + `: line 7: backend "web1": address "10.0.1.300": not an IP address` + "\n" +
				`caplanced: environment CAPLANCED_BALANCER_WORKERS: "many": not an integer` + "\n"},
		{name: "check-config with cleanup", cmd: []string{"caplanced", "--check-config", "--cleanup", "--config", good}, wantCode: 2,
			wantStderr: "caplanced: --check-config and --cleanup cannot be used together\nRun 'caplanced --help' for usage.\n"},
		{name: "check config with environment override", cmd: []string{"caplanced", "--check-config", "--config", good},
			env: []string{"CAPLANCED_BALANCER_ENCAP_PORT=0"}, wantCode: 1, wantStderr: "encap_port 0: must be between 1 and 65535"},
		{name: "check missing config", cmd: []string{"caplanced", "--check-config", "--config", filepath.Join(work, "none.toml")},
			wantCode: 1, wantStderr: "no such file or directory"},
		{name: "caplanced stray argument", cmd: []string{"caplanced", "extra"}, wantCode: 2, wantStderr: `unexpected argument "extra"`},
		{name: "caplanced bad flag", cmd: []string{"caplanced", "--bogus"}, wantCode: 2, wantStderr: "caplanced: unknown flag: --bogus\n"},
		{name: "caplanced typed flag error", cmd: []string{"caplanced", "--stop-timeout", "5"}, wantCode: 2,
			wantStderr: `caplanced: --stop-timeout "5": not a duration: want a number with a unit, such as 5s, 1m30s or 500ms` + "\n"},
		{name: "healthd bad flag", cmd: []string{"caplance-healthd", "--bogus"}, wantCode: 2, wantStderr: "caplance-healthd: unknown flag: --bogus\n"},
		{name: "caplancectl bad flag", cmd: []string{"caplancectl", "--bogus", "status"}, wantCode: 2, wantStderr: "caplancectl: unknown flag: --bogus\n"},
		{name: "caplancectl mistyped verb", cmd: []string{"caplancectl", "stauts"}, wantCode: 2, wantStderr: `caplancectl: unknown command "stauts" (did you mean stats or status?)` + "\n"},
		{name: "caplancectl without command", cmd: []string{"caplancectl"}, wantCode: 2, wantStderr: "missing command"},
		{name: "caplancectl unknown command", cmd: []string{"caplancectl", "frobnicate"}, wantCode: 2, wantStderr: `unknown command "frobnicate"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runBinary(t, bin, tt.env, tt.cmd...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if diff := cmp.Diff(tt.wantStdout, stdout); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			if (tt.wantStderr == "") != (stderr == "") || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tt.wantStderr)
			}
		})
	}
	entries, err := os.ReadDir(work)
	if err != nil || len(entries) != 2 {
		t.Errorf("--check-config touched the config directory: %v %v", entries, err)
	}
}

// caplanced --check-config on a file of the single-pool form prints, after
// ok, the file in the services form, which it accepts too.
func TestCheckConfigServicesForm(t *testing.T) {
	bin := buildCommands(t)
	work := t.TempDir()
	old, again := filepath.Join(work, "old.toml"), filepath.Join(work, "new.toml")
	writeFile(t, old, "[balancer]\nvips = [\"10.0.0.100\"]\nencap_port = 6000\n[[backend]]\nname = \"web1\"\naddress = \"10.0.1.11\"\n")
	code, stdout, stderr := runBinary(t, bin, nil, "caplanced", "--check-config", "--config", old)
	want := `ok

# This file is in the single-pool form (balancer.vips, [balancer.ports] and
# [[backend]]): one service named "default". Here is the equivalent file in
# the services form of caplanced.toml(5), with the keys at their default
# left out.

[balancer]
encap_port = 6000

[[service]]
name = "default"
vips = ["10.0.0.100"]

[[service.backend]]
name = "web1"
address = "10.0.1.11"
`
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if diff := cmp.Diff(want, stdout); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	writeFile(t, again, strings.TrimPrefix(stdout, "ok\n"))
	if code, stdout, stderr := runBinary(t, bin, nil, "caplanced", "--check-config", "--config", again); code != 0 || stdout != "ok\n" || stderr != "" {
		t.Errorf("--check-config of the services form: exit %d, stdout %q, stderr %q; want 0, \"ok\\n\", none", code, stdout, stderr)
	}
}

// synopsisFlag is a flag and its value's name in a synopsis.
var synopsisFlag = regexp.MustCompile(`--[a-z-]+( [A-Z]+)?`)

func TestCommandsHelp(t *testing.T) {
	bin := buildCommands(t)
	for _, name := range []string{"caplanced", "caplancectl", "caplance-healthd"} {
		t.Run(name, func(t *testing.T) {
			code, stdout, _ := runBinary(t, bin, nil, name, "--help")
			if code != 0 || !strings.HasPrefix(stdout, "Usage: "+name) || !strings.Contains(stdout, "See "+name+"(8).") {
				t.Errorf("--help: exit %d, output:\n%s", code, stdout)
			}
			// Each flag of the synopsis is spelled the same in the list.
			synopsis, flags, _ := strings.Cut(stdout, "\nFlags:\n")
			synopsis, _, _ = strings.Cut(synopsis, "\n")
			for _, f := range synopsisFlag.FindAllString(synopsis, -1) {
				if !strings.Contains(flags, "  "+f+"  ") {
					t.Errorf("the synopsis has %q, the flags' list does not:\n%s", f, stdout)
				}
			}
		})
	}
}

func runBinary(t *testing.T, bin string, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, args[0]), args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
