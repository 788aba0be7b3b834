package ctl

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/godbus/dbus/v5"
)

// Backend is one element of ListBackends' a(sssussstttt), and the object of
// "list --json".
type Backend struct {
	Name          string `json:"name"`
	Service       string `json:"service"`
	Address       string `json:"address"`
	Weight        uint32 `json:"weight"`
	AdminState    string `json:"admin_state"`
	Health        string `json:"health"`
	HealthDetail  string `json:"health_detail"`
	ActiveFlows   uint64 `json:"active_flows"`
	InactiveFlows uint64 `json:"inactive_flows"`
	Packets       uint64 `json:"packets"`
	Bytes         uint64 `json:"bytes"`
}

// Service is one element of ListServices' a(sa{ss}ssussuttt), and the
// object of "services --json".
type Service struct {
	Name string `json:"name"`
	// VIPs maps each VIP to its port list ("80,443", "all").
	VIPs        map[string]string `json:"vips"`
	Protocols   string            `json:"protocols"`
	Hash        string            `json:"hash"`
	TableSize   uint32            `json:"table_size"`
	Check       string            `json:"check"`
	Source      string            `json:"source"`
	Backends    uint32            `json:"backends"`
	Packets     uint64            `json:"packets"`
	Bytes       uint64            `json:"bytes"`
	ActiveFlows uint64            `json:"active_flows"`
}

// The properties status and show print first, in this order; any others
// follow, sorted.
var (
	managerProperties = []string{"Version", "APIVersion", "Roles", "State", "VIPs", "EncapPort", "TableSize", "Dataplane"}
	serviceProperties = []string{"Name", "VIPs", "Protocols", "Hash", "TableSize", "Check", "Source", "Persistent",
		"Packets", "Bytes", "NewFlows", "ActiveFlows", "InactiveFlows", "Drops"}
	backendProperties = []string{"Name", "Service", "Address", "Weight", "AdminState", "Health", "HealthDetail",
		"Check", "Source", "Persistent", "ActiveFlows", "InactiveFlows", "Packets", "Bytes"}
)

// formatList is list's table, grouped by service as ipvsadm -L -n groups
// real servers under their virtual service: a line per service, sorted by
// name, then its backends, sorted by name, on lines starting "  -> ". The
// services' columns and the backends' are aligned each on their own. A
// backend of a service missing from services (added between the two
// calls) is listed under a line with only the service's name.
func formatList(services []Service, backends []Backend) string {
	byService := map[string][]Backend{}
	for _, b := range backends {
		byService[b.Service] = append(byService[b.Service], b)
	}
	services = slices.Clone(services)
	for name := range byService {
		if !slices.ContainsFunc(services, func(s Service) bool { return s.Name == name }) {
			services = append(services, Service{Name: name})
		}
	}
	slices.SortFunc(services, func(a, b Service) int { return cmp.Compare(a.Name, b.Name) })

	serviceRows := [][]string{{"SERVICE", "PROTO", "HASH", "TABLE", "VIPS"}}
	backendRows := [][]string{backendHeader}
	// lines says, line by line, which table's next row comes.
	lines := []bool{true, false} // true: a service's
	for _, s := range services {
		table := "-"
		if s.TableSize != 0 {
			table = fmt.Sprint(s.TableSize)
		}
		serviceRows = append(serviceRows, []string{s.Name, cmp.Or(s.Protocols, "-"), cmp.Or(s.Hash, "-"), table, formatVIPs(s.VIPs)})
		lines = append(lines, true)
		rows := byService[s.Name]
		slices.SortFunc(rows, func(a, b Backend) int { return cmp.Compare(a.Name, b.Name) })
		for _, r := range rows {
			backendRows = append(backendRows, backendRow(r))
			lines = append(lines, false)
		}
	}
	serviceLines, backendLines := tabulate(serviceRows), tabulate(backendRows)
	var b strings.Builder
	for _, isService := range lines {
		if isService {
			b.WriteString(serviceLines[0] + "\n")
			serviceLines = serviceLines[1:]
			continue
		}
		b.WriteString("  -> " + backendLines[0] + "\n")
		backendLines = backendLines[1:]
	}
	return b.String()
}

// backendHeader and backendRow are the columns of a backend in list and
// show-service.
var backendHeader = []string{"NAME", "ADDRESS", "WEIGHT", "ADMIN", "HEALTH", "ACTIVE", "INACTIVE", "PACKETS", "BYTES", "REASON"}

func backendRow(r Backend) []string {
	return []string{r.Name, r.Address, fmt.Sprint(r.Weight), r.AdminState, r.Health,
		fmt.Sprint(r.ActiveFlows), fmt.Sprint(r.InactiveFlows), fmt.Sprint(r.Packets), fmt.Sprint(r.Bytes), cmp.Or(r.HealthDetail, "-")}
}

// formatBackends is the table of show-service: the backends of one
// service, sorted by name.
func formatBackends(backends []Backend) string {
	backends = slices.Clone(backends)
	slices.SortFunc(backends, func(a, b Backend) int { return cmp.Compare(a.Name, b.Name) })
	rows := [][]string{backendHeader}
	for _, r := range backends {
		rows = append(rows, backendRow(r))
	}
	return strings.Join(tabulate(rows), "\n") + "\n"
}

// formatServices is the table of services, sorted by name.
func formatServices(services []Service) string {
	services = slices.Clone(services)
	slices.SortFunc(services, func(a, b Service) int { return cmp.Compare(a.Name, b.Name) })
	rows := [][]string{{"NAME", "PROTO", "HASH", "TABLE", "BACKENDS", "ACTIVE", "PACKETS", "BYTES", "SOURCE", "CHECK", "VIPS"}}
	for _, s := range services {
		rows = append(rows, []string{s.Name, s.Protocols, s.Hash, fmt.Sprint(s.TableSize), fmt.Sprint(s.Backends),
			fmt.Sprint(s.ActiveFlows), fmt.Sprint(s.Packets), fmt.Sprint(s.Bytes), s.Source, cmp.Or(s.Check, "-"), formatVIPs(s.VIPs)})
	}
	return strings.Join(tabulate(rows), "\n") + "\n"
}

// tabulate aligns rows in columns two spaces apart and returns its lines.
func tabulate(rows [][]string) []string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
}

// formatVIPs writes a service's VIPs with their port lists, "VIP:PORTS"
// each, sorted by address; an IPv6 address is bracketed. "-" for none.
func formatVIPs(vips map[string]string) string {
	if len(vips) == 0 {
		return "-"
	}
	addrs := slices.Collect(maps.Keys(vips))
	slices.SortFunc(addrs, func(a, b string) int {
		pa, errA := netip.ParseAddr(a)
		pb, errB := netip.ParseAddr(b)
		if errA != nil || errB != nil {
			return cmp.Compare(a, b)
		}
		return pa.Compare(pb)
	})
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		host := a
		if strings.Contains(a, ":") {
			host = "[" + a + "]"
		}
		parts[i] = host + ":" + vips[a]
	}
	return strings.Join(parts, " ")
}

// formatProperties prints "Key: value" lines, aligned: first the
// properties of order that props has, then the others, sorted.
func formatProperties(props map[string]dbus.Variant, order []string) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 8, 1, ' ', 0)
	for _, k := range propertyOrder(props, order) {
		fmt.Fprintf(tw, "%s:\t%s\n", k, formatValue(props[k].Value()))
	}
	tw.Flush()
	return b.String()
}

func propertyOrder(props map[string]dbus.Variant, order []string) []string {
	var keys, extra []string
	for _, k := range order {
		if _, ok := props[k]; ok {
			keys = append(keys, k)
		}
	}
	for k := range props {
		if !slices.Contains(order, k) {
			extra = append(extra, k)
		}
	}
	slices.Sort(extra)
	return append(keys, extra...)
}

// formatStatus is status's output: the manager's properties (LastReload
// and LastReloadError as one line), the number of services and of
// backends (on a balancer), the routes of a routed balancer,
// caplance-healthd's status ("not running" when it is not on the bus) and a table of each service's
// backends by health and admin state.
func formatStatus(st status) string {
	all := maps.Clone(st.props)
	// The route properties make one line of their own, after the others.
	for _, k := range append(slices.Clip(routeProperties), "LastReload", "LastReloadError") {
		delete(all, k)
	}
	order := managerProperties
	if _, ok := st.props["LastReload"]; ok {
		all["LastReload"] = dbus.MakeVariant(formatReload(st.props))
		order = append(slices.Clip(order), "LastReload")
	}
	if st.services != nil {
		backends := 0
		for _, s := range st.services {
			backends += s.Backends
		}
		all["Services"] = dbus.MakeVariant(uint32(len(st.services)))
		all["Backends"] = dbus.MakeVariant(uint32(backends))
		order = append(slices.Clip(order), "Services", "Backends")
	}
	s := formatProperties(all, order)
	if routed, _ := st.props["Routed"].Value().(bool); routed {
		s += "routes: " + formatRoutes(st.props) + "\n"
	}
	healthd := st.healthd
	if healthd == "" {
		healthd = "not running"
	}
	s += "caplance-healthd: " + healthd + "\n"
	if len(st.services) > 0 {
		rows := [][]string{{"SERVICE", "BACKENDS", "UP", "DOWN", "UNKNOWN", "DRAINED"}}
		for _, h := range st.services {
			rows = append(rows, []string{h.Name, fmt.Sprint(h.Backends), fmt.Sprint(h.Up), fmt.Sprint(h.Down), fmt.Sprint(h.Unknown), fmt.Sprint(h.Drained)})
		}
		s += "\n" + strings.Join(tabulate(rows), "\n") + "\n"
	}
	return s
}

// formatReload is status's LastReload line: "none since the start", or the
// time (RFC 3339, UTC) and "applied" or "refused: why".
func formatReload(props map[string]dbus.Variant) string {
	at, _ := props["LastReload"].Value().(uint64)
	if at == 0 {
		return "none since the start"
	}
	why, _ := props["LastReloadError"].Value().(string)
	outcome := "applied"
	if why != "" {
		outcome = "refused: " + strings.ReplaceAll(why, "\n", "; ")
	}
	return formatTime(time.Unix(int64(at), 0)) + " " + outcome
}

// formatTime is how caplancectl writes a time: RFC 3339 in UTC, the same
// in the tables, in watch's lines and in JSON.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// statusObject is status --json: the manager's properties under their
// snake_case names (last_reload as a time, null before the first), the
// services' counts (null without the balancer role) and healthd's state.
func statusObject(st status) map[string]any {
	obj := jsonProperties(st.props)
	if at, ok := st.props["LastReload"].Value().(uint64); ok {
		obj["last_reload"] = nil
		if at != 0 {
			obj["last_reload"] = formatTime(time.Unix(int64(at), 0))
		}
	}
	obj["services"] = st.services
	obj["healthd"] = map[string]any{"running": st.healthd != "", "status": st.healthd}
	return obj
}

// jsonProperties are D-Bus properties as a JSON object: each name in
// snake_case (APIVersion api_version, AnnouncedVIPs announced_vips).
func jsonProperties(props map[string]dbus.Variant) map[string]any {
	obj := make(map[string]any, len(props))
	for k, v := range props {
		obj[snakeCase(k)] = v.Value()
	}
	return obj
}

// snakeCase turns a property's CamelCase name into snake_case, its
// acronyms as one word.
func snakeCase(name string) string {
	name = acronyms.Replace(name)
	var b strings.Builder
	for i, r := range name {
		if 'A' <= r && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

var acronyms = strings.NewReplacer("API", "Api", "VIPs", "Vips", "VIP", "Vip", "XDP", "Xdp", "ID", "Id")

// routeProperties are a routed balancer's, which status shows as its
// "routes:" line.
var routeProperties = []string{"Routed", "Maintenance", "AnnouncedVIPs", "RouteTable", "RouteProtocol"}

// formatRoutes says what a routed balancer announces, and why not when
// it announces nothing.
func formatRoutes(props map[string]dbus.Variant) string {
	announced, _ := props["AnnouncedVIPs"].Value().([]string)
	maintenance, _ := props["Maintenance"].Value().(bool)
	state, _ := props["State"].Value().(string)
	switch {
	case len(announced) > 0:
		return fmt.Sprintf("announced %s (table %v, protocol %v)", strings.Join(announced, ", "),
			props["RouteTable"].Value(), props["RouteProtocol"].Value())
	case maintenance:
		return "withdrawn (maintenance)"
	case state == "stopping":
		return "withdrawn (stopping)"
	}
	return "none servable"
}

// formatValue prints a property's value: lists joined with ", ", booleans
// as yes/no, and "-" for an empty string or list.
func formatValue(v any) string {
	switch v := v.(type) {
	case string:
		if v == "" {
			return "-"
		}
		return v
	case []string:
		if len(v) == 0 {
			return "-"
		}
		return strings.Join(v, ", ")
	case map[string]string:
		return formatVIPs(v)
	case bool:
		if v {
			return "yes"
		}
		return "no"
	}
	return fmt.Sprint(v)
}

// serviceCounters are the counters of GetStats' "service.NAME.COUNTER"
// keys, in the order of stats' table; others a newer caplanced may send
// follow, sorted.
var serviceCounters = []string{"packets", "bytes", "new_flows", "active_flows", "inactive_flows", "drops"}

// formatStats is stats' output: the global counters as "key value" lines,
// sorted by key, then, when there are services, a blank line and a table
// of their counters, a row per service sorted by name. With a rate (over
// > 0) a first line says so, and each counter that is no gauge is named
// "key/s".
func formatStats(stats map[string]uint64, over time.Duration) string {
	var keys []string
	perService := map[string]map[string]uint64{}
	var counters []string
	for k, v := range stats {
		name, counter, ok := serviceCounter(k)
		if !ok {
			keys = append(keys, k)
			continue
		}
		if perService[name] == nil {
			perService[name] = map[string]uint64{}
		}
		perService[name][counter] = v
		if !slices.Contains(counters, counter) {
			counters = append(counters, counter)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	perSecond := func(key string) string {
		if over > 0 && !isGauge(key) {
			return key + "/s"
		}
		return key
	}
	if over > 0 {
		fmt.Fprintf(&b, "per second over %v (%s are current)\n\n", over.Round(time.Millisecond), strings.Join(gauges, ", "))
	}
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %d\n", perSecond(k), stats[k])
	}
	if len(perService) == 0 {
		return b.String()
	}

	slices.SortFunc(counters, func(x, y string) int {
		i, j := slices.Index(serviceCounters, x), slices.Index(serviceCounters, y)
		switch {
		case i >= 0 && j >= 0:
			return cmp.Compare(i, j)
		case i >= 0 || j >= 0: // the known first
			return cmp.Compare(j, i)
		}
		return cmp.Compare(x, y)
	})
	header := []string{"SERVICE"}
	for _, c := range counters {
		header = append(header, strings.ToUpper(perSecond(c)))
	}
	rows := [][]string{header}
	for _, name := range slices.Sorted(maps.Keys(perService)) {
		row := []string{name}
		for _, c := range counters {
			cell := "-" // a counter this service lacks
			if v, ok := perService[name][c]; ok {
				cell = fmt.Sprint(v)
			}
			row = append(row, cell)
		}
		rows = append(rows, row)
	}
	if len(keys) > 0 {
		b.WriteString("\n")
	}
	b.WriteString(strings.Join(tabulate(rows), "\n") + "\n")
	return b.String()
}

// gauges are the GetStats counters (last part of the key) that say how
// much there is now rather than how much there was since the start: a
// rate shows them as they are.
var gauges = []string{"active_flows", "inactive_flows", "conntrack_size"}

func isGauge(key string) bool {
	return slices.Contains(gauges, key[strings.LastIndexByte(key, '.')+1:])
}

// statsRate is later's counters per second since before, over the time
// between the two; gauges are later's. A counter that went down (caplanced
// restarted in between) counts from 0.
func statsRate(before, later map[string]uint64, over time.Duration) map[string]uint64 {
	out := make(map[string]uint64, len(later))
	for k, v := range later {
		if isGauge(k) {
			out[k] = v
			continue
		}
		prev := before[k]
		if prev > v {
			prev = 0
		}
		out[k] = uint64(math.Round(float64(v-prev) / over.Seconds()))
	}
	return out
}

// statsObject is stats --json: GetStats' flat keys in the shape of the
// balancer's part of stats.json (caplanced(8)): "drop.R" in the object
// "drops", "xdp_via_raw.R" in "xdp_via_raw", "service.NAME.C" in the
// array "services" (by name), the others as they are. A rate adds
// "interval_seconds".
func statsObject(stats map[string]uint64, over time.Duration) map[string]any {
	obj := map[string]any{}
	services := map[string]map[string]any{}
	for k, v := range stats {
		if name, counter, ok := serviceCounter(k); ok {
			if services[name] == nil {
				services[name] = map[string]any{"name": name}
			}
			services[name][counter] = v
			continue
		}
		group, key, ok := strings.Cut(k, ".")
		if !ok {
			obj[k] = v
			continue
		}
		if group == "drop" {
			group = "drops"
		}
		m, _ := obj[group].(map[string]uint64)
		if m == nil {
			m = map[string]uint64{}
			obj[group] = m
		}
		m[key] = v
	}
	list := []map[string]any{}
	for _, name := range slices.Sorted(maps.Keys(services)) {
		list = append(list, services[name])
	}
	obj["services"] = list
	if over > 0 {
		obj["interval_seconds"] = over.Seconds()
	}
	return obj
}

// serviceCounter splits a GetStats key "service.NAME.COUNTER"; a service's
// name may hold dots, a counter's does not.
func serviceCounter(key string) (name, counter string, ok bool) {
	rest, ok := strings.CutPrefix(key, "service.")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 || i == len(rest)-1 {
		return "", "", false
	}
	return rest[:i], rest[i+1:], true
}

// writeJSON writes v indented, with a final newline.
func writeJSON(w io.Writer, v any) error {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(out, '\n'))
	return err
}
