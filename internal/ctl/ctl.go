// Package ctl is caplancectl: it parses the command line, makes the D-Bus
// calls of caplanced.dbus(7) and formats the replies. It is a thin client:
// names, addresses, weights and check specs are checked by caplanced, whose
// error messages are what the user reads; ctl only parses numbers and, with
// package config's parsers, a service's ports, protocols and hash, so that
// a typo there is a usage error. It must not import the daemon's other
// packages, netlink or systemd.
package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/dbusconn"
	"github.com/caplance/caplance/internal/quote"
)

// ExitNotRunning is caplancectl's exit code when caplanced cannot be
// reached; cli's codes (0 ok, 1 failed, 2 usage) hold otherwise.
const ExitNotRunning = 3

// callTimeout bounds every command but watch.
const callTimeout = 30 * time.Second

// App is caplancectl.
type App struct {
	// Dial connects to the bus named by --bus; nil means DialBus.
	Dial func(bus string) (Conn, error)

	bus string
	err error // what the last Run returned, for the exit code
}

// Execute runs caplancectl with args (without the program name) and
// returns its exit code.
func (a *App) Execute(args []string, stdout, stderr io.Writer) int {
	a.err = nil
	code := a.Command().Execute(args, stdout, stderr)
	if code == cli.ExitFailed && errors.As(a.err, new(*NotRunningError)) {
		return ExitNotRunning
	}
	return code
}

// Command is caplancectl as a cli.Command; Execute maps its exit code.
func (a *App) Command() cli.Command {
	fs := flag.NewFlagSet("caplancectl", flag.ContinueOnError)
	fs.StringVar(&a.bus, "bus", "system", "connect to `BUS`: system, session or a D-Bus address")
	return cli.Command{
		Name:        "caplancectl",
		Synopsis:    "[--bus BUS] COMMAND [ARGS]",
		Description: description(),
		Flags:       fs,
		Run: func(args []string, stdout io.Writer) error {
			a.err = a.run(args, stdout)
			return a.err
		},
	}
}

func description() string {
	var b strings.Builder
	b.WriteString("Control the Caplance load balancer daemon (caplanced) over D-Bus.\n\nCommands:\n")
	for _, c := range commands {
		use := strings.TrimSpace(strings.Join(append([]string{c.name}, c.aliases...), ", ") + " " + c.synopsis)
		if len(use) > 23 { // two spaces at least before the summary
			fmt.Fprintf(&b, "  %s\n  %-24s %s\n", use, "", c.summary)
			continue
		}
		fmt.Fprintf(&b, "  %-24s %s\n", use, c.summary)
	}
	b.WriteString("\nRun 'caplancectl COMMAND --help' for a command's flags.\n" +
		"Exit status: 0 ok, 1 refused or failed, 2 usage, 3 caplanced not running.")
	return b.String()
}

// action is a parsed command, ready to talk to caplanced.
type action func(ctx context.Context, c Conn, out io.Writer) error

// command is one subcommand: its flags and positional arguments.
type command struct {
	name     string
	aliases  []string // other names of the command
	synopsis string   // after the name, e.g. "NAME WEIGHT"
	summary  string
	setup    setupFunc
	// endless commands run until interrupted, without callTimeout.
	endless bool
	// local commands run without caplanced: their action gets no Conn.
	local bool
	// nameArg is what the command's NAME argument names, for the shell
	// completions.
	nameArg nameKind
}

// nameKind is what a command's NAME argument names.
type nameKind int

const (
	backendName nameKind = iota // an existing backend
	serviceName                 // an existing service
	newName                     // one still to be made: nothing to offer
)

// setupFunc defines a command's flags on fs and returns the function that
// takes the positional arguments left after fs is parsed.
type setupFunc func(fs *flag.FlagSet) func(args []string) (action, error)

// lookup returns the command called name, or one of whose aliases name
// is, under the name the user gave.
func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
		if slices.Contains(c.aliases, name) {
			c.name = name
			return c, true
		}
	}
	return command{}, false
}

func (a *App) run(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return cli.UsageError{Msg: "missing command"}
	}
	c, ok := lookup(args[0])
	if !ok {
		return cli.UsageError{Msg: fmt.Sprintf("unknown command %q", args[0])}
	}
	act, err := c.parse(args[1:], stdout)
	if err != nil || act == nil { // act is nil after --help
		return err
	}
	if c.local {
		return act(context.Background(), nil, stdout)
	}

	dial := a.Dial
	if dial == nil {
		dial = DialBus
	}
	conn, err := dial(a.bus)
	if err != nil {
		var nr *NotRunningError
		if errors.As(err, &nr) {
			return err
		}
		return &NotRunningError{Msg: fmt.Sprintf("cannot connect to the %s: %v", dbusconn.Label(a.bus), err)}
	}
	defer conn.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !c.endless {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, callTimeout)
		defer cancel()
	}
	return act(ctx, conn, stdout)
}

// parse parses the command's flags, which may come before, between and
// after its positional arguments, and returns its action; a nil action
// and nil error mean --help was answered on stdout.
func (c command) parse(args []string, stdout io.Writer) (action, error) {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	takeArgs := c.setup(fs)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(fs, stdout)
		return nil, nil
	}
	if err != nil {
		return nil, cli.UsageError{Msg: c.name + ": " + err.Error()}
	}
	act, err := takeArgs(pos)
	if err != nil {
		return nil, cli.UsageError{Msg: c.name + ": " + err.Error()}
	}
	return act, nil
}

func (c command) usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: caplancectl %s\n\n%s\n", strings.TrimSpace(c.name+" "+c.synopsis), c.summary)
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprint(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	fmt.Fprint(w, "\nSee caplancectl(8).\n")
}

// parseInterspersed parses fs from args, letting flags and positional
// arguments mix ("add-backend web1 10.0.1.1 --weight 5"); everything after
// "--" is positional, and so is an argument that looks like a negative
// number, whose error is then a better one than "flag not defined".
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		// flag stops at a negative number: take it as an argument.
		for len(args) > 0 && looksNegative(args[0]) {
			pos = append(pos, args[0])
			args = args[1:]
		}
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func looksNegative(s string) bool {
	return len(s) > 1 && s[0] == '-' && '0' <= s[1] && s[1] <= '9'
}

// wantArgs checks that args are exactly the arguments called names.
func wantArgs(args []string, names ...string) error {
	if len(args) < len(names) {
		return fmt.Errorf("missing %s", names[len(args)])
	}
	if len(args) > len(names) {
		return fmt.Errorf("unexpected argument %q", args[len(names)])
	}
	return nil
}

// parseUint32 parses the number called what (a weight, a table size) for
// the bus's "u"; its range is caplanced's to check.
func parseUint32(what, s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	switch {
	case err == nil:
		return uint32(n), nil
	case errors.Is(err, strconv.ErrRange):
		return 0, fmt.Errorf("%s %s: out of range", what, quote.Q(s))
	case looksNegative(s):
		return 0, fmt.Errorf("%s %s: must not be negative", what, quote.Q(s))
	}
	return 0, fmt.Errorf("%s %s: not a number", what, quote.Q(s))
}
