// Package cli is the edge the three Caplance commands share: --help and
// --version handling, the "prog: error" line and the exit codes
// (0 ok, 1 failed, 2 usage). It must hold no logic of its own beyond that;
// each command's work lives in its own package.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/caplance/caplance/internal/version"
)

// Exit codes shared by every command.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitUsage  = 2
)

// UsageError is returned by a command's run function when its arguments are
// wrong; it exits with ExitUsage.
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// Command describes one binary.
type Command struct {
	Name string
	// Synopsis is the usage line after the program name, e.g. "[flags]".
	Synopsis string
	// Description follows the synopsis in --help.
	Description string
	// Flags are the command's own flags; Run adds --help and --version.
	Flags *flag.FlagSet
	// Run does the work with the arguments left after the flags; stdout is
	// for the command's regular output.
	Run func(args []string, stdout io.Writer) error
}

// Main runs c with os.Args and exits with its code; only mains call it.
func Main(c Command) {
	os.Exit(c.Execute(os.Args[1:], os.Stdout, os.Stderr))
}

// Execute parses args, answers --help and --version, runs the command and
// returns the exit code.
func (c Command) Execute(args []string, stdout, stderr io.Writer) int {
	fs := c.Flags
	if fs == nil {
		fs = flag.NewFlagSet(c.Name, flag.ContinueOnError)
	}
	showVersion := fs.Bool("version", false, "print the version and exit")
	printUsage := func(out io.Writer) {
		fmt.Fprintf(out, "Usage: %s %s\n\n%s\n\nFlags:\n", c.Name, c.Synopsis, c.Description)
		fs.SetOutput(out)
		fs.PrintDefaults()
		fmt.Fprintf(out, "\nSee %s(8).\n", c.Name)
	}
	// The flag package writes a parse error to the output, then calls
	// Usage (also for -h, before returning ErrHelp); the usage is printed
	// after Parse instead, so that help goes to stdout, once.
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout)
			return ExitOK
		}
		printUsage(stderr)
		return ExitUsage
	}
	if *showVersion {
		fmt.Fprintf(stdout, "%s %s\n", c.Name, version.Version)
		return ExitOK
	}
	err := c.Run(fs.Args(), stdout)
	if err == nil {
		return ExitOK
	}
	// A joined error (every problem of a config file) gets one line each,
	// each prefixed so that it reads well in the journal.
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(stderr, "%s: %s\n", c.Name, line)
	}
	if errors.As(err, new(UsageError)) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", c.Name)
		return ExitUsage
	}
	return ExitFailed
}

// NewLogger logs to stderr; under systemd (JOURNAL_STREAM set) without
// timestamps, which the journal adds.
func NewLogger() *slog.Logger {
	opts := &slog.HandlerOptions{}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
