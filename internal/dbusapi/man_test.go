package dbusapi

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5/introspect"
)

// TestManPageDocumentsAPI: caplanced.dbus(7) names, in bold, every method,
// signal and property of the interfaces the golden introspection files
// hold (TestIntrospection keeps them equal to what is served) and every
// option of the methods that take options.
func TestManPageDocumentsAPI(t *testing.T) {
	page, err := os.ReadFile(filepath.Join("..", "..", "man", "caplanced.dbus.7.md"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, golden := range []string{"manager.xml", "service.xml", "backend.xml"} {
		raw, err := os.ReadFile(filepath.Join("testdata", golden))
		if err != nil {
			t.Fatal(err)
		}
		var node introspect.Node
		if err := xml.Unmarshal(raw, &node); err != nil {
			t.Fatalf("%s: %v", golden, err)
		}
		for _, iface := range node.Interfaces {
			if !strings.HasPrefix(iface.Name, "org.caplance.") {
				continue
			}
			names = append(names, iface.Name)
			for _, m := range iface.Methods {
				names = append(names, m.Name)
			}
			for _, s := range iface.Signals {
				names = append(names, s.Name)
			}
			for _, p := range iface.Properties {
				names = append(names, p.Name)
			}
		}
	}
	for _, opts := range [][]option{addBackendOptions, addServiceOptions, changeServiceOptions} {
		for _, o := range opts {
			names = append(names, o.key)
		}
	}
	for _, name := range names {
		if !strings.Contains(string(page), "**"+name+"**") {
			t.Errorf("caplanced.dbus(7) does not name **%s**", name)
		}
	}
}
