package ctl

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/cli"
	"github.com/spf13/pflag"
)

// TestManPage fails when a command, a flag or an exit code exists in the
// code but not in caplancectl(8).
func TestManPage(t *testing.T) {
	raw, err := os.ReadFile("../../man/caplancectl.8.md")
	if err != nil {
		t.Fatal(err)
	}
	man := string(raw)
	section := func(name string) string {
		_, rest, ok := strings.Cut(man, "\n# "+name+"\n")
		if !ok {
			t.Fatalf("caplancectl(8) has no %s section", name)
		}
		body, _, _ := strings.Cut(rest, "\n# ")
		return body
	}
	commandsSection, options, exit := section("COMMANDS"), section("OPTIONS"), section("EXIT STATUS")

	for _, c := range commands {
		if !strings.Contains(commandsSection, "\n**"+c.name+"**") {
			t.Errorf("COMMANDS does not describe %q", c.name)
		}
		fs := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
		c.setup(fs)
		fs.VisitAll(func(f *pflag.Flag) {
			entry := "**--" + f.Name + "**"
			if !strings.Contains(options, "\n"+entry) {
				t.Errorf("OPTIONS does not describe %s of %s", entry, c.name)
			}
			if !strings.Contains(commandLine(commandsSection, c.name), entry) {
				t.Errorf("COMMANDS does not show %s on the line of %s", entry, c.name)
			}
		})
	}
	global := (&App{}).Command()
	global.PersistentFlags().VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(options, "\n**--"+f.Name+"**") {
			t.Errorf("OPTIONS does not describe the global flag --%s", f.Name)
		}
	})
	for _, entry := range []string{"**--help**", "**--version**"} { // added by cli
		if !strings.Contains(options, "\n"+entry) {
			t.Errorf("OPTIONS does not describe %s", entry)
		}
	}
	for _, code := range []int{cli.ExitOK, cli.ExitFailed, cli.ExitUsage, ExitNotRunning} {
		if !strings.Contains(exit, "\n**"+strconv.Itoa(code)+"**\n") {
			t.Errorf("EXIT STATUS does not describe %d", code)
		}
	}
}

// commandLine is the line of the COMMANDS section that introduces name.
func commandLine(section, name string) string {
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "**"+name+"**") {
			return line
		}
	}
	return ""
}
