// Command caplanced is the Caplance load balancer daemon: the balancer that
// forwards packets for its VIPs to backends, and the receiver that
// decapsulates them on a backend host. See caplanced(8).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/daemon"
)

func main() {
	fs := flag.NewFlagSet("caplanced", flag.ContinueOnError)
	configPath := fs.String("config", config.DefaultPath, "configuration `file`")
	checkConfig := fs.Bool("check-config", false, "validate the configuration (file and CAPLANCED_* environment), print ok (and a file of the single-pool form in the services form) or every error, and exit")
	cleanup := fs.Bool("cleanup", false, "undo what a caplanced that did not stop cleanly left behind (VIPs, sysctls, routes, nftables table) and exit")
	runtimeDir := fs.String("runtime-dir", envOr("RUNTIME_DIRECTORY", "/run/caplance"), "`directory` for the host-change journal and stats.json")
	stateDir := fs.String("state-dir", envOr("STATE_DIRECTORY", "/var/lib/caplance"), "`directory` for backends added at run time (backends.json)")
	bus := fs.String("bus", "system", "where to serve the D-Bus API: system, session, none, or a bus `address`")
	stopTimeout := fs.Duration("stop-timeout", 5*time.Second, "how long the cleanup after SIGTERM may take")
	cli.Main(cli.Command{
		Name:        "caplanced",
		Synopsis:    "[--config FILE] [--check-config | --cleanup] [--runtime-dir DIR] [--state-dir DIR] [--bus BUS] [--stop-timeout D]",
		Description: "Caplance load balancer daemon (Maglev hashing, IP-in-UDP to backends, direct server return).",
		Flags:       fs,
		Run: func(args []string, stdout io.Writer) error {
			if len(args) > 0 {
				return cli.UsageError{Msg: fmt.Sprintf("unexpected argument %q", args[0])}
			}
			if *checkConfig && *cleanup {
				return cli.UsageError{Msg: "--check-config and --cleanup cannot be used together"}
			}
			log := cli.NewLogger()
			if *cleanup {
				return daemon.Cleanup(*runtimeDir, log)
			}
			cfg, err := config.Load(*configPath)
			if err != nil {
				return err
			}
			if *checkConfig {
				fmt.Fprintln(stdout, "ok")
				if cfg.SinglePool {
					fmt.Fprint(stdout, "\n"+config.ServicesForm(cfg))
				}
				return nil
			}
			return daemon.Run(daemon.Options{Config: cfg, ConfigPath: *configPath, RuntimeDir: *runtimeDir, StateDir: *stateDir, Bus: *bus, StopTimeout: *stopTimeout, Logger: log,
				TestWedge: os.Getenv(daemon.TestWedgeEnv)})
		},
	})
}

// envOr is the environment variable (set by systemd's RuntimeDirectory= and
// StateDirectory=) when set, else def.
func envOr(name, def string) string {
	if d := os.Getenv(name); d != "" {
		return d
	}
	return def
}
