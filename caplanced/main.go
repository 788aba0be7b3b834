// Command caplanced is the Caplance load balancer daemon: the balancer that
// forwards packets for its VIPs to backends, and the receiver that
// decapsulates them on a backend host. See caplanced(8).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/config"
)

func main() {
	fs := flag.NewFlagSet("caplanced", flag.ContinueOnError)
	configPath := fs.String("config", config.DefaultPath, "configuration `file`")
	checkConfig := fs.Bool("check-config", false, "validate the configuration (file and CAPLANCED_* environment), print ok or every error, and exit")
	cli.Main(cli.Command{
		Name:        "caplanced",
		Synopsis:    "[--config FILE] [--check-config]",
		Description: "Caplance load balancer daemon (Maglev hashing, IP-in-UDP to backends, direct server return).",
		Flags:       fs,
		Run: func(args []string, stdout io.Writer) error {
			if len(args) > 0 {
				return cli.UsageError{Msg: fmt.Sprintf("unexpected argument %q", args[0])}
			}
			return run(*configPath, *checkConfig, stdout)
		},
	})
}

func run(configPath string, checkOnly bool, stdout io.Writer) error {
	if _, err := config.Load(configPath); err != nil {
		return err
	}
	if checkOnly {
		fmt.Fprintln(stdout, "ok")
		return nil
	}
	return errors.New("the data path is not built yet: this version only validates configurations (--check-config)")
}
