package checkspec_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/checkspec"
)

// tunables is what caplance-healthd reads from a Spec.
type tunables struct {
	Kind                      checkspec.Kind
	Interval, Timeout, Jitter time.Duration
	Rise, Fall                int
	Initial                   checkspec.State
}

func tunablesOf(s *checkspec.Spec) tunables {
	return tunables{s.Kind(), s.Interval, s.Timeout, s.Jitter, s.Rise, s.Fall, s.Initial}
}

// defaults returns the default tunables of kind.
func defaults(kind checkspec.Kind) tunables {
	return tunables{kind, 2 * time.Second, time.Second, 2 * time.Second, 2, 3, checkspec.StateUnknown}
}

var parseTests = []struct {
	spec      string
	canonical string
	tunables  func(tunables) tunables // changes to the defaults; nil: none
}{
	{spec: "tcp://:443", canonical: "tcp://:443"},
	{spec: "TCP://:443", canonical: "tcp://:443"},
	{spec: "tcp://10.0.0.7:443", canonical: "tcp://10.0.0.7:443"},
	{spec: "tcp://[2001:db8::7]:443", canonical: "tcp://[2001:db8::7]:443"},
	{spec: "tcp://[::ffff:10.0.0.7]:443", canonical: "tcp://10.0.0.7:443"},
	{spec: "tcp://[2001:DB8:0::7]:443", canonical: "tcp://[2001:db8::7]:443"},
	{spec: "tcp://[fd00::7]:443", canonical: "tcp://[fd00::7]:443"},
	{spec: "http://[2001:db8::1]:8080/healthz", canonical: "http://[2001:db8::1]:8080/healthz"},
	{spec: "http://[2001:db8::1]", canonical: "http://[2001:db8::1]:80/"},
	{spec: "https://[2001:db8::1]/ready?host=[2001:db8::1]:443", canonical: "https://[2001:db8::1]:443/ready?host=%5B2001:db8::1%5D:443"},
	{spec: "udp://[2001:db8::1]:53?send=hex:00", canonical: "udp://[2001:db8::1]:53?send=hex:00"},
	{spec: "tunnel://:80?vip=2001:db8::100", canonical: "tunnel://:80?vip=2001:db8::100"},
	{spec: "tunnel://icmp?vip=2001:DB8::100", canonical: "tunnel://icmp?vip=2001:db8::100"},
	{spec: "http://:80/healthz", canonical: "http://:80/healthz"},
	{spec: "http://", canonical: "http://:80/"},
	{spec: "http://:8080", canonical: "http://:8080/"},
	{spec: "https:///ready", canonical: "https://:443/ready"},
	{spec: "http://:80/a%20b/c%3Fd", canonical: "http://:80/a%20b/c%3Fd"},
	{
		spec:      "http://:80/healthz?expect=200-299&host=www.example.com&method=GET&body=ok",
		canonical: "http://:80/healthz?host=www.example.com&body=ok",
	},
	{
		spec:      "http://:80/?body=all+good%26fine&method=POST&expect=200,204,300-308&host=www.example.com:8080",
		canonical: "http://:80/?method=POST&host=www.example.com:8080&expect=200,204,300-308&body=all%20good%26fine",
	},
	{
		spec:      "https://:443/healthz?sni=www.example.com&insecure=true",
		canonical: "https://:443/healthz?sni=www.example.com&insecure=true",
	},
	{spec: "https://:443/?insecure=false&ca=/etc/caplance/ca.pem", canonical: "https://:443/?ca=/etc/caplance/ca.pem"},
	{spec: "udp://:53?send=hex:00FF10", canonical: "udp://:53?send=hex:00ff10"},
	{spec: "udp://10.0.0.7:7?expect=text:pong&send=text:ping%0A", canonical: "udp://10.0.0.7:7?send=text:ping%0A&expect=text:pong"},
	{spec: "udp://:7?send=text:a+b%3Bc&expect=hex:61", canonical: "udp://:7?send=text:a%20b%3Bc&expect=hex:61"},
	{spec: "exec:///usr/lib/caplance/check-web", canonical: "exec:///usr/lib/caplance/check-web"},
	{
		spec:      "exec:///usr/lib/caplance/check-web?arg=--fast&arg=x&arg=&arg=a+b",
		canonical: "exec:///usr/lib/caplance/check-web?arg=--fast&arg=x&arg=&arg=a%20b",
	},
	{spec: "exec:///opt/my%20checks/web", canonical: "exec:///opt/my%20checks/web"},
	{spec: "tunnel://:80", canonical: "tunnel://:80"},
	{spec: "tunnel://icmp", canonical: "tunnel://icmp"},
	{spec: "tunnel://:80?vip=10.0.0.100", canonical: "tunnel://:80?vip=10.0.0.100"},
	{spec: "tunnel://icmp?vip=::ffff:10.0.0.100", canonical: "tunnel://icmp?vip=10.0.0.100"},
	{
		spec:      "tcp://:443?interval=5s&timeout=500ms&rise=1&fall=5&initial=down&jitter=0s",
		canonical: "tcp://:443?interval=5s&timeout=500ms&rise=1&fall=5&initial=down&jitter=0s",
		tunables: func(t tunables) tunables {
			t.Interval, t.Timeout, t.Rise, t.Fall, t.Initial, t.Jitter = 5*time.Second, 500*time.Millisecond, 1, 5, checkspec.StateDown, 0
			return t
		},
	},
	{
		// Values equal to the defaults drop out of the canonical form.
		spec:      "tcp://:443?interval=2s&timeout=1000ms&rise=2&fall=3&initial=unknown&jitter=2s",
		canonical: "tcp://:443",
	},
	{
		// The default timeout and jitter follow a shorter interval.
		spec:      "tcp://:443?interval=500ms",
		canonical: "tcp://:443?interval=500ms",
		tunables: func(t tunables) tunables {
			t.Interval, t.Timeout, t.Jitter = 500*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
			return t
		},
	},
	{
		spec:      "tcp://:443?interval=1h&timeout=90s&jitter=1h0m0s&initial=up",
		canonical: "tcp://:443?interval=1h&timeout=1m30s&initial=up",
		tunables: func(t tunables) tunables {
			t.Interval, t.Timeout, t.Jitter, t.Initial = time.Hour, 90*time.Second, time.Hour, checkspec.StateUp
			return t
		},
	},
}

func TestParse(t *testing.T) {
	for _, tt := range parseTests {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := checkspec.Parse(tt.spec)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := s.String(); got != tt.canonical {
				t.Errorf("String() = %q, want %q", got, tt.canonical)
			}
			want := defaults(s.Kind())
			if tt.tunables != nil {
				want = tt.tunables(want)
			}
			if diff := cmp.Diff(want, tunablesOf(s)); diff != "" {
				t.Errorf("tunables (-want +got):\n%s", diff)
			}
			// The canonical form parses to the same checkspec.
			again, err := checkspec.Parse(s.String())
			if err != nil {
				t.Fatalf("Parse(%q): %v", s.String(), err)
			}
			if again.String() != s.String() || tunablesOf(again) != tunablesOf(s) {
				t.Errorf("Parse(String()) = %q %+v, want %q %+v", again, tunablesOf(again), s, tunablesOf(s))
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ spec, param, want string }{
		{"", "", `check "": not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz`},
		{"tcp:443", "", `check "tcp:443": not a check spec: want KIND://…, e.g. tcp://:443 or http://:80/healthz`},
		{"ftp://:21", "", `check "ftp://:21": unknown kind "ftp" (want tcp, http, https, udp, exec or tunnel)`},
		{"tcp://:x", "", `tcp check "tcp://:x": not a URL: invalid port ":x" after host`},
		{"tcp://u@:443", "", `tcp check "tcp://u@:443": user information ("…@") is not allowed`},
		{"tcp://:443#x", "", `tcp check "tcp://:443#x": a fragment ("#…") is not allowed`},
		{"udp://:7?send=text:a;b", "", `udp check "udp://:7?send=text:a;b": query: invalid semicolon separator in query`},
		{"tcp://:443?a=%zz", "", `tcp check "tcp://:443?a=%zz": query: invalid URL escape "%zz"`},
		{"tcp://", "port", `tcp check "tcp://": port: missing (write e.g. tcp://:PORT)`},
		{"tcp://:", "port", `tcp check "tcp://:": port: empty`},
		{"tcp://:0", "port", `tcp check "tcp://:0": port 0: must be between 1 and 65535`},
		{"tcp://:65536", "port", `tcp check "tcp://:65536": port 65536: must be between 1 and 65535`},
		{"tcp://web1:443", "host", `tcp check "tcp://web1:443": host "web1": not an IP address (leave it empty to probe the backend's own address)`},
		{"tcp://[fe80::1%25eth0]:443", "host", `tcp check "tcp://[fe80::1%25eth0]:443": host "fe80::1%eth0": an address with a zone is not supported`},
		{"tcp://2001:db8::1:443", "host", `tcp check "tcp://2001:db8::1:443": host "2001:db8::1:443": an IPv6 address must be in brackets (write e.g. tcp://[2001:db8::1]:80)`},
		{"http://2001:db8::1/healthz", "host", `http check "http://2001:db8::1/healthz": host "2001:db8::1": an IPv6 address must be in brackets (write e.g. http://[2001:db8::1]:80)`},
		{"udp://::1:53?send=text:a", "host", `udp check "udp://::1:53?send=text:a": host "::1:53": an IPv6 address must be in brackets (write e.g. udp://[2001:db8::1]:80)`},
		{"tcp://[fe80::1]:443", "host", `tcp check "tcp://[fe80::1]:443": host "fe80::1": a link-local address (use a global or unique local one)`},
		{"tcp://169.254.0.1:443", "host", `tcp check "tcp://169.254.0.1:443": host "169.254.0.1": a link-local address (use a global or unique local one)`},
		{"tcp://[::]:443", "host", `tcp check "tcp://[::]:443": host "::": the unspecified address`},
		{"tcp://0.0.0.0:443", "host", `tcp check "tcp://0.0.0.0:443": host "0.0.0.0": the unspecified address`},
		{"tcp://[::ffff:0.0.0.0]:443", "host", `tcp check "tcp://[::ffff:0.0.0.0]:443": host "::ffff:0.0.0.0": the unspecified address`},
		{"tcp://[ff02::1]:443", "host", `tcp check "tcp://[ff02::1]:443": host "ff02::1": not a unicast address`},
		{"tcp://224.0.0.1:443", "host", `tcp check "tcp://224.0.0.1:443": host "224.0.0.1": not a unicast address`},
		{"tcp://255.255.255.255:443", "host", `tcp check "tcp://255.255.255.255:443": host "255.255.255.255": not a unicast address`},
		{"tcp://[2001:db8::zz]:443", "", `tcp check "tcp://[2001:db8::zz]:443": not a URL: invalid host: ParseAddr("2001:db8::zz"): each colon-separated field must have at least one digit (at "zz")`},
		{"tcp://:443/x", "path", `tcp check "tcp://:443/x": path "/x": tcp checks take no path`},
		{"udp://:53/x?send=text:a", "path", `udp check "udp://:53/x?send=text:a": path "/x": udp checks take no path`},
		{"tcp://:443?foo=1", "foo", `tcp check "tcp://:443?foo=1": unknown parameter "foo" (tcp checks take interval, timeout, rise, fall, initial, jitter)`},
		{"tcp://:443?expect=200", "expect", `tcp check "tcp://:443?expect=200": unknown parameter "expect" (tcp checks take interval, timeout, rise, fall, initial, jitter)`},
		{"http://:80/?sni=a.example", "sni", `http check "http://:80/?sni=a.example": unknown parameter "sni" (http checks take method, host, expect, body, interval, timeout, rise, fall, initial, jitter)`},
		{"tcp://:443?rise=2&rise=3", "rise", `tcp check "tcp://:443?rise=2&rise=3": rise: given 2 times`},
		{"http://:80/?expect=20x", "expect", `http check "http://:80/?expect=20x": expect "20x": not a status range (write e.g. 200, 200-299 or 200-299,304)`},
		{"http://:80/?expect=", "expect", `http check "http://:80/?expect=": expect "": not a status range (write e.g. 200, 200-299 or 200-299,304)`},
		{"http://:80/?expect=200-", "expect", `http check "http://:80/?expect=200-": expect "200-": not a status range (write e.g. 200, 200-299 or 200-299,304)`},
		{"http://:80/?expect=200,,204", "expect", `http check "http://:80/?expect=200,,204": expect "200,,204": not a status range (write e.g. 200, 200-299 or 200-299,304)`},
		{"http://:80/?expect=099", "expect", `http check "http://:80/?expect=099": expect "099": 099: status codes are between 100 and 599`},
		{"http://:80/?expect=200-600", "expect", `http check "http://:80/?expect=200-600": expect "200-600": 200-600: status codes are between 100 and 599`},
		{"http://:80/?expect=299-200", "expect", `http check "http://:80/?expect=299-200": expect "299-200": 299-200: the range is empty`},
		{"http://:80/?method=get", "method", `http check "http://:80/?method=get": method "get": want an upper-case HTTP method such as GET or HEAD`},
		{"http://:80/?host=a%20b", "host", `http check "http://:80/?host=a%20b": host "a b": not a host name or address with an optional port`},
		{"http://:80/?host=a/b", "host", `http check "http://:80/?host=a/b": host "a/b": not a host name or address with an optional port`},
		{"http://:80/?body=", "body", `http check "http://:80/?body=": body: empty (leave it out to accept any body)`},
		{"http://:80/?method=HEAD&body=ok", "body", `http check "http://:80/?method=HEAD&body=ok": body "ok": a HEAD response has no body`},
		{"http://:80/?body=" + strings.Repeat("x", 1025), "body", `http check "http://:80/?body=` + strings.Repeat("x", 47) + `"…: body: 1025 bytes, at most 1024`},
		{"udp://:7?send=text:" + strings.Repeat("x", 4097), "send", `udp check "udp://:7?send=text:` + strings.Repeat("x", 45) + `"…: send: 4097 bytes, at most 4096`},
		{"tcp://:443?" + strings.Repeat("x", 8192), "", `check "tcp://:443?` + strings.Repeat("x", 53) + `"…: 8203 bytes long, at most 8192`},
		// A long bad value is repeated as a short prefix, like the spec.
		{"tcp://:80?interval=" + strings.Repeat("9", 7000), "interval", `tcp check "tcp://:80?interval=` + strings.Repeat("9", 45) + `"…: interval "` + strings.Repeat("9", 64) + `"…: not a duration (write e.g. 2s or 500ms)`},
		{"https://:443/?insecure=yes", "insecure", `https check "https://:443/?insecure=yes": insecure "yes": want true or false`},
		{"https://:443/?sni=10.0.0.1", "sni", `https check "https://:443/?sni=10.0.0.1": sni "10.0.0.1": an IP address; SNI carries host names only (leave it out to verify the address)`},
		{"https://:443/?sni=a..b", "sni", `https check "https://:443/?sni=a..b": sni "a..b": not a host name`},
		{"https://:443/?ca=ca.pem", "ca", `https check "https://:443/?ca=ca.pem": ca "ca.pem": not an absolute path`},
		{"https://:443/?ca=/etc/../ca.pem", "ca", `https check "https://:443/?ca=/etc/../ca.pem": ca "/etc/../ca.pem": not a clean path`},
		{"https://:443/?ca=/ca.pem&insecure=true", "ca", `https check "https://:443/?ca=/ca.pem&insecure=true": ca "/ca.pem": useless with insecure=true, which verifies nothing`},
		{"udp://:53", "send", `udp check "udp://:53": send: missing (a udp check sends a payload, e.g. send=text:ping or send=hex:00ff)`},
		{"udp://:53?send=ping", "send", `udp check "udp://:53?send=ping": send "ping": want text:… or hex:…`},
		{"udp://:53?send=hex:0g", "send", `udp check "udp://:53?send=hex:0g": send "hex:0g": not hexadecimal bytes`},
		{"udp://:53?send=hex:abc", "send", `udp check "udp://:53?send=hex:abc": send "hex:abc": not hexadecimal bytes`},
		{"udp://:53?send=text:", "send", `udp check "udp://:53?send=text:": send "text:": empty payload`},
		{"udp://:53?send=text:a&expect=hex:", "expect", `udp check "udp://:53?send=text:a&expect=hex:": expect "hex:": empty payload`},
		{"exec://", "path", `exec check "exec://": path: missing (write exec:///absolute/path)`},
		{"exec://usr/bin/check", "host", `exec check "exec://usr/bin/check": host "usr": exec takes no host (write exec:///absolute/path)`},
		{"exec:///usr/bin/../check", "path", `exec check "exec:///usr/bin/../check": path "/usr/bin/../check": not clean (write "/usr/check")`},
		{"exec:///usr/bin/check/", "path", `exec check "exec:///usr/bin/check/": path "/usr/bin/check/": not clean (write "/usr/bin/check")`},
		{"exec:///bin/true?arg=a%00", "arg", `exec check "exec:///bin/true?arg=a%00": arg "a\x00": contains a NUL byte`},
		{"tunnel://", "port", `tunnel check "tunnel://": port: missing (write tunnel://:PORT for a TCP SYN to the VIP or tunnel://icmp for an echo request)`},
		{"tunnel://icmp:80", "port", `tunnel check "tunnel://icmp:80": port 80: an ICMP echo has no port (write tunnel://icmp)`},
		{"tunnel://10.0.0.100:80", "host", `tunnel check "tunnel://10.0.0.100:80": host "10.0.0.100": want none (tunnel://:PORT, the VIP comes from the balancer or vip=) or icmp (tunnel://icmp)`},
		{"tunnel://:80/x", "path", `tunnel check "tunnel://:80/x": path "/x": tunnel checks take no path`},
		{"tunnel://:80?vip=vip", "vip", `tunnel check "tunnel://:80?vip=vip": vip "vip": not an IP address`},
		{"tunnel://:80?vip=fe80::1", "vip", `tunnel check "tunnel://:80?vip=fe80::1": vip "fe80::1": a link-local address (use a global or unique local one)`},
		{"tunnel://:80?vip=fe80::1%25eth0", "vip", `tunnel check "tunnel://:80?vip=fe80::1%25eth0": vip "fe80::1%eth0": an address with a zone is not supported`},
		{"tunnel://:80?vip=::", "vip", `tunnel check "tunnel://:80?vip=::": vip "::": the unspecified address`},
		{"tunnel://:80?vip=ff02::1", "vip", `tunnel check "tunnel://:80?vip=ff02::1": vip "ff02::1": not a unicast address`},
		{"tunnel://:80?vip=[2001:db8::1]", "vip", `tunnel check "tunnel://:80?vip=[2001:db8::1]": vip "[2001:db8::1]": not an IP address`},
		{"tunnel://:80?vip=224.0.0.1", "vip", `tunnel check "tunnel://:80?vip=224.0.0.1": vip "224.0.0.1": not a unicast address`},
		{"tcp://:443?interval=2", "interval", `tcp check "tcp://:443?interval=2": interval "2": not a duration (write e.g. 2s or 500ms)`},
		{"tcp://:443?interval=50ms", "interval", `tcp check "tcp://:443?interval=50ms": interval 50ms: must be between 100ms and 1h`},
		{"tcp://:443?interval=2h", "interval", `tcp check "tcp://:443?interval=2h": interval 2h0m0s: must be between 100ms and 1h`},
		{"tcp://:443?timeout=1ms", "timeout", `tcp check "tcp://:443?timeout=1ms": timeout 1ms: must be between 10ms and 1h`},
		{"tcp://:443?timeout=3s", "timeout", `tcp check "tcp://:443?timeout=3s": timeout 3s: longer than the interval 2s (a probe must end before the next starts)`},
		{"tcp://:443?rise=0", "rise", `tcp check "tcp://:443?rise=0": rise "0": must be a whole number between 1 and 100`},
		{"tcp://:443?fall=101", "fall", `tcp check "tcp://:443?fall=101": fall "101": must be a whole number between 1 and 100`},
		{"tcp://:443?fall=two", "fall", `tcp check "tcp://:443?fall=two": fall "two": must be a whole number between 1 and 100`},
		{"tcp://:443?initial=maybe", "initial", `tcp check "tcp://:443?initial=maybe": initial "maybe": want unknown, up or down`},
		{"tcp://:443?jitter=-1s", "jitter", `tcp check "tcp://:443?jitter=-1s": jitter -1s: must be between 0s and 1h`},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := checkspec.Parse(tt.spec)
			if err == nil {
				t.Fatalf("Parse(%q) = %q, want an error", tt.spec, s)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error:\n got %s\nwant %s", got, tt.want)
			}
			var pe *checkspec.Error
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *checkspec.Error", err)
			}
			if pe.Param != tt.param || pe.Spec != tt.spec {
				t.Errorf("Param, Spec = %q, %q; want %q, %q", pe.Param, pe.Spec, tt.param, tt.spec)
			}
		})
	}
}

func TestKey(t *testing.T) {
	web1 := checkspec.Target{Name: "web1", Address: netip.MustParseAddr("10.0.0.5"), VIP: netip.MustParseAddr("10.0.0.100"), EncapPort: 6080}
	web2 := web1
	web2.Name, web2.Address = "web2", netip.MustParseAddr("10.0.0.6")
	renamed := web1
	web6 := checkspec.Target{Name: "web6", Address: netip.MustParseAddr("2001:db8::5"), VIP: netip.MustParseAddr("2001:db8::100"),
		EncapPort: 6080, Source: netip.MustParseAddr("2001:db8::1")}
	renamed.Name = "web1b"
	tests := []struct {
		spec   string
		target checkspec.Target
		want   string
	}{
		{"tcp://:443", web1, "tcp://10.0.0.5:443?timeout=1s"},
		{"tcp://:443?interval=10s&rise=5&fall=1&initial=up&jitter=0s", web1, "tcp://10.0.0.5:443?timeout=1s"},
		{"tcp://:443?timeout=300ms", web1, "tcp://10.0.0.5:443?timeout=300ms"},
		{"tcp://:443", renamed, "tcp://10.0.0.5:443?timeout=1s"},
		{"tcp://10.0.0.9:443", web2, "tcp://10.0.0.9:443?timeout=1s"},
		{"https://:8443/h?sni=a.example&expect=200", web2, "https://10.0.0.6:8443/h?expect=200&sni=a.example&timeout=1s"},
		{"udp://:53?send=hex:00", web1, "udp://10.0.0.5:53?send=hex:00&timeout=1s"},
		{"exec:///bin/check?arg=x", web1, "exec:///bin/check?arg=x&timeout=1s&name=web1&address=10.0.0.5"},
		{"exec:///bin/check?arg=x", renamed, "exec:///bin/check?arg=x&timeout=1s&name=web1b&address=10.0.0.5"},
		{"tunnel://:80", web1, "tunnel://:80?timeout=1s&vip=10.0.0.100&backend=10.0.0.5&encap-port=6080&source="},
		{"tunnel://icmp?vip=10.0.0.101", web2, "tunnel://icmp?vip=10.0.0.101&timeout=1s&backend=10.0.0.6&encap-port=6080&source="},
		{"tcp://:443", web6, "tcp://[2001:db8::5]:443?timeout=1s"},
		{"http://:8080/h", web6, "http://[2001:db8::5]:8080/h?timeout=1s"},
		{"exec:///bin/check", web6, "exec:///bin/check?timeout=1s&name=web6&address=2001:db8::5"},
		{"tunnel://:80", web6, "tunnel://:80?timeout=1s&vip=2001:db8::100&backend=2001:db8::5&encap-port=6080&source=2001:db8::1"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := checkspec.Parse(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Key(tt.target); got != tt.want {
				t.Errorf("Key = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPrivileged(t *testing.T) {
	for _, spec := range []string{"tcp://:1", "http://", "https://", "udp://:1?send=text:x", "exec:///bin/true", "tunnel://:1", "tunnel://icmp"} {
		s, err := checkspec.Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := s.Privileged(), s.Kind() == checkspec.KindTunnel; got != want {
			t.Errorf("%s: Privileged() = %v, want %v", spec, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, tt := range parseTests {
		f.Add(tt.spec)
	}
	f.Add("http://:80/?expect=200-299,404&body=%00%ff")
	f.Add("tcp://2001:db8::1:80")
	f.Add("udp://[fe80::1%25eth0]:53?send=text:a")
	f.Add("https://[::ffff:10.0.0.1]:8443/?host=[2001:db8::1]")
	f.Add("tunnel://icmp?vip=::ffff:0.0.0.0")
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := checkspec.Parse(spec)
		if err != nil {
			var pe *checkspec.Error
			if !errors.As(err, &pe) || pe.Spec != spec {
				t.Fatalf("Parse(%q): error %v is not a *checkspec.Error for the spec", spec, err)
			}
			return
		}
		canonical := s.String()
		again, err := checkspec.Parse(canonical)
		if err != nil {
			t.Fatalf("Parse(%q) ok, but its canonical form %q: %v", spec, canonical, err)
		}
		if again.String() != canonical || tunablesOf(again) != tunablesOf(s) {
			t.Fatalf("Parse(%q).String() = %q, Parse of that gives %q", spec, canonical, again)
		}
	})
}

// TestParams checks that each kind's own parameters land in its own type,
// which is what package probe reads.
func TestParams(t *testing.T) {
	backend := netip.MustParseAddr("10.0.0.5")
	tests := []struct {
		spec string
		want checkspec.Params
	}{
		{"tcp://:443", &checkspec.TCP{Endpoint: checkspec.Endpoint{Port: 443}}},
		{"tcp://[::ffff:10.0.0.5]:443", &checkspec.TCP{Endpoint: checkspec.Endpoint{Addr: backend, Port: 443}}},
		{"udp://[2001:db8::5]:53?send=text:a", &checkspec.UDP{Endpoint: checkspec.Endpoint{Addr: netip.MustParseAddr("2001:db8::5"), Port: 53},
			Send: checkspec.Payload{Data: "a"}}},
		{"tunnel://:80?vip=2001:db8::100", &checkspec.Tunnel{Port: 80, VIP: netip.MustParseAddr("2001:db8::100")}},
		{"http://", &checkspec.HTTP{Endpoint: checkspec.Endpoint{Port: 80}, Path: "/", RawPath: "/", Method: "GET",
			Expect: []checkspec.StatusRange{{200, 299}}}},
		{"http://10.0.0.5:8080/a%2Fb?method=HEAD&host=web.example&expect=200,301-302", &checkspec.HTTP{
			Endpoint: checkspec.Endpoint{Addr: backend, Port: 8080}, Path: "/a/b", RawPath: "/a%2Fb", Method: "HEAD",
			Host: "web.example", Expect: []checkspec.StatusRange{{200, 200}, {301, 302}}}},
		{"https://:8443/h?body=ok&sni=a.example&ca=/etc/ca.pem", &checkspec.HTTP{Endpoint: checkspec.Endpoint{Port: 8443},
			Path: "/h", RawPath: "/h", Method: "GET", Expect: []checkspec.StatusRange{{200, 299}}, Body: "ok",
			TLS: &checkspec.TLS{SNI: "a.example", CA: "/etc/ca.pem"}}},
		{"https://?insecure=true", &checkspec.HTTP{Endpoint: checkspec.Endpoint{Port: 443}, Path: "/", RawPath: "/",
			Method: "GET", Expect: []checkspec.StatusRange{{200, 299}}, TLS: &checkspec.TLS{Insecure: true}}},
		{"udp://:53?send=hex:00ff&expect=text:ok", &checkspec.UDP{Endpoint: checkspec.Endpoint{Port: 53},
			Send: checkspec.Payload{Hex: true, Data: "\x00\xff"}, Expect: checkspec.Payload{Data: "ok"}}},
		{"exec:///bin/check?arg=a&arg=", &checkspec.Exec{Program: "/bin/check", Args: []string{"a", ""}}},
		{"exec:///bin/true", &checkspec.Exec{Program: "/bin/true"}},
		{"tunnel://:80", &checkspec.Tunnel{Port: 80}},
		{"tunnel://icmp?vip=10.0.0.100", &checkspec.Tunnel{ICMP: true, VIP: netip.MustParseAddr("10.0.0.100")}},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := checkspec.Parse(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, s.Params, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Params (-want +got):\n%s", diff)
			}
			if s.Kind() != s.Params.Kind() || !strings.HasPrefix(tt.spec, string(s.Kind())+"://") {
				t.Errorf("Kind() = %q for %q", s.Kind(), tt.spec)
			}
		})
	}
}
