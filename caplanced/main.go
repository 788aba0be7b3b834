// Command caplanced is the Caplance load balancer daemon: the balancer that
// forwards packets for its VIPs to backends, and the receiver that
// decapsulates them on a backend host. See caplanced(8); its flags are
// declared in package daemon.
package main

import (
	"github.com/caplance/caplance/internal/cli"
	"github.com/caplance/caplance/internal/daemon"
)

func main() {
	cli.Main(daemon.Command())
}
