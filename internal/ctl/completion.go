package ctl

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/quote"
)

// The completion scripts are cobra's: they call "caplancectl __complete"
// on each TAB, which completes from the same command tree caplancectl
// parses with, and asks caplanced for the names of its backends and
// services. Copies are checked in under contrib/completions (installed by
// the packages); TestCompletionFiles fails when they fall behind.

// shells are the shells "completion" writes a script for.
var shells = []string{"bash", "zsh", "fish"}

// flagValues are the values offered for a flag's argument, by flag name.
var flagValues = map[string][]string{
	"proto": {"tcp", "udp", "tcp+udp"},
	"hash":  {"5-tuple", "source-ip", "source-ip-port"},
}

// completionTimeout bounds the calls of a completion: a TAB must not hang
// on a wedged caplanced.
const completionTimeout = 5 * time.Second

func completionCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:       "completion " + strings.Join(shells, "|"),
		Short:     "print the shell completion script",
		ValidArgs: shells,
		Args: func(_ *cobra.Command, args []string) error {
			if err := wantArgs(args, "SHELL"); err != nil {
				return cli.UsageError{Msg: "completion: " + err.Error()}
			}
			if !slices.Contains(shells, args[0]) {
				return cli.UsageError{Msg: fmt.Sprintf("completion: unknown shell %s: want %s", quote.Q(args[0]), strings.Join(shells, ", "))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return completionScript(root, args[0], cmd.OutOrStdout())
		},
	}
}

// completionScript writes the completion script for shell, with the
// commands' descriptions.
func completionScript(root *cobra.Command, shell string, w io.Writer) error {
	switch shell {
	case "bash":
		return root.GenBashCompletionV2(w, true)
	case "zsh":
		return root.GenZshCompletion(w)
	default:
		return root.GenFishCompletion(w, true)
	}
}

// completeNames sets how cmd's arguments and flags are completed: the
// names of caplanced's backends or services, asked over the bus on each
// TAB, or a flag's fixed values; never file names.
func (a *App) completeNames(cmd *cobra.Command, c command) {
	cmd.ValidArgsFunction = func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if c.name == "maintenance" && len(args) == 0 {
			return []string{"on", "off"}, cobra.ShellCompDirectiveNoFileComp
		}
		if len(args) > 0 || c.nameArg == noName {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return a.names(c.nameArg), cobra.ShellCompDirectiveNoFileComp
	}
	if cmd.Flags().Lookup("service") != nil {
		_ = cmd.RegisterFlagCompletionFunc("service", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return a.names(serviceName), cobra.ShellCompDirectiveNoFileComp
		})
	}
	for name, values := range flagValues {
		if cmd.Flags().Lookup(name) != nil {
			_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
		}
	}
	// The other flags' values (addresses, ports, check specs) are free.
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if _, ok := cmd.GetFlagCompletionFunc(f.Name); !ok && f.Value.Type() != "bool" {
			_ = cmd.RegisterFlagCompletionFunc(f.Name, cobra.NoFileCompletions)
		}
	})
}

// names are the names of caplanced's backends or services, in its order;
// none when it cannot be asked: a TAB prints no error.
func (a *App) names(kind nameKind) []string {
	conn, err := a.dial()
	if err != nil {
		return nil
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	var names []string
	if kind == serviceName {
		rows, err := listServices(ctx, conn)
		if err != nil {
			return nil
		}
		for _, s := range rows {
			names = append(names, s.Name)
		}
		return names
	}
	rows, err := listBackends(ctx, conn)
	if err != nil {
		return nil
	}
	for _, b := range rows {
		names = append(names, b.Name)
	}
	return names
}
