package healthd

import (
	"strings"
	"testing"
	"time"
)

func TestParseTestWedge(t *testing.T) {
	tests := []struct {
		value   string
		wedge   bool
		after   time.Duration
		wantErr bool
	}{
		{value: ""},
		{value: "loop", wedge: true},
		{value: "loop:250ms", wedge: true, after: 250 * time.Millisecond},
		{value: "worker", wantErr: true},
		{value: "loop:", wantErr: true},
		{value: "loop:-1s", wantErr: true},
		{value: "loop:later", wantErr: true},
	}
	for _, tt := range tests {
		wedge, after, err := parseTestWedge(tt.value)
		if (err != nil) != tt.wantErr || wedge != tt.wedge || after != tt.after {
			t.Errorf("parseTestWedge(%q) = %v, %v, %v; want %v, %v, error %v", tt.value, wedge, after, err, tt.wedge, tt.after, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), TestWedgeEnv) {
			t.Errorf("parseTestWedge(%q): the error %q does not name %s", tt.value, err, TestWedgeEnv)
		}
	}
}
