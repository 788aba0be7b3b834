package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExecute(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		runErr     error
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "ok", args: []string{"-n", "3"}, wantCode: ExitOK, wantStdout: "ran with n=3 args=[]\n"},
		{name: "version", args: []string{"--version"}, wantCode: ExitOK, wantStdout: "prog dev\n"},
		{name: "failure is one prefixed line per problem", runErr: errors.Join(errors.New("a: bad"), errors.New("b: worse")),
			wantCode: ExitFailed, wantStdout: "ran with n=0 args=[]\n", wantStderr: "prog: a: bad\nprog: b: worse\n"},
		{name: "usage error", args: []string{"x"}, runErr: UsageError{Msg: `unexpected argument "x"`},
			wantCode: ExitUsage, wantStdout: "ran with n=0 args=[x]\n", wantStderr: "prog: unexpected argument \"x\"\nRun 'prog --help' for usage.\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := testCommand(tt.runErr).Execute(tt.args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d", code, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantStdout, stdout.String()); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantStderr, stderr.String()); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExecuteHelpAndBadFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := testCommand(nil).Execute([]string{"-n", "1", "--help"}, &stdout, &stderr); code != ExitOK {
		t.Errorf("--help exit code %d, want 0", code)
	}
	if stderr.Len() != 0 || strings.Count(stdout.String(), "Usage:") != 1 {
		t.Errorf("--help: want the usage once, on stdout; stdout %q, stderr %q", stdout.String(), stderr.String())
	}
	for _, want := range []string{"Usage: prog [-n N]", "A test command.", "-version", "-n int", "See prog(8)."} {
		if !bytes.Contains(stdout.Bytes(), []byte(want)) {
			t.Errorf("--help output lacks %q:\n%s", want, stdout.String())
		}
	}
	stdout.Reset()
	if code := testCommand(nil).Execute([]string{"--nope"}, &stdout, &stderr); code != ExitUsage {
		t.Errorf("bad flag exit code %d, want %d", code, ExitUsage)
	}
	if stdout.Len() != 0 || !bytes.Contains(stderr.Bytes(), []byte("flag provided but not defined: -nope")) {
		t.Errorf("bad flag: stdout %q, stderr %q", stdout.String(), stderr.String())
	}
}

func testCommand(runErr error) Command {
	fs := flag.NewFlagSet("prog", flag.ContinueOnError)
	n := fs.Int("n", 0, "a number")
	return Command{
		Name: "prog", Synopsis: "[-n N]", Description: "A test command.", Flags: fs,
		Run: func(args []string, stdout io.Writer) error {
			fmt.Fprintf(stdout, "ran with n=%d args=%v\n", *n, args)
			return runErr
		},
	}
}
