// Command caplance-healthd probes Caplance backends and reports their health
// to caplanced over D-Bus. See caplance-healthd(8); the work is done by
// package healthd.
package main

import (
	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/healthd"
)

func main() {
	cli.Main(healthd.Command())
}
