package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caplance/caplance/internal/maglev"
	"github.com/caplance/caplance/internal/model"
)

// ServicesForm writes cfg, a configuration of the single-pool form
// (cfg.SinglePool), as a file of the services form that caplanced reads as
// the same configuration, for caplanced --check-config to show how the file
// is written now. Keys at their default are left out (the original's
// comments are lost anyway). A service whose VIPs have different port
// lists, which one [[service]] cannot say (the single pool's
// [balancer.ports] can), becomes one service per port list: the first keeps
// the name and the backends, and the others say in a comment that they
// need backends of their own, because a backend belongs to one service;
// the header then says the file is not equivalent as it stands.
func ServicesForm(cfg *Config) string {
	var w tomlWriter
	split := false
	for _, svc := range cfg.Services {
		split = split || len(portGroups(svc.VIPs)) > 1
	}
	const form = `This file is in the single-pool form (balancer.vips, [balancer.ports] and [[backend]]): one service named "default".`
	if split {
		w.comment(form + " Its VIPs have different port lists, which one [[service]] cannot say, so here is the file in the services form of caplanced.toml(5) with one service per port list. It is NOT EQUIVALENT as it stands: a backend belongs to one service, so the backends must be split between the services (see below). Keys at their default are left out.")
	} else {
		w.comment(form + " Here is the equivalent file in the services form of caplanced.toml(5), with the keys at their default left out.")
	}
	if b := cfg.Balancer; b != nil {
		w.table("[balancer]")
		w.keyIf(b.Interface != "", "interface", tomlString(b.Interface))
		w.keyIf(b.EncapPort != DefaultEncapPort, "encap_port", strconv.Itoa(int(b.EncapPort)))
		w.keyIf(b.TableSize != maglev.DefaultSize, "table_size", strconv.Itoa(b.TableSize))
		w.keyIf(b.MaxBackends != min(DefaultMaxBackends, b.TableSize), "max_backends", strconv.Itoa(b.MaxBackends))
		w.keyIf(b.Workers != 0, "workers", strconv.Itoa(b.Workers))
		w.keyIf(b.Dataplane != DataplaneAuto, "dataplane", tomlString(string(b.Dataplane)))
		w.keyIf(b.ConntrackSize != DefaultConntrackSize, "conntrack_size", strconv.Itoa(b.ConntrackSize))
		w.keyIf(b.TCPTimeout != DefaultTCPTimeout, "tcp_timeout", tomlString(formatDuration(b.TCPTimeout)))
		w.keyIf(b.UDPTimeout != DefaultUDPTimeout, "udp_timeout", tomlString(formatDuration(b.UDPTimeout)))
		w.keyIf(b.TCPClosingTimeout != DefaultTCPClosingTimeout, "tcp_closing_timeout", tomlString(formatDuration(b.TCPClosingTimeout)))
		w.keyIf(b.Routed, "routed", "true")
		w.keyIf(b.RouteTable != DefaultRouteTable, "route_table", strconv.FormatUint(uint64(b.RouteTable), 10))
		w.keyIf(b.RouteProtocol != DefaultRouteProtocol, "route_protocol", strconv.Itoa(int(b.RouteProtocol)))
		w.keyIf(b.RouteMinBackends != 1, "route_min_backends", strconv.Itoa(b.RouteMinBackends))
		w.keyIf(b.WithdrawDelay != DefaultWithdrawDelay, "withdraw_delay", tomlString(formatDuration(b.WithdrawDelay)))
		for _, svc := range cfg.Services {
			writeService(&w, svc, b.TableSize, cfg.Backends)
		}
	}
	if r := cfg.Receiver; r != nil {
		w.table("[receiver]")
		w.key("vips", tomlAddrs(r.VIPs))
		w.key("balancers", tomlAddrs(r.Balancers))
		w.keyIf(r.EncapPort != DefaultEncapPort, "encap_port", strconv.Itoa(int(r.EncapPort)))
		w.keyIf(r.Mode != ModeAuto, "mode", tomlString(string(r.Mode)))
		w.keyIf(r.Workers != 0, "workers", strconv.Itoa(r.Workers))
	}
	return w.String()
}

// writeService writes svc as one [[service]] per port list of its VIPs,
// the first with svc's backends.
func writeService(w *tomlWriter, svc model.Service, tableSize int, backends []Backend) {
	for i, vips := range portGroups(svc.VIPs) {
		name := svc.Name
		if i > 0 {
			name = fmt.Sprintf("%s-%d", svc.Name, i+1)
		}
		w.table("[[service]]")
		w.key("name", tomlString(name))
		var addrs []netip.Addr
		for _, v := range vips {
			addrs = append(addrs, v.Addr)
		}
		w.key("vips", tomlAddrs(addrs))
		w.keyIf(svc.Protocols != model.TCP|model.UDP, "protocols", tomlProtocols(svc.Protocols))
		w.keyIf(vips[0].Ports != nil, "ports", tomlPorts(vips[0].Ports))
		w.keyIf(svc.Hash != model.FiveTuple, "hash", tomlString(svc.Hash.String()))
		w.keyIf(svc.TableSize != tableSize, "table_size", strconv.Itoa(svc.TableSize))
		w.keyIf(svc.Check != "", "check", tomlString(svc.Check))
		if i > 0 {
			w.comment(fmt.Sprintf("No backends yet: the pool of %q served every VIP, but a backend belongs to one service. Give this service [[service.backend]] entries of its own (new names; the same addresses may be used).", svc.Name))
			continue
		}
		for _, b := range backends {
			if b.Service != svc.Name {
				continue
			}
			w.table("[[service.backend]]")
			w.key("name", tomlString(b.Name))
			w.key("address", tomlString(b.Address.String()))
			w.keyIf(b.Weight != DefaultWeight, "weight", strconv.Itoa(int(b.Weight)))
			w.keyIf(b.Check != "", "check", tomlString(b.Check))
		}
	}
}

// portGroups splits VIPs by port list, in the order of each list's first
// VIP.
func portGroups(vips []model.VIP) [][]model.VIP {
	var groups [][]model.VIP
	index := map[string]int{}
	for _, v := range vips {
		key := model.FormatPorts(v.Ports)
		i, ok := index[key]
		if !ok {
			i = len(groups)
			index[key] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], v)
	}
	return groups
}

// tomlWriter writes a TOML document: tables, keys, and comments wrapped at
// 76 columns.
type tomlWriter struct{ sb strings.Builder }

func (w *tomlWriter) String() string { return w.sb.String() }

func (w *tomlWriter) comment(text string) {
	line := "#"
	for _, word := range strings.Fields(text) {
		if len(line)+1+len(word) > 76 && line != "#" {
			w.sb.WriteString(line + "\n")
			line = "#"
		}
		line += " " + word
	}
	w.sb.WriteString(line + "\n")
}

func (w *tomlWriter) table(header string) { fmt.Fprintf(&w.sb, "\n%s\n", header) }

func (w *tomlWriter) key(name, value string) { fmt.Fprintf(&w.sb, "%s = %s\n", name, value) }

func (w *tomlWriter) keyIf(cond bool, name, value string) {
	if cond {
		w.key(name, value)
	}
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			sb.WriteByte('\\')
			sb.WriteRune(r)
		case r < 0x20 || r == 0x7f || r == utf8.RuneError:
			fmt.Fprintf(&sb, "\\u%04X", r)
		default:
			sb.WriteRune(r)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

func tomlAddrs(addrs []netip.Addr) string {
	var items []string
	for _, a := range addrs {
		items = append(items, tomlString(a.String()))
	}
	return "[" + strings.Join(items, ", ") + "]"
}

func tomlProtocols(p model.Protocols) string {
	var items []string
	for _, one := range []model.Protocols{model.TCP, model.UDP} {
		if p&one != 0 {
			items = append(items, tomlString(one.String()))
		}
	}
	return "[" + strings.Join(items, ", ") + "]"
}

// tomlPorts writes a port list as the file's ports key has it: ports as
// integers, ranges as "first-last" strings.
func tomlPorts(ports []model.PortRange) string {
	var items []string
	for _, r := range ports {
		if r.First == r.Last {
			items = append(items, strconv.Itoa(int(r.First)))
		} else {
			items = append(items, tomlString(fmt.Sprintf("%d-%d", r.First, r.Last)))
		}
	}
	return "[" + strings.Join(items, ", ") + "]"
}

// formatDuration is d as a person writes it: "15m", "1h", "90s" as "1m30s".
func formatDuration(d time.Duration) string {
	s := d.String() // "1h0m0s", "10m0s", "1m30s", "10s"
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
