package registry

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
)

// TestSameBackendMessages feeds the same bad backend to the configuration
// file, to Add (D-Bus AddBackend) and to the state file: each says the same
// (config's backend rules) after its own place.
func TestSameBackendMessages(t *testing.T) {
	tests := []struct {
		name, address string
		weight        uint32
		check         string
		vip           bool // the state file does not know the VIPs (a VIP there is dropped with a warning)
	}{
		{name: "a/b", address: "10.0.1.40", weight: 1},
		{name: "web9", address: "10.0.1.300", weight: 1},
		{name: "web9", address: "127.0.0.1", weight: 1},
		{name: "web9", address: "fe80::1", weight: 1},
		{name: "web9", address: "::ffff:10.0.1.40", weight: 1},
		{name: "web9", address: "10.0.0.100", weight: 1, vip: true},
		{name: "web9", address: "10.0.1.11", weight: 1}, // web1's
		{name: "web9", address: "10.0.1.40", weight: 10001, check: "nope"},
		{name: "a b", address: "10.0.1.11", weight: 10001, check: "tcp://:0"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %s %d %s", tt.name, tt.address, tt.weight, tt.check), func(t *testing.T) {
			// The configuration file, with web1 of baseConfig before it.
			toml := fmt.Sprintf("[balancer]\nvips = [%q]\n[[backend]]\nname = \"web1\"\naddress = \"10.0.1.11\"\n"+
				"[[backend]]\nname = %q\naddress = %q\nweight = %d\n", theVIP, tt.name, tt.address, tt.weight)
			if tt.check != "" {
				toml += fmt.Sprintf("check = %q\n", tt.check)
			}
			_, err := config.Parse("test.toml", []byte(toml), nil)
			if err == nil {
				t.Fatal("config.Parse accepted the backend")
			}
			fromConfig := strip(t, err.Error(), "\n", `test\.toml: line \d+: backend "[^"]*": `)

			// Add, on a registry whose configuration has web1.
			f := newFixture(t, baseConfig())
			var opts AddOptions
			opts.Weight, opts.Check = &tt.weight, tt.check
			_, err = f.r.Add(tt.name, tt.address, opts)
			if err == nil {
				t.Fatal("Add accepted the backend")
			}
			fromAdd := strip(t, err.Error(), "; ", "", regexp.QuoteMeta(fmt.Sprintf("adding backend %q: ", tt.name)))
			if diff := cmp.Diff(fromConfig, fromAdd); diff != "" {
				t.Errorf("configuration file (-) and Add (+) say different things:\n%s", diff)
			}
			if tt.vip {
				return
			}

			// The state file, with a run-time web1 before it.
			content, err := json.Marshal(map[string]any{"version": 1, "backends": []map[string]any{
				{"name": "web1", "service": "default", "address": "10.0.1.11", "weight": 1},
				{"name": tt.name, "address": tt.address, "weight": tt.weight, "check": tt.check},
			}})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "backends.json")
			writeState(t, path, string(content))
			err = CheckStateFile(path)
			if err == nil {
				t.Fatal("CheckStateFile accepted the backend")
			}
			msg := strings.TrimSuffix(err.Error(), ": fix it, or move it away to start without the run-time backends and overrides it holds")
			msg = strings.TrimPrefix(msg, "state file "+path+": ")
			fromState := strip(t, msg, "; ", regexp.QuoteMeta(fmt.Sprintf("backends[1] %q: ", tt.name)))
			if diff := cmp.Diff(fromConfig, fromState); diff != "" {
				t.Errorf("configuration file (-) and state file (+) say different things:\n%s", diff)
			}
		})
	}
}

// strip splits msg at sep, removes the place (a regexp) each part starts
// with (only the first part, when first is given instead), and sorts the
// parts.
func strip(t *testing.T, msg, sep, place string, first ...string) []string {
	t.Helper()
	if len(first) > 0 {
		re := regexp.MustCompile("^" + first[0])
		if !re.MatchString(msg) {
			t.Fatalf("%q does not start with its place", msg)
		}
		msg = re.ReplaceAllString(msg, "")
	}
	parts := strings.Split(msg, sep)
	if place != "" {
		re := regexp.MustCompile("^" + place)
		for i, p := range parts {
			if !re.MatchString(p) {
				t.Fatalf("%q does not start with its place", p)
			}
			parts[i] = re.ReplaceAllString(p, "")
		}
	}
	slices.Sort(parts)
	return parts
}
