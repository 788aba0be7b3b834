package checkspec_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDeps keeps the split true: the spec parser opens no sockets and runs
// no programs, what only validates specs (config) links no probe, HTTP or
// TLS code, and caplanced links no probe. (caplanced links net/http, and
// with it crypto/tls, for its metrics endpoint since issue 15.)
func TestDeps(t *testing.T) {
	const mod = "github.com/caplance/caplance/"
	probeCode := []string{mod + "internal/probe", "net/http", "crypto/tls", "crypto/x509"}
	tests := []struct {
		pkg       string
		forbidden []string
	}{
		{mod + "internal/checkspec", append(slices.Clone(probeCode), "net", "os/exec", "golang.org/x/sys/unix")},
		{mod + "internal/config", probeCode},
		{mod + "caplanced", probeCode[:1]},
	}
	for _, tt := range tests {
		t.Run(tt.pkg, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", tt.pkg).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", tt.pkg, err)
			}
			var got []string
			for _, dep := range strings.Fields(string(out)) {
				if slices.Contains(tt.forbidden, dep) {
					got = append(got, dep)
				}
			}
			if diff := cmp.Diff([]string(nil), got); diff != "" {
				t.Errorf("%s links (-want +got):\n%s", tt.pkg, diff)
			}
		})
	}
}
