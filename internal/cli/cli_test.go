package cli

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

// exitErr is an error with its own exit code.
type exitErr struct{}

func (exitErr) Error() string { return "not there" }
func (exitErr) ExitCode() int { return 3 }

func TestExecute(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		runErr     error
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "ok", args: []string{"-n", "3"}, wantCode: ExitOK, wantStdout: "ran with n=3 d=1s\n"},
		{name: "version", args: []string{"--version"}, wantCode: ExitOK, wantStdout: "prog dev\n"},
		{name: "failure is one prefixed line per problem", runErr: errors.Join(errors.New("a: bad"), errors.New("b: worse")),
			wantCode: ExitFailed, wantStdout: "ran with n=0 d=1s\n", wantStderr: "prog: a: bad\nprog: b: worse\n"},
		{name: "an error's own exit code", runErr: fmt.Errorf("wrapped: %w", exitErr{}),
			wantCode: 3, wantStdout: "ran with n=0 d=1s\n", wantStderr: "prog: wrapped: not there\n"},
		{name: "usage error", runErr: UsageError{Msg: "bad"},
			wantCode: ExitUsage, wantStdout: "ran with n=0 d=1s\n", wantStderr: "prog: bad\nRun 'prog --help' for usage.\n"},
		{name: "stray argument", args: []string{"x"}, wantCode: ExitUsage, wantStderr: "prog: unexpected argument \"x\"\nRun 'prog --help' for usage.\n"},
		{name: "unknown flag names the program", args: []string{"--nope"}, wantCode: ExitUsage,
			wantStderr: "prog: unknown flag: --nope\nRun 'prog --help' for usage.\n"},
		{name: "typed flag error: flag, value and form", args: []string{"--delay", "5"}, wantCode: ExitUsage,
			wantStderr: "prog: --delay \"5\": not a duration: want a number with a unit, such as 5s, 1m30s or 500ms\nRun 'prog --help' for usage.\n"},
		{name: "typed flag error: a number", args: []string{"-n", "many"}, wantCode: ExitUsage,
			wantStderr: "prog: --n \"many\": want a whole number\nRun 'prog --help' for usage.\n"},
		{name: "flag needs a value", args: []string{"--delay"}, wantCode: ExitUsage,
			wantStderr: "prog: flag needs an argument: --delay\nRun 'prog --help' for usage.\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Execute(testCommand(tt.runErr), tt.args, &stdout, &stderr)
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

func TestExecuteHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Execute(testCommand(nil), []string{"-n", "1", "--help"}, &stdout, &stderr); code != ExitOK {
		t.Errorf("--help exit code %d, want 0", code)
	}
	if stderr.Len() != 0 || strings.Count(stdout.String(), "Usage:") != 1 {
		t.Errorf("--help: want the usage once, on stdout; stdout %q, stderr %q", stdout.String(), stderr.String())
	}
	for _, want := range []string{"Usage: prog [-n N] [--delay DURATION]\n", "A test command.", "--version", "-n, --n N", "--delay DURATION", "See prog(8).\n"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help output lacks %q:\n%s", want, stdout.String())
		}
	}
}

// A command with subcommands: "did you mean", help VERB, a missing verb
// and the subcommand's name in its errors.
func TestExecuteSubcommands(t *testing.T) {
	tests := []struct {
		args       []string
		wantCode   int
		wantStdout string // prefix
		wantStderr string
	}{
		{args: []string{"stattus"}, wantCode: ExitUsage, wantStderr: "prog: unknown command \"stattus\" (did you mean status?)\nRun 'prog --help' for usage.\n"},
		{args: []string{"sta"}, wantCode: ExitUsage, wantStderr: "prog: unknown command \"sta\" (did you mean start or status?)\nRun 'prog --help' for usage.\n"},
		{args: []string{"frobnicate"}, wantCode: ExitUsage, wantStderr: "prog: unknown command \"frobnicate\"\nRun 'prog --help' for usage.\n"},
		{args: nil, wantCode: ExitUsage, wantStderr: "prog: missing command\nRun 'prog --help' for usage.\n"},
		{args: []string{"help", "status"}, wantStdout: "Usage: prog status [--all]\n\nshow the status\n"},
		{args: []string{"status", "--help"}, wantStdout: "Usage: prog status [--all]\n\nshow the status\n"},
		{args: []string{"help"}, wantStdout: "Usage: prog COMMAND\n"},
		{args: []string{"help", "stattus"}, wantCode: ExitUsage, wantStderr: "prog: unknown command \"stattus\" (did you mean status?)\nRun 'prog --help' for usage.\n"},
		{args: []string{"help", "status", "extra"}, wantCode: ExitUsage, wantStderr: "prog: unknown command \"extra\"\nRun 'prog --help' for usage.\n"},
		{args: []string{"status", "--al"}, wantCode: ExitUsage, wantStderr: "prog: status: unknown flag: --al\nRun 'prog --help' for usage.\n"},
		{args: []string{"status", "--all=maybe"}, wantCode: ExitUsage, wantStderr: "prog: status: --all \"maybe\": want true or false\nRun 'prog --help' for usage.\n"},
		{args: []string{"status", "-5"}, wantCode: ExitUsage,
			wantStderr: "prog: status: \"-5\": negative numbers are not accepted (no flag is called that)\nRun 'prog --help' for usage.\n"},
		{args: []string{"status", "--all"}, wantStdout: "status all=true\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var all bool
			status := &cobra.Command{Use: "status [--all]", Short: "show the status", Args: NoArgs,
				RunE: func(cmd *cobra.Command, _ []string) error {
					fmt.Fprintf(cmd.OutOrStdout(), "status all=%v\n", all)
					return nil
				}}
			status.Flags().BoolVar(&all, "all", false, "everything")
			root := &cobra.Command{Use: "prog COMMAND"}
			root.AddCommand(status, &cobra.Command{Use: "start", Short: "start it", RunE: func(*cobra.Command, []string) error { return nil }})
			var stdout, stderr bytes.Buffer
			code := Execute(Root(root), tt.args, &stdout, &stderr)
			if code != tt.wantCode || !strings.HasPrefix(stdout.String(), tt.wantStdout) || (tt.wantStdout == "") != (stdout.Len() == 0) {
				t.Errorf("exit code %d, stdout %q; want %d, %q…", code, stdout.String(), tt.wantCode, tt.wantStdout)
			}
			if diff := cmp.Diff(tt.wantStderr, stderr.String()); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

func testCommand(runErr error) *cobra.Command {
	var (
		n     int
		delay time.Duration
	)
	cmd := &cobra.Command{
		Use: "prog [-n N] [--delay DURATION]", Short: "A test command.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "ran with n=%d d=%v\n", n, delay)
			return runErr
		},
	}
	cmd.Flags().IntVarP(&n, "n", "n", 0, "a number (`N`)")
	cmd.Flags().DurationVar(&delay, "delay", time.Second, "a `DURATION`")
	return Root(cmd)
}
