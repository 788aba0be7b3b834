package healthd

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/caplance/caplance/internal/cli"
)

// Command is caplance-healthd's command line (caplance-healthd(8)).
func Command() cli.Command {
	fs := flag.NewFlagSet("caplance-healthd", flag.ContinueOnError)
	configPath := fs.String("config", DefaultConfigPath, "configuration `file`")
	checkConfig := fs.Bool("check-config", false, "validate the configuration file, print ok or every error, and exit")
	bus := fs.String("bus", "", "the bus caplanced is on: system, session or a bus `address` (default: the file's bus, else system)")
	return cli.Command{
		Name:        "caplance-healthd",
		Synopsis:    "[--config FILE] [--check-config] [--bus BUS]",
		Description: "Caplance health checker: probes caplanced's backends and reports their health changes to it over D-Bus.",
		Flags:       fs,
		Run: func(args []string, stdout io.Writer) error {
			if len(args) > 0 {
				return cli.UsageError{Msg: fmt.Sprintf("unexpected argument %q", args[0])}
			}
			cfg, err := LoadConfig(*configPath)
			if err != nil {
				return err
			}
			if *bus != "" {
				cfg.Bus = *bus
			}
			if *checkConfig {
				fmt.Fprintln(stdout, "ok")
				return nil
			}
			return Serve(Options{Config: cfg, Logger: cli.NewLogger(), TestWedge: os.Getenv(TestWedgeEnv)})
		},
	}
}
