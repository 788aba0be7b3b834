// Command caplance-healthd probes Caplance backends and reports their health
// to caplanced over D-Bus. See caplance-healthd(8).
package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/caplance/caplance/internal/cli"
)

func main() {
	cli.Main(cli.Command{
		Name:        "caplance-healthd",
		Synopsis:    "[flags]",
		Description: "Caplance health checker: probes backends and reports state changes to caplanced.",
		Run: func(args []string, _ io.Writer) error {
			if len(args) > 0 {
				return cli.UsageError{Msg: fmt.Sprintf("unexpected argument %q", args[0])}
			}
			return errors.New("health checking is not built yet: this version only answers --help and --version")
		},
	})
}
