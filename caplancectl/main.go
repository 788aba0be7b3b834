// Command caplancectl controls caplanced over D-Bus. See caplancectl(8).
package main

import (
	"fmt"
	"io"

	"github.com/caplance/caplance/internal/cli"
)

func main() {
	cli.Main(cli.Command{
		Name:        "caplancectl",
		Synopsis:    "COMMAND [ARGS]",
		Description: "Control the Caplance load balancer daemon (caplanced) over D-Bus.",
		Run: func(args []string, _ io.Writer) error {
			if len(args) == 0 {
				return cli.UsageError{Msg: "missing command"}
			}
			return cli.UsageError{Msg: fmt.Sprintf("unknown command %q", args[0])}
		},
	})
}
