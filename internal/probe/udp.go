package probe

import (
	"fmt"
	"net"
	"strings"

	"github.com/caplance/caplance/internal/checkspec"
)

// maxQuote bounds how much of a mismatched UDP reply the detail shows.
const maxQuote = 64

func (p *probe) udp(spec *checkspec.UDP, t checkspec.Target) (bool, string) {
	addr, problem := p.endpoint(spec.Endpoint, t)
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
	if _, err := c.Write([]byte(spec.Send.Data)); err != nil {
		return false, "udp: " + addr + ": send: " + p.failure(err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return false, "udp: " + addr + ": " + p.failure(err)
	}
	reply := string(buf[:n])
	if spec.Expect.Data != "" && !strings.Contains(reply, spec.Expect.Data) {
		return false, fmt.Sprintf("udp: %s: the reply does not contain %s: %s", addr, spec.Expect, quoteReply(reply, spec.Expect.Hex))
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
		return checkspec.Payload{Hex: true, Data: b}.String() + more
	}
	return fmt.Sprintf("%+q%s", b, more)
}
