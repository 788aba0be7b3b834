package check

import (
	"fmt"
	"net"
	"strings"
)

// maxQuote bounds how much of a mismatched UDP reply the detail shows.
const maxQuote = 64

func (p *probe) udp(t Target) (bool, string) {
	addr, problem := p.endpoint(t)
	if problem != "" {
		return false, problem
	}
	var d net.Dialer
	c, err := d.DialContext(p.ctx, "udp", addr)
	if err != nil {
		return false, "udp: " + addr + ": " + p.failure(err)
	}
	defer c.Close()
	stop := p.deadline(c)
	defer stop()
	if _, err := c.Write([]byte(p.s.send.data)); err != nil {
		return false, "udp: " + addr + ": send: " + p.failure(err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return false, "udp: " + addr + ": " + p.failure(err)
	}
	reply := string(buf[:n])
	if p.s.reply.data != "" && !strings.Contains(reply, p.s.reply.data) {
		return false, fmt.Sprintf("udp: %s: the reply does not contain %s: %s", addr, p.s.reply, quoteReply(reply, p.s.reply.hex))
	}
	return true, fmt.Sprintf("udp: %s: reply of %d bytes", addr, n)
}

// quoteReply shows the start of a payload in the notation of the expected one.
func quoteReply(b string, asHex bool) string {
	more := ""
	if len(b) > maxQuote {
		b, more = b[:maxQuote], "…"
	}
	if asHex {
		return payload{hex: true, data: b}.String() + more
	}
	return fmt.Sprintf("%+q%s", b, more)
}
