// Package config owns caplanced's configuration: it decodes the TOML file
// strictly (unknown keys and wrong types are errors with their line), applies
// CAPLANCED_* environment overrides, and validates everything into typed
// values, reporting every problem at once with the place it was found.
//
// It reads the file it is given and the environment it is handed; it must not
// touch the network, the kernel or any other file.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where the packaged caplanced looks for its configuration.
const DefaultPath = "/etc/caplance/caplanced.toml"

// Defaults for keys the operator may leave out.
const (
	// DefaultEncapPort is the UDP port of the foo-over-UDP tunnel; 5555 is
	// the port the Linux fou documentation uses in its examples.
	DefaultEncapPort     = 5555
	DefaultWeight        = 100
	DefaultConntrackSize = 1 << 20
	DefaultTCPTimeout    = 15 * time.Minute
	DefaultUDPTimeout    = 5 * time.Minute
	// MaxWorkers bounds the workers per role: each has its own sockets and
	// a few MiB of buffers.
	MaxWorkers = 64
	// MaxConntrackSize keeps connection tracking under about 1.5 GiB.
	MaxConntrackSize = 1 << 24
	// DefaultMaxBackends is max_backends when absent (or table_size when
	// that is smaller). A change of the backend set costs about one Maglev
	// build, which grows with the backends (docs/benchmarks.md); the limit
	// keeps a stream of AddBackend calls from making it unbounded.
	DefaultMaxBackends = 4096
	// MaxWeight bounds weights so that ratios stay meaningful for a table
	// of a few hundred thousand slots.
	MaxWeight = 10000
)

// Config is a validated configuration. Balancer and Receiver are nil when
// the host does not play that role.
type Config struct {
	Balancer *Balancer
	Backends []Backend
	Receiver *Receiver
}

// Balancer is the [balancer] section: the VIPs this host balances.
type Balancer struct {
	VIPs []VIP
	// Interface is where the VIPs are attached; "" means the one interface
	// whose subnet contains each VIP.
	Interface string
	EncapPort uint16
	TableSize int
	// MaxBackends is how many backends the balancer holds at most, from the
	// file and added at run time together; never more than TableSize.
	MaxBackends int
	// Workers is the number of packet workers; 0 means one per CPU.
	Workers int
	// ConntrackSize is how many flows connection tracking remembers.
	ConntrackSize int
	// TCPTimeout and UDPTimeout are the idle timeouts of tracked flows.
	TCPTimeout, UDPTimeout time.Duration
}

// VIP is one virtual address and the destination ports it accepts.
type VIP struct {
	Addr netip.Addr
	// Ports is the allow-list, sorted; nil accepts every port.
	Ports []uint16
}

// Backend is one [[backend]] entry.
type Backend struct {
	Name    string
	Address netip.Addr
	Weight  uint32
	// Check is the health check spec, "" for none; caplance-healthd parses it.
	Check string
}

// Receiver is the [receiver] section: this host is a backend that
// decapsulates traffic from the listed balancers.
type Receiver struct {
	VIPs      []netip.Addr
	Balancers []netip.Addr
	EncapPort uint16
	Mode      Mode
	// Workers is the number of decapsulation workers; 0 means one per CPU.
	Workers int
}

// Mode says who decapsulates on a receiver.
type Mode string

// Receiver modes.
const (
	ModeAuto      Mode = "auto"
	ModeKernel    Mode = "kernel"
	ModeUserspace Mode = "userspace"
)

// The raw structs mirror the file. Pointers tell "absent" (take the default)
// from "given" (validate it).
type rawConfig struct {
	Balancer *rawBalancer `toml:"balancer"`
	Backends []rawBackend `toml:"backend"`
	Receiver *rawReceiver `toml:"receiver"`
}

type rawBalancer struct {
	VIPs          []string         `toml:"vips"`
	Interface     string           `toml:"interface"`
	Ports         map[string][]int `toml:"ports"`
	EncapPort     *int             `toml:"encap_port"`
	TableSize     *int             `toml:"table_size"`
	MaxBackends   *int             `toml:"max_backends"`
	Workers       *int             `toml:"workers"`
	ConntrackSize *int             `toml:"conntrack_size"`
	TCPTimeout    string           `toml:"tcp_timeout"`
	UDPTimeout    string           `toml:"udp_timeout"`
}

type rawBackend struct {
	Name    string `toml:"name"`
	Address string `toml:"address"`
	Weight  *int   `toml:"weight"`
	Check   string `toml:"check"`
}

type rawReceiver struct {
	VIPs      []string `toml:"vips"`
	Balancers []string `toml:"balancers"`
	EncapPort *int     `toml:"encap_port"`
	Mode      string   `toml:"mode"`
	Workers   *int     `toml:"workers"`
}

// Load reads the file at path and applies the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, os.Environ())
}

// Parse decodes and validates data, named name in errors, with overrides
// from environ ("KEY=value" strings, as os.Environ returns). Every problem is
// reported: the error is an errors.Join of one error per problem.
func Parse(name string, data []byte, environ []string) (*Config, error) {
	var raw rawConfig
	errs, err := DecodeStrict(data, &raw)
	if err != nil {
		errs = []error{err}
	}
	if len(errs) > 0 {
		for i, err := range errs {
			errs[i] = fmt.Errorf("%s: %w", name, err)
		}
		return nil, errors.Join(errs...)
	}
	if err := applyEnv(&raw, environ); err != nil {
		return nil, err
	}
	cfg, problems := validate(raw)
	if len(problems) > 0 {
		errs := make([]error, len(problems))
		for i, p := range problems {
			errs[i] = fmt.Errorf("%s: %s", name, p)
		}
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

// DecodeStrict decodes the TOML document data into v strictly: err is a
// syntax error or a wrong type (v is then unusable), unknown has one error
// per unknown key, each with its line. caplance-healthd's configuration is
// read with it too.
func DecodeStrict(data []byte, v any) (unknown []error, err error) {
	md, err := toml.Decode(string(data), v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			err = fmt.Errorf("line %d, column %d: %s", pe.Position.Line, pe.Position.Col, pe.Message)
		}
		return nil, err
	}
	undecoded := md.Undecoded()
	lines := keyLines(string(data))
	seen := map[string]int{}
	for _, key := range undecoded {
		if hasReportedParent(key, undecoded) {
			continue
		}
		path := key.String()
		where := ""
		if ls := lines[path]; seen[path] < len(ls) {
			where = fmt.Sprintf("line %d: ", ls[seen[path]])
		}
		seen[path]++
		unknown = append(unknown, fmt.Errorf("%sunknown key %q", where, path))
	}
	return unknown, nil
}

// hasReportedParent reports whether a table above key is itself unknown, so
// "[balancerz]" yields one error rather than one per key inside it.
func hasReportedParent(key toml.Key, undecoded []toml.Key) bool {
	for _, other := range undecoded {
		if len(other) < len(key) && slices.Equal(other, key[:len(other)]) {
			return true
		}
	}
	return false
}

// keyLines maps each dotted key path to the lines that set it, in order.
// The toml package keeps key positions private, so this finds them again with
// a line-oriented scan that understands table headers and key = value lines;
// it only decorates error messages, so a miss costs a line number, nothing else.
func keyLines(doc string) map[string][]int {
	lines := map[string][]int{}
	table := ""
	for i, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "[["):
			table = unquoteKey(strings.TrimSuffix(strings.SplitN(line[2:], "]]", 2)[0], "]]"))
			lines[table] = append(lines[table], i+1)
		case strings.HasPrefix(line, "["):
			table = unquoteKey(strings.SplitN(line[1:], "]", 2)[0])
			lines[table] = append(lines[table], i+1)
		case strings.Contains(line, "=") && !strings.HasPrefix(line, "#"):
			key := unquoteKey(strings.SplitN(line, "=", 2)[0])
			if table != "" {
				key = table + "." + key
			}
			lines[key] = append(lines[key], i+1)
		}
	}
	return lines
}

// unquoteKey turns `a . "b.c"` into the form toml.Key.String gives.
func unquoteKey(s string) string {
	var parts []string
	var cur strings.Builder
	quote := rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote = r
		case r == '.':
			parts = append(parts, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	parts = append(parts, strings.TrimSpace(cur.String()))
	return toml.Key(parts).String()
}
