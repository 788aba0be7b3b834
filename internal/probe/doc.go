// Package probe owns how one probe of a backend runs: the sockets, HTTP,
// TLS, exec (with the capabilities its programs must not inherit) and the
// tunnel's raw sockets. It runs what a checkspec.Spec describes (Run) and
// says what happened (Result); what a check is and its syntax belong to
// package checkspec.
//
// It must not keep state between probes: rise and fall counting, the initial
// state, scheduling, start-up jitter and reporting belong to caplance-healthd.
// It never touches D-Bus, netlink or systemd, and it changes nothing on the
// host: no sysctls, routes or firewall rules.
//
// # Kinds
//
// tcp: the backend is up when a TCP connection to HOST:PORT is established
// within the timeout; the connection is then closed normally.
//
// http, https: one HTTP/1.1 request on a fresh connection ("Connection:
// close"; redirects are not followed; the request has no query string, since
// the URL's query holds the check's parameters). PORT defaults to 80 and 443.
//
//   - method: the request method, upper case (default GET).
//   - host: the Host header, "name" or "name:port" (default: the address and
//     port connected to, the port left out when it is the scheme's default).
//   - expect: the status codes that mean up, a comma-separated list of codes
//     and ranges, e.g. 200, 200-299 or 200-299,304 (default 200-299: a
//     health endpoint that redirects usually names the wrong virtual host or
//     a login page, and keepalived's HTTP_GET accepts only 2xx by default too).
//   - body: a text that must appear in the first 64 KiB of the response body
//     (not with method HEAD).
//
// https adds TLS, with certificate verification on by default:
//
//   - sni: the TLS server name sent and verified (default: the host
//     parameter's name; without either, the certificate must carry the
//     address as an IP SAN and no SNI is sent).
//   - insecure=true: do not verify the certificate (default false).
//   - ca: an absolute path to a PEM file of CA certificates to trust instead
//     of the system's; read at each probe, so a renewed CA needs no reload.
//     Not together with insecure=true.
//
// udp: send PAYLOAD in one datagram from a fresh socket to HOST:PORT and wait
// for one reply; the first reply decides. An ICMP port unreachable counts as
// down at once ("connection refused").
//
//   - send (required): the payload, "text:…" or "hex:…", e.g. text:ping or
//     hex:00ff10.
//   - expect: a payload the reply must contain, in the same notation
//     (default: any reply).
//
// exec: run the program at the absolute PATH, without a shell, with the
// arg parameters as its arguments, in order; exit status 0 means up. It
// runs in / with standard input from /dev/null, in a process group of its
// own, and with an environment of exactly
//
//	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
//	CAPLANCE_BACKEND_NAME=<the backend's name>
//	CAPLANCE_BACKEND_ADDRESS=<the backend's address>
//
// Its standard output and error go to one pipe; the first 4 KiB become part
// of the result's detail and the rest is read and discarded, so a chatty
// program is never blocked on a full pipe. When the timeout expires the whole
// process group is killed with SIGKILL; it is killed as well when the program
// exits, so a check leaves no processes behind (one that calls setsid(2)
// escapes this). The program runs as caplance-healthd's user.
//
// tcp, http(s) and udp go to the backend's address of either family; an
// IPv6 one is written in brackets in the details: "tcp:
// [2001:db8::5]:443: connected".
//
// tunnel: a probe sent through the data path, the way GLB's healthcheck does
// it, so the encapsulation, the backend's receiver, the VIP on the backend's
// loopback and the service are checked together. It needs CAP_NET_RAW. With
// tunnel://:PORT the probe is a TCP SYN to VIP:PORT, with tunnel://icmp an
// ICMP (ICMPv6 for an IPv6 VIP) echo request to the VIP. vip picks the VIP
// (default: the one in the Target). As in the data path, the outer header's
// family is the backend address's and the inner packet's the VIP's: 4-in-4,
// 6-in-4, 4-in-6 and 6-in-6. What is sent and matched:
//
//  1. An inner packet from the inner source to the VIP. The inner source is
//     Target.Source (the balancer host's own address; if unset, the address
//     the kernel would use towards the backend) when the VIP is of its
//     family; otherwise the first global address of the VIP's family in a
//     subnet (not a /32 or /128, as caplanced attaches VIPs) on the
//     interface that holds it (the backend answers there, as it answers
//     clients: it must reach it). IPv4: TTL 64, DF, a random ID; IPv6: hop
//     limit 64, traffic class and flow label 0, no extension headers. In it
//     either a TCP SYN (source port reserved for the probe by binding a TCP
//     socket to the inner source and port 0, a random initial sequence
//     number, window 65535, one MSS option of 1460, 1440 over IPv6) or an
//     echo request (random identifier, sequence 1, 16 bytes of data:
//     "caplance" and 8 random bytes).
//  2. It is encapsulated exactly as the data path does it,
//     encap.NewOuter(Source, backend, EncapPort) with a random flow hash
//     (the outer UDP source port in 49152-65535 and, for an IPv6 outer, the
//     flow label), and sent to the backend's address on a raw IP_HDRINCL
//     socket (for an IPv6 backend an AF_INET6 IPPROTO_RAW one, IPV6_HDRINCL).
//  3. The backend decapsulates it and delivers it to the VIP on its
//     loopback; its stack answers the inner source directly (direct server
//     return).
//  4. The probe listens on raw sockets bound to the inner source (tcp for
//     the SYN, icmp or ipv6-icmp always) with a socket filter, and on one of
//     the backend's family bound to Source when the families differ, and
//     accepts only: a TCP segment from VIP:PORT to its reserved port
//     acknowledging its sequence number plus one (SYN-ACK: up; RST: down,
//     "connection refused": the tunnel works but nothing listens), or an echo
//     reply from the VIP with its identifier, sequence and data (up), or an
//     ICMP or ICMPv6 destination unreachable from anyone that quotes its
//     outer packet (down: for example "port unreachable" when nothing
//     receives on the backend's encap port).
//  5. After a SYN-ACK it sends, through the tunnel the same way, a TCP RST
//     with the sequence number the backend expects, so the backend does not
//     keep a half-open connection.
//
// The balancer host's own kernel, which has no socket for the probe's port,
// also answers the SYN-ACK with a RST of its own, addressed to the VIP; that
// is harmless. On a balancer host where an IPv4 VIP is a local address (as
// caplanced attaches it), the kernel drops packets arriving with a local
// source address as martians before any raw socket sees them, so the reply
// from the VIP is lost unless net.ipv4.conf.<interface>.accept_local=1 is set
// on the interface the replies arrive on. IPv6 has no such check: the answer
// from a local IPv6 VIP arrives without any sysctl.
//
// # Results
//
// A Result's Detail is one line a person can act on, starting with the kind:
// "tcp: 10.0.0.5:443: connection refused", "http: status 503 (want
// 200-299)", "exec: exit status 1: disk full", "udp: 10.0.0.5:53: timeout
// after 1s". It is valid UTF-8 without control characters, so it can go into
// a D-Bus property and a terminal as it is.
package probe
