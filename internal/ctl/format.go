package ctl

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/godbus/dbus/v5"
)

// Backend is one element of ListBackends' a(ssussstttt), and the object of
// "list --json".
type Backend struct {
	Name          string `json:"name"`
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

// The properties status and show print first, in this order; any others
// follow, sorted.
var (
	managerProperties = []string{"Version", "Roles", "State", "VIPs", "EncapPort", "TableSize"}
	backendProperties = []string{"Name", "Address", "Weight", "AdminState", "Health", "HealthDetail",
		"Check", "Source", "Persistent", "ActiveFlows", "InactiveFlows", "Packets", "Bytes"}
)

// formatList is list's table.
func formatList(rows []Backend) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tWEIGHT\tADMIN\tHEALTH\tACTIVE\tINACTIVE\tPACKETS\tREASON")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%s\n", r.Name, r.Address, r.Weight, r.AdminState,
			r.Health, r.ActiveFlows, r.InactiveFlows, r.Packets, cmp.Or(r.HealthDetail, "-"))
	}
	tw.Flush()
	return b.String()
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

// formatStatus is status's output: the manager's properties, the number
// of backends (none when count < 0) and caplance-healthd's status ("" when
// it does not run).
func formatStatus(props map[string]dbus.Variant, count int, healthd string) string {
	all := make(map[string]dbus.Variant, len(props)+1)
	for k, v := range props {
		all[k] = v
	}
	order := managerProperties
	if count >= 0 {
		all["Backends"] = dbus.MakeVariant(uint32(count))
		order = append(slices.Clip(order), "Backends")
	}
	s := formatProperties(all, order)
	if healthd != "" {
		s += "caplance-healthd: " + healthd + "\n"
	}
	return s
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
	case bool:
		if v {
			return "yes"
		}
		return "no"
	}
	return fmt.Sprint(v)
}

// formatStats is stats' output: "key value" lines, sorted by key.
func formatStats(stats map[string]uint64) string {
	keys := make([]string, 0, len(stats))
	for k := range stats {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %d\n", k, stats[k])
	}
	return b.String()
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
