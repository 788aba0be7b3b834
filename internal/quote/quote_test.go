package quote_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caplance/caplance/internal/quote"
)

func TestQ(t *testing.T) {
	long := strings.Repeat("x", quote.Max)
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", `""`},
		{"short", "web1", `"web1"`},
		{"exactly Max", long, `"` + long + `"`},
		{"one byte more", long + "y", `"` + long + `"…`},
		{"100 kB", strings.Repeat("a", 100_000), `"` + strings.Repeat("a", quote.Max) + `"…`},
		{"escapes count once quoted", "a\nb", `"a\nb"`},
		{"a rune across the cut", strings.Repeat("x", quote.Max-1) + "é", `"` + strings.Repeat("x", quote.Max-1) + `"…`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quote.Q(tt.in); got != tt.want {
				t.Errorf("Q = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestArg(t *testing.T) {
	long := strings.Repeat("z", 1000)
	cut := strings.Repeat("z", quote.Max)
	tests := []struct {
		format string
		arg    string
		want   string
	}{
		{"path %q: not absolute", "rel", `path "rel": not absolute`},
		{"path %q: not absolute", long, `path "` + cut + `"…: not absolute`},
		{"%s is printed whole", long, long + " is printed whole"},
		{"%v: unknown", "short", "short: unknown"},
	}
	for _, tt := range tests {
		if got := fmt.Sprintf(tt.format, quote.Arg(tt.arg)); got != tt.want {
			t.Errorf("Sprintf(%q, Arg(%d bytes)) = %q, want %q", tt.format, len(tt.arg), got, tt.want)
		}
	}
}
