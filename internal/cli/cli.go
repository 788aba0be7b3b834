// Package cli is the edge the three Caplance commands share, on
// github.com/spf13/cobra: the one shape of their --help and --version, the
// "prog: error" line, flag errors that name the flag, the value and the
// form wanted, and the exit codes (0 ok, 1 failed, 2 usage, or an error's
// own code). It must hold no logic of its own beyond that; each command's
// flags and work live in its own package (ctl, daemon, healthd).
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/caplance/caplance/internal/quote"
	"github.com/caplance/caplance/internal/version"
)

// Exit codes shared by every command.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitUsage  = 2
)

// UsageError is returned by a command when its arguments are wrong; it
// exits with ExitUsage.
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// ExitCoder is an error that chooses its exit code (caplancectl's 3 when
// caplanced is not running).
type ExitCoder interface {
	error
	ExitCode() int
}

// usageTemplate is every command's --help: the synopsis first, as
// caplancectl(8) writes it, then the flags as pflag prints them (--name
// value), so that the two spell a flag the same way.
const usageTemplate = `Usage: {{.UseLine}}

{{with .Long}}{{.}}{{else}}{{.Short}}{{end}}
{{- if .HasAvailableSubCommands}}

Commands:
{{- range .Commands}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}
{{- end}}
{{- if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}
{{- end}}
{{- if .HasAvailableInheritedFlags}}

Global flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}
{{- end}}
{{- if .HasAvailableSubCommands}}

Run '{{.CommandPath}} help COMMAND' for a command's flags.
{{- end}}

See {{.Root.Name}}(8).
`

// Root makes root, with its subcommands already added, a Caplance command:
// --version, the help template, typed usage errors for bad flags and
// arguments, and, when it has subcommands, "did you mean" for a mistyped
// one. The name is the first word of root.Use.
func Root(root *cobra.Command) *cobra.Command {
	root.Version = version.Version
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.SetUsageTemplate(usageTemplate)
	root.SetHelpTemplate("{{.UsageString}}")
	root.SetFlagErrorFunc(flagError)
	root.Flags().Bool("version", false, "print the version and exit")
	// The help flag is spelled as every other flag, in every command.
	root.PersistentFlags().BoolP("help", "h", false, "print this help and exit")
	if root.HasSubCommands() {
		root.SuggestionsMinimumDistance = 2
		root.SetHelpCommand(helpCommand(root))
		root.Args = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			return unknownCommand(cmd, args[0])
		}
		root.RunE = func(*cobra.Command, []string) error { return UsageError{Msg: "missing command"} }
		for _, c := range root.Commands() {
			c.DisableFlagsInUseLine = true
		}
	} else if root.Args == nil {
		root.Args = NoArgs
	}
	root.DisableFlagsInUseLine = true
	return root
}

// unknownCommand is the usage error of a mistyped command of root, with
// the commands it may have meant.
func unknownCommand(root *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %s", quote.Q(name))
	if s := root.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	return UsageError{Msg: msg}
}

// helpCommand is "help [COMMAND]": the command's --help, or root's; an
// unknown command is a usage error, as it is without help.
func helpCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "print the help of a command",
		RunE: func(_ *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			switch {
			case err != nil:
				return UsageError{Msg: "help: " + err.Error()}
			case len(rest) > 0:
				return unknownCommand(root, rest[0])
			}
			return target.Help()
		},
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			var names []string
			for _, c := range root.Commands() {
				if len(args) == 0 && c.IsAvailableCommand() {
					names = append(names, c.Name()+"\t"+c.Short)
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
	}
}

// NoArgs is the Args of a command that takes no positional argument.
func NoArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return UsageError{Msg: fmt.Sprintf("unexpected argument %s", quote.Q(args[0]))}
	}
	return nil
}

// flagError is the usage error of a bad flag: the subcommand, the flag,
// the value given and the form it wants.
func flagError(cmd *cobra.Command, err error) error {
	var (
		invalid  *pflag.InvalidValueError
		notExist *pflag.NotExistError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &invalid):
		f := invalid.GetFlag()
		msg = fmt.Sprintf("--%s %s: %s", f.Name, quote.Q(invalid.GetValue()), wantedForm(f))
	case errors.As(err, &notExist) && notExist.GetSpecifiedShortnames() != "" &&
		strings.Trim(notExist.GetSpecifiedShortnames(), "0123456789.") == "":
		// "-3" where a number goes: pflag takes it for flags -3.
		msg = fmt.Sprintf("%s: negative numbers are not accepted (no flag is called that)", quote.Q("-"+notExist.GetSpecifiedShortnames()))
	}
	if cmd.HasParent() {
		msg = cmd.CalledAs() + ": " + msg
	}
	return UsageError{Msg: msg}
}

// wantedForm says what a flag of f's type takes.
func wantedForm(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "duration":
		return "not a duration: want a number with a unit, such as 5s, 1m30s or 500ms"
	case "bool":
		return "want true or false"
	case "uint", "uint32", "uint64", "int":
		return "want a whole number"
	}
	return "invalid value"
}

// Main runs root with os.Args and exits with its code; only mains call it.
func Main(root *cobra.Command) {
	os.Exit(Execute(root, os.Args[1:], os.Stdout, os.Stderr))
}

// Execute runs root (made by Root) with args and returns the exit code:
// ExitOK, ExitUsage for a UsageError, an ExitCoder's own, else ExitFailed.
func Execute(root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	name := root.Name()
	// A joined error (every problem of a config file) gets one line each,
	// each prefixed so that it reads well in the journal.
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(stderr, "%s: %s\n", name, line)
	}
	var coder ExitCoder
	switch {
	case errors.As(err, new(UsageError)):
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", name)
		return ExitUsage
	case errors.As(err, &coder):
		return coder.ExitCode()
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
