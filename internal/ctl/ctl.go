// Package ctl is caplancectl: its command line (on cobra, with the shell
// completions cobra generates), the D-Bus
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
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/quote"
)

// ExitNotRunning is caplancectl's exit code when the bus works but
// caplanced is not on it; cli's codes (0 ok, 1 failed, 2 usage) hold
// otherwise.
const ExitNotRunning = 3

// callTimeout bounds every command but watch.
const callTimeout = 30 * time.Second

// App is caplancectl.
type App struct {
	// Dial connects to the bus named by --bus; nil means DialBus.
	Dial func(bus string) (Conn, error)

	bus string
}

// Execute runs caplancectl with args (without the program name) and
// returns its exit code.
func (a *App) Execute(args []string, stdout, stderr io.Writer) int {
	return cli.Execute(a.Command(), args, stdout, stderr)
}

// Command is caplancectl's cobra root: --bus, global so that it may come
// anywhere on the line, and a subcommand per entry of commands.
func (a *App) Command() *cobra.Command {
	root := &cobra.Command{
		Use:   "caplancectl [--bus BUS] COMMAND [ARGS]",
		Short: "Control the Caplance load balancer daemon (caplanced) over D-Bus.",
		Long: "Control the Caplance load balancer daemon (caplanced) over D-Bus.\n\n" +
			"Exit status: 0 ok, 1 refused or failed, 2 usage, 3 caplanced not running on a working bus.",
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.PersistentFlags().StringVar(&a.bus, "bus", "system", "connect to `BUS`: system, session or a D-Bus address")
	_ = root.RegisterFlagCompletionFunc("bus", cobra.FixedCompletions([]string{"system", "session"}, cobra.ShellCompDirectiveNoFileComp))
	root.ValidArgsFunction = cobra.NoFileCompletions // after a word that is no command
	for _, c := range commands {
		root.AddCommand(a.subcommand(c))
	}
	root.AddCommand(completionCommand(root))
	return cli.Root(root)
}

// subcommand is c as a cobra command.
func (a *App) subcommand(c command) *cobra.Command {
	cmd := &cobra.Command{
		Use:     strings.TrimSpace(c.name + " " + c.synopsis),
		Aliases: c.aliases,
		Short:   c.summary,
		// The arguments are take's to check, with errors that name them.
		Args: cobra.ArbitraryArgs,
	}
	take := c.setup(cmd.Flags())
	a.completeNames(cmd, c)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		act, err := take(args)
		if err != nil {
			return cli.UsageError{Msg: cmd.CalledAs() + ": " + err.Error()}
		}
		return a.do(act, c.endless, cmd.OutOrStdout())
	}
	return cmd
}

// do dials caplanced's bus and runs act.
func (a *App) do(act action, endless bool, stdout io.Writer) error {
	conn, err := a.dial()
	if err != nil {
		return err
	}
	defer conn.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !endless {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, callTimeout)
		defer cancel()
	}
	return act(ctx, conn, stdout)
}

// dial connects to --bus with a.Dial.
func (a *App) dial() (Conn, error) {
	dial := a.Dial
	if dial == nil {
		dial = DialBus
	}
	return dial(a.bus)
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
	// nameArg is what the command's NAME argument names, for the shell
	// completions.
	nameArg nameKind
}

// nameKind is what a command's first argument names.
type nameKind int

const (
	noName      nameKind = iota // no name, or a new one: nothing to offer
	backendName                 // an existing backend
	serviceName                 // an existing service
)

// setupFunc defines a command's flags on fs and returns the function that
// takes the positional arguments left after fs is parsed.
type setupFunc func(fs *pflag.FlagSet) func(args []string) (action, error)

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

func looksNegative(s string) bool {
	return len(s) > 1 && s[0] == '-' && '0' <= s[1] && s[1] <= '9'
}
