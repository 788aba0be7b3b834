package healthd

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/caplance/caplance/internal/cli"
)

// Command is caplance-healthd's command line (caplance-healthd(8)).
func Command() *cobra.Command {
	var (
		configPath, bus string
		checkConfig     bool
	)
	cmd := &cobra.Command{
		Use:   "caplance-healthd [--config FILE] [--check-config] [--bus BUS]",
		Short: "Caplance health checker: probes caplanced's backends and reports their health changes to it over D-Bus.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := LoadConfig(configPath)
			if err != nil {
				return err
			}
			if bus != "" {
				cfg.Bus = bus
			}
			if checkConfig {
				fmt.Fprintln(cmd.OutOrStdout(), "ok")
				return nil
			}
			return Serve(Options{Config: cfg, Logger: cli.NewLogger(), TestWedge: os.Getenv(TestWedgeEnv)})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&configPath, "config", DefaultConfigPath, "configuration `FILE`")
	fs.BoolVar(&checkConfig, "check-config", false, "validate the configuration file, print ok or every error, and exit")
	fs.StringVar(&bus, "bus", "", "the bus caplanced is on: system, session or a bus address (`BUS`; default: the file's bus, else system)")
	return cli.Root(cmd)
}
