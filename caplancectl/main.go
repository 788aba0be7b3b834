// Command caplancectl controls caplanced over D-Bus. See caplancectl(8).
package main

import (
	"os"

	"github.com/caplance/caplance/internal/ctl"
)

func main() {
	app := &ctl.App{Dial: ctl.DialBus}
	os.Exit(app.Execute(os.Args[1:], os.Stdout, os.Stderr))
}
