// Package checkspec owns what a health check is: the spec syntax (Parse,
// String), one type per kind holding that kind's own parameters (TCP, HTTP,
// UDP, Exec, Tunnel behind the Params interface), the tunables every kind
// takes, and the key that tells two identical probes apart from different
// ones (Key).
//
// It is pure: it imports only the standard library and internal/quote, and
// it opens no sockets, reads no files, runs no programs and keeps no state,
// so caplanced's config validation parses specs without linking net/http,
// crypto/tls or the probes (TestDeps checks it). Running a probe belongs to
// package probe, whose comment says what each kind does with its
// parameters; rise and fall counting, scheduling and reporting belong to
// caplance-healthd, which reads the tunables from the Spec.
//
// # Spec syntax
//
// A check is written as a URL whose scheme is the kind of check:
//
//	tcp://[HOST]:PORT[?TUNABLES]
//	http://[HOST][:PORT][/PATH][?method=M&host=H&expect=RANGES&body=TEXT&TUNABLES]
//	https://[HOST][:PORT][/PATH][?…http parameters…&sni=NAME&insecure=true&ca=/PEM&TUNABLES]
//	udp://[HOST]:PORT?send=PAYLOAD[&expect=PAYLOAD&TUNABLES]
//	exec:///ABSOLUTE/PATH[?arg=A&arg=B&TUNABLES]
//	tunnel://:PORT[?vip=VIP&TUNABLES]
//	tunnel://icmp[?vip=VIP&TUNABLES]
//
// HOST is an IP literal ("10.0.0.5", "[2001:db8::5]": an IPv6 address is
// always in brackets, as in any URL); left empty, as it usually is, the probe
// goes to the backend's own address, of either family. Host names are not
// resolved. An address no probe can go to is refused: with a zone,
// unspecified, multicast, broadcast or link-local (an IPv6 link-local address
// needs a zone). An IPv4-mapped IPv6 address ("[::ffff:10.0.0.5]") is the
// IPv4 address, and String writes it so. The same holds for a tunnel check's
// vip=, written without brackets (vip=2001:db8::100). Parameter values are percent-encoded as in any URL (%20 or + for
// a space, %2B for +, %26 for &). A parameter a kind does not take, a
// repeated parameter (except arg) or a bad value is refused with an error
// that names it, for example:
//
//	http check "http://:80/?expect=20x": expect "20x": not a status range (write e.g. 200, 200-299 or 200-299,304)
//
// String gives the canonical form: lower-case kind, explicit port, parameters
// in a fixed order and only those that differ from their defaults.
//
// # Tunables
//
// Every kind takes these, with defaults close to GLB's healthcheck
// (interval 2s, timeout 1s) and HAProxy's (rise 2, fall 3):
//
//   - interval: time between the starts of two probes, 100ms to 1h
//     (default 2s).
//   - timeout: how long one probe may take, 10ms up to the interval
//     (default 1s, or the interval when that is shorter).
//   - rise: consecutive successes that turn a backend up, 1 to 100 (default 2).
//   - fall: consecutive failures that turn a backend down, 1 to 100
//     (default 3).
//   - initial: the state assumed before the probes decide: unknown (default;
//     nothing is reported until rise successes or fall failures in a row),
//     up (as keepalived assumes: reported up at once, down after fall
//     failures) or down (keepalived's "alpha": reported down at once, up
//     after rise successes).
//   - jitter: the first probe waits a random delay in [0, jitter), so checks
//     that start together (at start-up, after a reload) spread out, like
//     keepalived's warmup; 0 to 1h (default: the interval).
//
// Durations are Go durations: 500ms, 2s, 1m30s.
package checkspec
