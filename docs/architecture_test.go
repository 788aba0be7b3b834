// Package docs holds no code, only the test that keeps architecture.md's
// "Packages" section true: every package of the module is named there and
// put in one group (commands, service packages, pure packages, test
// support), and the imports `go list` reports follow the groups' rules.
package docs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/caplance/caplance"

// groups as architecture.md names them in its bullet list.
const (
	commands = "Commands"
	pure     = "Pure packages"
	support  = "Test support"
	service  = "Service packages"
)

// pkg is what the test needs of `go list -json`.
type pkg struct {
	ImportPath string
	Standard   bool
	GoFiles    []string
	Imports    []string
}

// listModule returns the module's packages (test-only ones included) and
// every package they import, by import path.
func listModule(t *testing.T) (own []pkg, all map[string]pkg) {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json", "./...")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	all = map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("go list output: %v", err)
		}
		all[p.ImportPath] = p
	}
	for path, p := range all {
		if rel, ok := strings.CutPrefix(path, module+"/"); ok && rel != "docs" && rel != "man" && rel != "packaging" {
			own = append(own, p)
		}
	}
	slices.SortFunc(own, func(a, b pkg) int { return strings.Compare(a.ImportPath, b.ImportPath) })
	if len(own) == 0 {
		t.Fatal("go list found no packages of the module")
	}
	return own, all
}

// packagesSection is architecture.md's "## Packages" section.
func packagesSection(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Packages\n")
	if !ok {
		t.Fatal(`architecture.md has no "## Packages" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	return section
}

var (
	codeSpan = regexp.MustCompile("`([^`]+)`")
	boldSpan = regexp.MustCompile(`\*\*([^*]+)\*\*`)
)

// docGroups reads the group bullets ("- Pure packages: `internal/maglev`,
// …") into package (relative path) → group. Service packages are the ones
// no other bullet names.
func docGroups(t *testing.T, section string) map[string]string {
	t.Helper()
	groups := map[string]string{}
	seen := map[string]bool{}
	for _, item := range strings.Split(section, "\n- ") {
		name, rest, ok := strings.Cut(item, ":")
		if !ok || !slices.Contains([]string{commands, pure, support}, name) {
			continue
		}
		rest, _, _ = strings.Cut(rest, "\n\n")
		seen[name] = true
		for _, m := range codeSpan.FindAllStringSubmatch(rest, -1) {
			groups[m[1]] = name
		}
	}
	for _, g := range []string{commands, pure, support} {
		if !seen[g] {
			t.Fatalf("architecture.md's Packages section has no %q bullet naming its packages in `code`", "- "+g+": ")
		}
	}
	return groups
}

var apartPair = regexp.MustCompile("`([^`]+)` ↛\\s+`([^`]+)`")

// docApart reads the "- Apart:" bullet's pairs (`internal/a` ↛
// `internal/b`: a must not import b) as relative paths.
func docApart(t *testing.T, section string) [][2]string {
	t.Helper()
	_, item, ok := strings.Cut(section, "\n- Apart:")
	if !ok {
		t.Fatal(`architecture.md's Packages section has no "- Apart: " bullet`)
	}
	item, _, _ = strings.Cut(item, "\n\n")
	var pairs [][2]string
	for _, m := range apartPair.FindAllStringSubmatch(item, -1) {
		pairs = append(pairs, [2]string{m[1], m[2]})
	}
	if len(pairs) == 0 {
		t.Fatal("architecture.md's \"- Apart:\" bullet has no pair `internal/a` ↛ `internal/b`")
	}
	return pairs
}

// docParagraphs returns the packages that have a paragraph of their own:
// the code spans inside a bold span (**`internal/flow`**), without a
// trailing slash.
func docParagraphs(section string) map[string]bool {
	named := map[string]bool{}
	for _, b := range boldSpan.FindAllStringSubmatch(section, -1) {
		for _, m := range codeSpan.FindAllStringSubmatch(b[1], -1) {
			named[strings.TrimSuffix(m[1], "/")] = true
		}
	}
	return named
}

// TestPackagesDocumented fails when a package of the module has no
// paragraph in architecture.md's Packages section, or a paragraph or group
// names a package that does not exist.
func TestPackagesDocumented(t *testing.T) {
	own, _ := listModule(t)
	section := packagesSection(t)
	paragraphs := docParagraphs(section)
	groups := docGroups(t, section)
	exists := map[string]bool{}
	for _, p := range own {
		rel := strings.TrimPrefix(p.ImportPath, module+"/")
		exists[rel] = true
		if !paragraphs[rel] {
			t.Errorf("package %s has no paragraph in docs/architecture.md's Packages section: add one starting **`%s`** that says what it owns", rel, rel)
		}
	}
	for rel := range paragraphs {
		if !exists[rel] {
			t.Errorf("docs/architecture.md's Packages section has a paragraph for %s, which is not a package of the module: remove it or fix the path", rel)
		}
	}
	for _, pair := range docApart(t, section) {
		for _, rel := range pair {
			if !exists[rel] {
				t.Errorf("docs/architecture.md's \"Apart\" bullet names %s, which is not a package of the module: remove the pair or fix the path", rel)
			}
		}
	}
	for rel, g := range groups {
		if !exists[rel] {
			t.Errorf("docs/architecture.md's %q bullet names %s, which is not a package of the module: remove it or fix the path", g, rel)
		}
	}
}

// TestImportRules fails when a package's non-test imports break its
// group's rule in architecture.md:
//
//   - a pure package imports the standard library and pure packages only;
//   - nothing imports a command (the compiler already forbids it) and only
//     test support imports test support;
//   - a package of an "Apart" pair does not import the other one;
//   - commands and service packages may import anything else.
func TestImportRules(t *testing.T) {
	own, all := listModule(t)
	section := packagesSection(t)
	groups := docGroups(t, section)
	apart := docApart(t, section)
	group := func(path string) string {
		rel := strings.TrimPrefix(path, module+"/")
		if g, ok := groups[rel]; ok {
			return g
		}
		return service
	}
	for _, p := range own {
		rel := strings.TrimPrefix(p.ImportPath, module+"/")
		g := group(p.ImportPath)
		for _, imp := range p.Imports {
			dep, ok := all[imp]
			if !ok {
				t.Fatalf("go list reports %s importing %s but does not list it", rel, imp)
			}
			if err := allowed(g, dep, group); err != nil {
				t.Errorf("%s (%s) imports %s: %v", rel, strings.ToLower(g), strings.TrimPrefix(imp, module+"/"), err)
			}
			if slices.Contains(apart, [2]string{rel, strings.TrimPrefix(imp, module+"/")}) {
				t.Errorf("%s imports %s, which docs/architecture.md's \"Apart\" bullet forbids: "+
					"share the type through internal/model, or pass a function in from the daemon", rel, strings.TrimPrefix(imp, module+"/"))
			}
		}
	}
}

// allowed says why a package of group g may not import dep, or nil.
func allowed(g string, dep pkg, group func(string) string) error {
	if dep.Standard {
		return nil
	}
	own := strings.HasPrefix(dep.ImportPath, module+"/")
	switch {
	case g == pure && (!own || group(dep.ImportPath) != pure):
		return fmt.Errorf("a pure package imports only the standard library and other pure packages; " +
			"move the code that needs it into a service package, or move the package out of the " +
			`"Pure packages" bullet of docs/architecture.md and say why`)
	case own && group(dep.ImportPath) == support && g != support:
		return fmt.Errorf("only tests import test support; import it from a _test.go file, " +
			`or move the package out of the "Test support" bullet of docs/architecture.md`)
	}
	return nil
}
