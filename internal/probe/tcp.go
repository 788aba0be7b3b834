package probe

import (
	"net"

	"github.com/caplance/caplance/internal/checkspec"
)

func (p *probe) tcp(spec *checkspec.TCP, t checkspec.Target) (bool, string) {
	addr, problem := p.endpoint(spec.Endpoint, t)
	if problem != "" {
		return false, problem
	}
	var d net.Dialer
	c, err := d.DialContext(p.ctx, "tcp", addr)
	if err != nil {
		return false, "tcp: " + addr + ": " + p.failure(err)
	}
	c.Close()
	return true, "tcp: " + addr + ": connected"
}
