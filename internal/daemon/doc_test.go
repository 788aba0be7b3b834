package daemon

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

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

// Every field of stats.json, at every depth, has a snake_case name that
// caplanced(8) documents in its stats.json entry.
func TestManPageDocumentsStatsFields(t *testing.T) {
	page, err := os.ReadFile("../../man/caplanced.8.md")
	if err != nil {
		t.Fatal(err)
	}
	_, entry, ok := strings.Cut(string(page), "\n*RUNTIME-DIR/stats.json*\n")
	if !ok {
		t.Fatal("caplanced(8) has no RUNTIME-DIR/stats.json entry")
	}
	entry, _, _ = strings.Cut(entry, "\n*") // up to the next file
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ == reflect.TypeFor[time.Time]() {
			return
		}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !snake.MatchString(name) {
				t.Errorf("%s%s: JSON name %q is not snake_case", prefix, f.Name, name)
				continue
			}
			if !strings.Contains(entry, "**"+name+"**") {
				t.Errorf("caplanced(8)'s stats.json entry does not document %s%s", prefix, name)
			}
			walk(prefix+name+".", f.Type)
		}
	}
	walk("", reflect.TypeFor[Stats]())
}
