package healthd

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/netnstest"
)

// TestKernelSource: a tunnel probe's source is the route's preferred source
// towards the backend, in the backend's family.
func TestKernelSource(t *testing.T) {
	t.Parallel()
	lab := netnstest.NewForTest(t, "hsrc")
	lb, err := lab.AddHost("lb", netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("2001:db8:1::1/64"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		backend string
		want    string
		err     string
	}{
		{"198.18.0.2", "198.18.0.1", ""},
		{"2001:db8:1::2", "2001:db8:1::1", ""},
		{"::ffff:198.18.0.2", "198.18.0.1", ""},
		{"2001:db8:2::2", "", "no route to 2001:db8:2::2: network is unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			var got netip.Addr
			var gotErr error
			if err := lb.Do(func() error {
				got, gotErr = kernelSource(netip.MustParseAddr(tt.backend))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			errText := ""
			if gotErr != nil {
				errText = gotErr.Error()
			}
			if diff := cmp.Diff(tt.want+"|"+tt.err, checkspec.AddrString(got)+"|"+errText); diff != "" {
				t.Errorf("kernelSource (-want +got):\n%s", diff)
			}
		})
	}
}
