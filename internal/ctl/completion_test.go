package ctl

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"

	"github.com/caplance/caplance/internal/cli"
)

var update = flag.Bool("update", false, "rewrite contrib/completions from the generator")

// completionFiles are the checked-in scripts, by shell, in contrib/completions.
var completionFiles = map[string]string{
	"bash": "caplancectl.bash",
	"zsh":  "_caplancectl",
	"fish": "caplancectl.fish",
}

// helperEnv makes the test binary caplancectl itself, for the completion
// scripts to call: see completionHelper.
const helperEnv = "CAPLANCECTL_TEST_AS_CAPLANCECTL"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(completionHelper(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// completionHelper is caplancectl with a caplanced that has the services
// and backends of serviceRows and backendRows on every bus but a "unix:"
// address, which it dials for real.
func completionHelper(args []string) int {
	app := &App{Dial: func(bus string) (Conn, error) {
		if strings.HasPrefix(bus, "unix:") {
			return DialBus(bus)
		}
		return &fakeConn{replies: map[string]fakeReply{
			"org.caplance.Caplance1.Manager.ListBackends": {body: []any{backendRows}},
			"org.caplance.Caplance1.Manager.ListServices": {body: []any{serviceRows}},
		}}, nil
	}}
	return app.Execute(args, os.Stdout, os.Stderr)
}

// generatedScript is what "caplancectl completion SHELL" prints.
func generatedScript(t *testing.T, shell string) string {
	t.Helper()
	code, stdout, stderr := run(t, nil, "completion", shell) // no bus: run fails the test if dialled
	if code != cli.ExitOK || stderr != "" || stdout == "" {
		t.Fatalf("caplancectl completion %s: exit code %d, stderr %q, %d bytes of script", shell, code, stderr, len(stdout))
	}
	return stdout
}

// TestCompletionFiles fails when a script in contrib/completions is not
// what the generator makes of the current command table.
func TestCompletionFiles(t *testing.T) {
	if len(completionFiles) != len(shells) {
		t.Errorf("completionFiles has %d shells, caplancectl %d", len(completionFiles), len(shells))
	}
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			file := completionFiles[shell]
			path := filepath.Join("..", "..", "contrib", "completions", file)
			want := generatedScript(t, shell)
			if *update {
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Logf("wrote %s", path)
				return
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v; to make it, from the repository root run:\n\tgo run ./caplancectl completion %s > contrib/completions/%s", err, shell, file)
			}
			if string(got) != want {
				t.Errorf("contrib/completions/%s is out of date (%s); from the repository root run:\n"+
					"\tgo run ./caplancectl completion %s > contrib/completions/%s\n"+
					"or regenerate all with: go test ./internal/ctl -run TestCompletionFiles -update",
					file, firstDifference(string(got), want), shell, file)
			}
		})
	}
}

// firstDifference says where the checked-in got first differs from want.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) && i < len(w); i++ {
		if g[i] != w[i] {
			return fmt.Sprintf("line %d is %q, the generator's %q", i+1, g[i], w[i])
		}
	}
	return fmt.Sprintf("it has %d lines, the generator's %d", len(g), len(w))
}

// TestCompletionSyntax runs each shell's syntax check on its script, where
// that shell is installed.
func TestCompletionSyntax(t *testing.T) {
	check := map[string][]string{"bash": {"-n"}, "zsh": {"-n"}, "fish": {"--no-execute"}}
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			script := generatedScript(t, shell) // generated whether or not the shell is here
			bin, err := exec.LookPath(shell)
			if err != nil {
				t.Logf("%s is not installed: the syntax of its script is NOT checked (only its generation and currency are)", shell)
				return
			}
			path := filepath.Join(t.TempDir(), completionFiles[shell])
			if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, append(check[shell], path)...).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("%s %s %s: %v\n%s", shell, strings.Join(check[shell], " "), completionFiles[shell], err, out)
			}
		})
	}
}

// complete is what "caplancectl __complete WORDS…" offers, the call each
// shell's script makes on TAB (words: the line after the program name, the
// last the word being completed), without descriptions, and the directive.
func complete(t *testing.T, app *App, words ...string) (offered []string, directive string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := app.Execute(append([]string{cobra.ShellCompRequestCmd}, words...), &stdout, &stderr); code != cli.ExitOK {
		t.Fatalf("__complete %q: exit code %d, stderr %q", words, code, stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	for _, l := range lines[:len(lines)-1] {
		name, _, _ := strings.Cut(l, "\t")
		offered = append(offered, name)
	}
	return offered, lines[len(lines)-1]
}

// TestComplete checks what TAB offers, with a caplanced that has the
// services and backends of serviceRows and backendRows, asked on each
// TAB (the calls counted).
func TestComplete(t *testing.T) {
	var allCommands []string
	for _, c := range commands {
		allCommands = append(allCommands, c.name)
	}
	allCommands = append(allCommands, "completion", "help")
	slices.Sort(allCommands)
	const noFiles = ":4"
	tests := []struct {
		words     []string
		want      []string
		wantCalls []string
		wantBus   string // dialled, if any call
	}{
		{words: []string{""}, want: allCommands},
		{words: []string{"dr"}, want: []string{"drain"}},
		{words: []string{"re"}, want: []string{"reload", "remove-backend", "remove-service"}},
		{words: []string{"--bus", ""}, want: []string{"system", "session"}},
		{words: []string{"--bus", "session", "st"}, want: []string{"stats", "status"}},
		{words: []string{"add-service", "web", "--proto", ""}, want: []string{"tcp", "udp", "tcp+udp"}},
		{words: []string{"add-service", "web", "--hash", "source"}, want: []string{"5-tuple", "source-ip", "source-ip-port"}}, // the shell filters
		{words: []string{"add-service", ""}},                                                                                  // a new name: none offered
		{words: []string{"add-service", "web", "--vip", ""}},
		{words: []string{"add-backend", ""}},
		{words: []string{"add-backend", "--weight", ""}},
		{words: []string{"maintenance", ""}, want: []string{"on", "off"}},
		{words: []string{"completion", ""}, want: []string{"bash", "zsh", "fish"}},
		{words: []string{"frobnicate", ""}},
		{words: []string{"help", ""}, want: slices.DeleteFunc(slices.Clone(allCommands), func(c string) bool { return c == "help" })},
		{words: []string{"help", "drain", ""}},
		{words: []string{"show-service", ""}, want: []string{"web", "dns"}, wantCalls: []string{"ListServices"}, wantBus: "system"},
		{words: []string{"change-service", "w"}, want: []string{"web", "dns"}, wantCalls: []string{"ListServices"}, wantBus: "system"},
		{words: []string{"remove-service", "--bus", "session", "d"}, want: []string{"web", "dns"}, wantCalls: []string{"ListServices"}, wantBus: "session"},
		{words: []string{"drain", "--service", ""}, want: []string{"web", "dns"}, wantCalls: []string{"ListServices"}, wantBus: "system"},
		{words: []string{"list", "--service", ""}, want: []string{"web", "dns"}, wantCalls: []string{"ListServices"}, wantBus: "system"},
		{words: []string{"add-backend", "web9", "--service", ""}, want: []string{"web", "dns"}, wantCalls: []string{"ListServices"}, wantBus: "system"},
		{words: []string{"drain", ""}, want: []string{"dns1", "web-1", "web2"}, wantCalls: []string{"ListBackends"}, wantBus: "system"},
		{words: []string{"--bus=unix:path=/x", "undrain", ""}, want: []string{"dns1", "web-1", "web2"}, wantCalls: []string{"ListBackends"}, wantBus: "unix:path=/x"},
		{words: []string{"show", ""}, want: []string{"dns1", "web-1", "web2"}, wantCalls: []string{"ListBackends"}, wantBus: "system"},
		{words: []string{"remove-backend", ""}, want: []string{"dns1", "web-1", "web2"}, wantCalls: []string{"ListBackends"}, wantBus: "system"},
		{words: []string{"set-weight", ""}, want: []string{"dns1", "web-1", "web2"}, wantCalls: []string{"ListBackends"}, wantBus: "system"},
		{words: []string{"set-weight", "web2", ""}}, // the weight
		{words: []string{"drain", "web2", ""}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.words, " ")+"<TAB>", func(t *testing.T) {
			f := &fakeConn{t: t, replies: map[string]fakeReply{
				"org.caplance.Caplance1.Manager.ListBackends": {body: []any{backendRows}},
				"org.caplance.Caplance1.Manager.ListServices": {body: []any{serviceRows}},
			}}
			var bus string
			app := &App{Dial: func(b string) (Conn, error) { bus = b; return f, nil }}
			got, directive := complete(t, app, tt.words...)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("offered (-want +got):\n%s", diff)
			}
			if directive != noFiles {
				t.Errorf("directive %s, want %s (no file names)", directive, noFiles)
			}
			var calls []string
			for _, c := range f.calls {
				calls = append(calls, strings.TrimPrefix(c, "org.caplance.Caplance1 /org/caplance/Caplance1 org.caplance.Caplance1.Manager."))
			}
			if diff := cmp.Diff(tt.wantCalls, calls); diff != "" || bus != tt.wantBus {
				t.Errorf("dialled %q, want %q; calls (-want +got):\n%s", bus, tt.wantBus, diff)
			}
		})
	}
	// caplanced not running: nothing, silently.
	noBus := "unix:path=" + filepath.Join(t.TempDir(), "none")
	if got, directive := complete(t, &App{}, "--bus", noBus, "drain", ""); got != nil || directive != noFiles {
		t.Errorf("without caplanced: offered %q, directive %s; want none, %s", got, directive, noFiles)
	}
}

// TestCompletionFish completes with the generated fish script, which
// calls caplancectl back (the test binary as caplancectl, see
// completionHelper) for the backend names.
func TestCompletionFish(t *testing.T) {
	fish, err := exec.LookPath("fish")
	if err != nil {
		t.Logf("fish is not installed: the script's round trip is NOT checked (__complete is, by TestComplete)")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "caplancectl.fish")
	if err := os.WriteFile(script, []byte(generatedScript(t, "fish")), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "caplancectl"), []byte("#!/bin/sh\nexec \"$SELF\" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		line string
		want []string
	}{
		{"caplancectl dra", []string{"drain"}},
		{"caplancectl drain ", []string{"dns1", "web-1", "web2"}},
		{"caplancectl drain web", []string{"web-1", "web2"}},
		{"caplancectl list --service ", []string{"dns", "web"}},
	} {
		cmd := exec.Command(fish, "--no-config", "-c", "source $argv[1]; complete -C $argv[2]", script, tt.line)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "SELF="+self, helperEnv+"=1", "HOME="+dir,
			"GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0") // -race: no second's wait at exit
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fish: %v\n%s", err, out)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if name, _, _ := strings.Cut(l, "\t"); name != "" {
				got = append(got, name)
			}
		}
		slices.Sort(got)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s<TAB> (-want +got):\n%s", tt.line, diff)
		}
	}
}

func TestCompletionUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"completion"}, "caplancectl: completion: missing SHELL\n"},
		{[]string{"completion", "tcsh"}, "caplancectl: completion: unknown shell \"tcsh\": want bash, zsh, fish\n"},
		{[]string{"completion", "bash", "zsh"}, "caplancectl: completion: unexpected argument \"zsh\"\n"},
	} {
		code, stdout, stderr := run(t, nil, tt.args...)
		first, _, _ := strings.Cut(stderr, "Run '")
		if code != cli.ExitUsage || stdout != "" || first != tt.want {
			t.Errorf("caplancectl %v: exit code %d, stdout %q, stderr %q; want %d and %q", tt.args, code, stdout, stderr, cli.ExitUsage, tt.want)
		}
	}
}
