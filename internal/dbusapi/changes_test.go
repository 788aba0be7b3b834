package dbusapi

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/registry"
)

// TestChangedProps: which properties of a backend object a change of the
// registry's backend changes, in the order their PropertiesChanged go out.
func TestChangedProps(t *testing.T) {
	web1 := registry.Backend{
		ID: 1, Name: "web1", Address: netip.MustParseAddr("10.0.1.11"), Weight: 100,
		Admin: registry.AdminActive, Health: registry.HealthUp, HealthDetail: "200 OK",
		Check: "http://10.0.1.11/health", Source: registry.SourceConfig, Persistent: true,
	}
	with := func(f func(*registry.Backend)) registry.Backend {
		b := web1
		f(&b)
		return b
	}
	tests := []struct {
		name  string
		after registry.Backend
		want  []string
	}{
		{"nothing", web1, nil},
		{"the ID is no property", with(func(b *registry.Backend) { b.ID = 7 }), nil},
		{"address", with(func(b *registry.Backend) { b.Address = netip.MustParseAddr("10.0.1.21") }), []string{"Address"}},
		{"weight", with(func(b *registry.Backend) { b.Weight = 0 }), []string{"Weight"}},
		{"drain", with(func(b *registry.Backend) { b.Admin = registry.AdminDrained }), []string{"AdminState"}},
		{"health and detail", with(func(b *registry.Backend) { b.Health, b.HealthDetail = registry.HealthDown, "refused" }), []string{"Health", "HealthDetail"}},
		{"detail alone", with(func(b *registry.Backend) { b.HealthDetail = "204 No Content" }), []string{"HealthDetail"}},
		{"check", with(func(b *registry.Backend) { b.Check = "" }), []string{"Check"}},
		{"to a run-time-only backend", with(func(b *registry.Backend) { b.Source, b.Persistent = registry.SourceRuntime, false }), []string{"Persistent", "Source"}},
		{"moved by a reload: health reset", with(func(b *registry.Backend) {
			b.Address, b.Check = netip.MustParseAddr("10.0.1.21"), "tcp://10.0.1.21:80"
			b.Health, b.HealthDetail = registry.HealthUnknown, ""
		}), []string{"Address", "Check", "Health", "HealthDetail"}},
		{"everything", registry.Backend{
			ID: 1, Name: "web1", Address: netip.MustParseAddr("10.0.1.12"), Weight: 5,
			Admin: registry.AdminDrained, Health: registry.HealthDown, HealthDetail: "refused",
			Check: "tcp://10.0.1.12:80", Source: registry.SourceRuntime, Persistent: false,
		}, []string{"Address", "AdminState", "Check", "Health", "HealthDetail", "Persistent", "Source", "Weight"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, changedProps(web1, tt.after)); diff != "" {
				t.Errorf("changedProps (-want +got):\n%s", diff)
			}
		})
	}
}
