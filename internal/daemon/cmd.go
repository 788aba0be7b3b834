package daemon

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/config"
)

// Command is caplanced's command line (caplanced(8)): its flags, declared
// here as caplancectl's are in package ctl and caplance-healthd's in
// package healthd, and what they run.
func Command() *cobra.Command {
	var (
		configPath, runtimeDir, stateDir, bus string
		checkConfig, cleanup                  bool
		stopTimeout                           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "caplanced [--config FILE] [--check-config | --cleanup] [--runtime-dir DIR] [--state-dir DIR] [--bus BUS] [--stop-timeout DURATION]",
		Short: "Caplance load balancer daemon (Maglev hashing, IP-in-UDP to backends, direct server return).",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if checkConfig && cleanup {
				return cli.UsageError{Msg: "--check-config and --cleanup cannot be used together"}
			}
			log := cli.NewLogger()
			if cleanup {
				return Cleanup(runtimeDir, log)
			}
			cfg, err := config.Load(configPath)
			if err != nil {
				return err
			}
			if checkConfig {
				out := cmd.OutOrStdout()
				fmt.Fprintln(out, "ok")
				if cfg.SinglePool {
					fmt.Fprint(out, "\n"+config.ServicesForm(cfg))
				}
				return nil
			}
			return Run(Options{Config: cfg, ConfigPath: configPath, RuntimeDir: runtimeDir, StateDir: stateDir, Bus: bus, StopTimeout: stopTimeout, Logger: log,
				TestWedge: os.Getenv(TestWedgeEnv)})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&configPath, "config", config.DefaultPath, "configuration `FILE`")
	fs.BoolVar(&checkConfig, "check-config", false, "validate the configuration (file and CAPLANCED_* environment), print ok (and a file of the single-pool form in the services form) or every error, and exit")
	fs.BoolVar(&cleanup, "cleanup", false, "undo what a caplanced that did not stop cleanly left behind (VIPs, sysctls, routes, nftables table) and exit")
	fs.StringVar(&runtimeDir, "runtime-dir", envOr("RUNTIME_DIRECTORY", "/run/caplance"), "`DIR` for the host-change journal and stats.json")
	fs.StringVar(&stateDir, "state-dir", envOr("STATE_DIRECTORY", "/var/lib/caplance"), "`DIR` for backends added at run time (backends.json)")
	fs.StringVar(&bus, "bus", "system", "where to serve the D-Bus API: system, session, none, or a bus address (`BUS`)")
	fs.DurationVar(&stopTimeout, "stop-timeout", 5*time.Second, "how long the cleanup after SIGTERM may take (`DURATION`, such as 5s)")
	return cli.Root(cmd)
}

// envOr is the environment variable (set by systemd's RuntimeDirectory= and
// StateDirectory=) when set, else def.
func envOr(name, def string) string {
	if d := os.Getenv(name); d != "" {
		return d
	}
	return def
}
