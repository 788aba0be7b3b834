package ctl

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

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

// completionScript is what "caplancectl completion SHELL" prints.
func completionScript(t *testing.T, shell string) string {
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
		t.Errorf("completionFiles has %d shells, the generator %d", len(completionFiles), len(shells))
	}
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			file := completionFiles[shell]
			path := filepath.Join("..", "..", "contrib", "completions", file)
			want := completionScript(t, shell)
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
			script := completionScript(t, shell) // generated whether or not the shell is here
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

// TestCompletionBash completes command lines with the bash script, whose
// backend names come from the real "caplancectl list --json" (the test
// binary as caplancectl, see completionHelper).
func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Logf("bash is not installed: the bash script's completions are NOT checked")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "caplancectl.bash")
	if err := os.WriteFile(script, []byte(completionScript(t, "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	wrapper := "#!/bin/sh\nprintf '%s\\n' \"$*\" >> \"$CALLS\"\nexec \"$SELF\" \"$@\"\n"
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "caplancectl"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	noBus := filepath.Join(dir, "no-bus")
	var allCommands []string
	for _, c := range commands {
		allCommands = append(append(allCommands, c.name), c.aliases...)
	}

	// words are COMP_WORDS as bash splits the line, the cursor at the end
	// of the last; with the default COMP_WORDBREAKS "=" and ":" are words.
	tests := []struct {
		words     []string
		want      []string
		wantCalls []string // of caplancectl, by the script
	}{
		{words: []string{"dr"}, want: []string{"drain"}},
		{words: []string{""}, want: allCommands},
		{words: []string{"re"}, want: []string{"remove-service", "remove-backend", "reload"}},
		{words: []string{"--"}, want: []string{"--bus", "--help", "--version"}},
		{words: []string{"--bus", ""}, want: []string{"system", "session"}},
		{words: []string{"--bus", "="}, want: []string{"system", "session"}},
		{words: []string{"--bus", "=", "se"}, want: []string{"session"}},
		{words: []string{"--bus", "session", "--v"}, want: []string{"--version"}},
		{words: []string{"--bus", "session", "st"}, want: []string{"status", "stats"}},
		{words: []string{"set-weight", "--"}, want: []string{"--service", "--help"}},
		{words: []string{"list", "--"}, want: []string{"--json", "--service", "--help"}},
		{words: []string{"add-backend", "--"}, want: []string{"--check", "--runtime", "--service", "--weight", "--help"}},
		{words: []string{"add-service", "--"}, want: []string{"--check", "--hash", "--port", "--proto", "--runtime", "--table-size", "--vip", "--help"}},
		{words: []string{"change-service", "--"}, want: []string{"--check", "--hash", "--port", "--proto", "--table-size", "--vip", "--help"}},
		{words: []string{"add-service", "web", "--proto", ""}, want: []string{"tcp", "udp", "tcp+udp"}},
		{words: []string{"add-service", "web", "--hash", "source"}, want: []string{"source-ip", "source-ip-port"}},
		{words: []string{"change-service", "--hash", "=", "5"}, want: []string{"5-tuple"}},
		{words: []string{"add-service", ""}}, // a new name: none offered
		{words: []string{"add-service", "web", "--vip", ""}},
		{words: []string{"add-service", "web", "--port", ""}},
		{words: []string{"show-service", ""}, want: []string{"web", "dns"}, wantCalls: []string{"services --json"}},
		{words: []string{"change-service", "w"}, want: []string{"web"}, wantCalls: []string{"services --json"}},
		{words: []string{"--bus", "session", "remove-service", "d"}, want: []string{"dns"}, wantCalls: []string{"--bus session services --json"}},
		{words: []string{"drain", "--service", ""}, want: []string{"web", "dns"}, wantCalls: []string{"services --json"}},
		{words: []string{"--bus", "=", "session", "list", "--service", "=", "d"}, want: []string{"dns"}, wantCalls: []string{"--bus=session services --json"}},
		{words: []string{"add-backend", "web9", "--service", "w"}, want: []string{"web"}, wantCalls: []string{"services --json"}},
		{words: []string{"list-services", "--"}, want: []string{"--json", "--help"}},
		{words: []string{"add-backend", "web1", "--weight", "5", "10.0.1.1", "--r"}, want: []string{"--runtime"}},
		{words: []string{"add-backend", ""}}, // a new name: none offered
		{words: []string{"add-backend", "--weight", ""}},
		{words: []string{"add-backend", "--check", "-"}}, // a value, not a flag
		{words: []string{"completion", ""}, want: []string{"bash", "zsh", "fish"}},
		{words: []string{"completion", "bash", ""}},
		{words: []string{"frobnicate", ""}},
		{words: []string{"drain", ""}, want: []string{"dns1", "web-1", "web2"}, wantCalls: []string{"list --json"}},
		{words: []string{"show", "web-"}, want: []string{"web-1"}, wantCalls: []string{"list --json"}},
		{words: []string{"remove-backend", "w"}, want: []string{"web-1", "web2"}, wantCalls: []string{"list --json"}},
		{words: []string{"undrain", "--", "w"}, want: []string{"web-1", "web2"}, wantCalls: []string{"list --json"}},
		{words: []string{"set-weight", "x"}, wantCalls: []string{"list --json"}},
		{words: []string{"set-weight", "web2", ""}}, // the weight
		{words: []string{"drain", "web2", ""}},
		{words: []string{"--bus", "session", "set-weight", "w"}, want: []string{"web-1", "web2"},
			wantCalls: []string{"--bus session list --json"}},
		{words: []string{"--bus", "=", "session", "drain", ""}, want: []string{"dns1", "web-1", "web2"},
			wantCalls: []string{"--bus=session list --json"}},
		// caplanced not running: nothing, silently.
		{words: []string{"--bus", "unix", ":", "path", "=", noBus, "drain", ""},
			wantCalls: []string{"--bus unix:path=" + noBus + " list --json"}},
	}
	for _, tt := range tests {
		words := append([]string{"caplancectl"}, tt.words...)
		t.Run(strings.Join(words, " ")+"<TAB>", func(t *testing.T) {
			calls := filepath.Join(t.TempDir(), "calls")
			const prog = `source "$1" || exit
complete -p caplancectl >/dev/null || exit
COMP_WORDBREAKS=$2
COMP_WORDS=("${@:3}")
COMP_CWORD=$(($# - 3))
_caplancectl caplancectl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"`
			cmd := exec.Command(bash, append([]string{"--norc", "--noprofile", "-c", prog, "bash", script, "\"'><=;|&(: \t\n"}, words...)...)
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "CALLS="+calls, "SELF="+self, helperEnv+"=1",
				"GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0") // -race: no second's wait at exit
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil || stderr.Len() > 0 {
				t.Fatalf("bash: %v, stderr:\n%s", err, stderr.String())
			}
			got := strings.Fields(stdout.String())
			if len(got) == 0 {
				got = nil
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("COMPREPLY (-want +got):\n%s", diff)
			}
			raw, err := os.ReadFile(calls)
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			gotCalls := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
			if len(raw) == 0 {
				gotCalls = nil
			}
			if diff := cmp.Diff(tt.wantCalls, gotCalls); diff != "" {
				t.Errorf("calls of caplancectl (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCompletionArgs checks the arguments read from the synopses against
// the parser: each command takes exactly that many.
func TestCompletionArgs(t *testing.T) {
	for _, c := range commands {
		args := argsOf(c)
		var values []string
		for _, a := range args {
			if len(a.Words) > 0 {
				values = append(values, a.Words[0])
			} else {
				values = append(values, "1")
			}
		}
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		take := c.setup(fs)
		// add-service and change-service want flags too: only an error
		// about the arguments counts.
		if _, err := take(values); err != nil && argCountError.MatchString(err.Error()) {
			t.Errorf("%s %v (from the synopsis %q): %v", c.name, values, c.synopsis, err)
		}
		if _, err := take(append(values, "1")); err == nil || !strings.Contains(err.Error(), "unexpected argument") {
			t.Errorf("%s takes more arguments than its synopsis %q shows: %v", c.name, c.synopsis, err)
		}
	}
	named := map[string][]string{}
	for _, c := range completionSpecOf(commands).Commands {
		if len(c.Args) > 0 && c.Args[0].Names != nil {
			named[c.Args[0].Names.What] = append(named[c.Args[0].Names.What], c.Name)
		}
	}
	want := map[string][]string{
		"backend": {"show", "remove-backend", "set-weight", "drain", "undrain"},
		"service": {"show-service", "change-service", "remove-service"},
	}
	if diff := cmp.Diff(want, named); diff != "" {
		t.Errorf("commands completing an existing name, by what they name (-want +got):\n%s", diff)
	}
}

// argCountError matches wantArgs' errors.
var argCountError = regexp.MustCompile(`^missing [A-Z]|unexpected argument`)

// Every flag with values to offer exists.
func TestCompletionFlagValues(t *testing.T) {
	spec := completionSpecOf(commands)
	for name := range flagNames {
		found := false
		for _, f := range spec.FlagsWithWords() {
			found = found || f.Name == name && f.Names != nil
		}
		if !found {
			t.Errorf("flagNames has names for --%s, which no command has", name)
		}
	}
	for name := range flagValues {
		found := false
		for _, f := range spec.FlagsWithWords() {
			found = found || f.Name == name
		}
		if !found {
			t.Errorf("flagValues has values for --%s, which no command has", name)
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
