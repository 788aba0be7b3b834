package check

import "net"

func (p *probe) tcp(t Target) (bool, string) {
	addr, problem := p.endpoint(t)
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
