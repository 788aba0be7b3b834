package daemon

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/balancer"
	"github.com/caplance/caplance/internal/receiver"
)

// Every drop counter and every reason of the AF_XDP path's handing over
// to the raw path is public behaviour (stats.json): caplanced(8) names it.
func TestManPageDocumentsDropReasons(t *testing.T) {
	page, err := os.ReadFile("../../man/caplanced.8.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range slices.Concat(balancer.DropReasons(), receiver.DropReasons(), balancer.ViaRawReasons()) {
		if !strings.Contains(string(page), "**"+reason+"**") {
			t.Errorf("caplanced(8) does not document the drop counter %s", reason)
		}
	}
}
