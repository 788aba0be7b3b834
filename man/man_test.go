// Package man holds the tests of the man pages in this directory, which are
// markdown rendered to roff by go-md2man (make man). The tests render every
// page with the pinned go-md2man and fail when
//
//   - mandoc -T lint -W warning reports anything (style messages, such as
//     input lines longer than 80 bytes, which go-md2man's font escapes
//     produce, are not enforced);
//   - the roff lacks the structure a man page needs: the .TH line, NAME in
//     whatis form, every markdown heading as .SH and every definition as .TP;
//   - a page names a Caplance page that does not exist, or SEE ALSO misses one
//     it names;
//   - caplanced(8) misses a flag that "caplanced --help" of the built binary
//     shows, or describes one it does not.
//
// The other checks of the pages' completeness live beside the code they
// check: internal/ctl (caplancectl(8): commands, flags, exit codes),
// internal/config (caplanced.toml(5): keys, environment variables),
// internal/healthd (caplance-healthd(8) flags, caplance-healthd.toml(5)
// keys) and internal/daemon (caplanced(8): drop counters).
//
// go-md2man and mandoc must be installed (CI does it in .ci/setup); without
// them the tests fail, saying how to install them.
package man

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The go-md2man release the pages are rendered with, here, in make man and
// in the packages: other releases render differently.
const (
	md2manModule  = "github.com/cpuguy83/go-md2man/v2"
	md2manVersion = "v2.0.7"
	md2manInstall = "go install " + md2manModule + "@" + md2manVersion
	mandocInstall = "apt-get install mandoc (the Debian package mandoc)"
)

// manuals are the title line's manual name per section.
var manuals = map[string]string{
	"1": "User Commands",
	"5": "File Formats Manual",
	"7": "Miscellaneous Information Manual",
	"8": "System Manager's Manual",
}

// page is one man page: man/NAME.SECTION.md.
type page struct {
	name, section string
	md            string // the markdown
}

func (p page) file() string  { return p.name + "." + p.section + ".md" }
func (p page) title() string { return p.name + "(" + p.section + ")" }

// pages reads every man/*.md.
func pages(t *testing.T) []page {
	t.Helper()
	files, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	var ps []page
	for _, f := range files {
		base := strings.TrimSuffix(f, ".md")
		dot := strings.LastIndexByte(base, '.')
		if dot < 0 || manuals[base[dot+1:]] == "" {
			t.Errorf("%s: want the name NAME.SECTION.md, SECTION one of 1, 5, 7, 8", f)
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, page{name: base[:dot], section: base[dot+1:], md: string(raw)})
	}
	if len(ps) == 0 {
		t.Fatal("no man pages (*.md) in man/")
	}
	return ps
}

// tool finds a program in PATH, or where go install puts it.
func tool(t *testing.T, name, install string) string {
	t.Helper()
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		gobin, gopath, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		dirs := []string{gobin}
		for _, dir := range filepath.SplitList(gopath) {
			dirs = append(dirs, filepath.Join(dir, "bin"))
		}
		for _, dir := range dirs {
			if path := filepath.Join(dir, name); dir != "" && isExecutable(path) {
				return path
			}
		}
	}
	t.Fatalf("%s is not installed (the man page tests need it): %s", name, install)
	return ""
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

var (
	renderOnce sync.Once
	rendered   map[string]string // page file → roff
	renderErr  error
)

// render renders every page with go-md2man, once per test binary.
func render(t *testing.T, ps []page) map[string]string {
	t.Helper()
	md2man := tool(t, "go-md2man", md2manInstall)
	renderOnce.Do(func() {
		renderErr = checkMd2manVersion(md2man)
		if renderErr != nil {
			return
		}
		dir, err := os.MkdirTemp("", "caplance-man-")
		if err != nil {
			renderErr = err
			return
		}
		defer os.RemoveAll(dir)
		rendered = map[string]string{}
		for _, p := range ps {
			out := filepath.Join(dir, p.name+"."+p.section)
			// go-md2man prints warnings (a markdown construct it cannot
			// render) on stderr and still exits 0.
			msg, err := exec.Command(md2man, "-in", p.file(), "-out", out).CombinedOutput()
			if err != nil || len(msg) > 0 {
				renderErr = fmt.Errorf("go-md2man -in %s: %v\n%s", p.file(), err, msg)
				return
			}
			roff, err := os.ReadFile(out)
			if err != nil {
				renderErr = err
				return
			}
			rendered[p.file()] = string(roff)
		}
	})
	if renderErr != nil {
		t.Fatal(renderErr)
	}
	return rendered
}

// checkMd2manVersion reads the module version go install recorded in the
// binary.
func checkMd2manVersion(md2man string) error {
	out, err := exec.Command("go", "version", "-m", md2man).Output()
	if err != nil {
		return fmt.Errorf("go version -m %s: %v (want go-md2man %s: %s)", md2man, err, md2manVersion, md2manInstall)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "mod" && f[1] == md2manModule {
			if f[2] != md2manVersion {
				return fmt.Errorf("%s is go-md2man %s, want %s: %s", md2man, f[2], md2manVersion, md2manInstall)
			}
			return nil
		}
	}
	return fmt.Errorf("%s is not %s %s: %s", md2man, md2manModule, md2manVersion, md2manInstall)
}

// TestMandocLint renders every page and runs mandoc -T lint -W warning on
// it: warnings, errors and unsupported input all fail.
func TestMandocLint(t *testing.T) {
	ps := pages(t)
	roffs := render(t, ps)
	mandoc := tool(t, "mandoc", mandocInstall)
	dir := t.TempDir()
	for _, p := range ps {
		t.Run(p.title(), func(t *testing.T) {
			path := filepath.Join(dir, p.name+"."+p.section)
			if err := os.WriteFile(path, []byte(roffs[p.file()]), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(mandoc, "-T", "lint", "-W", "warning", path).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("mandoc -T lint -W warning %s (rendered from %s): %v\n%s", filepath.Base(path), p.file(), err, out)
			}
		})
	}
}

var (
	thLine      = regexp.MustCompile(`^\.TH (\S+) (\S+) "([^"]*)" "([^"]*)" "([^"]*)"$`)
	mdHeading   = regexp.MustCompile(`(?m)^# (.+)$`)
	fontOpen    = regexp.MustCompile(`\\f[BI]`)
	fontClose   = regexp.MustCompile(`\\f[PR]`)
	leakedMark  = regexp.MustCompile("\\*\\*|`|\\]\\(|^:")
	inlineMacro = regexp.MustCompile(`^\.[A-Za-z]+`)
)

// TestRoffStructure checks what go-md2man made of each page: the title
// line, NAME in the form whatis and lexgrog(1) parse, every markdown heading
// as a section and every definition list entry as a tagged paragraph, no
// markdown left over, fonts closed.
func TestRoffStructure(t *testing.T) {
	ps := pages(t)
	roffs := render(t, ps)
	for _, p := range ps {
		t.Run(p.title(), func(t *testing.T) {
			roff := roffs[p.file()]
			lines := strings.Split(roff, "\n")

			// .TH TITLE SECTION "DATE" "SOURCE" "MANUAL", from the
			// markdown's first line % TITLE SECTION "DATE" "Caplance" "MANUAL".
			var th []string
			for _, l := range lines {
				if strings.HasPrefix(l, ".TH") {
					th = thLine.FindStringSubmatch(l)
					if th == nil {
						t.Errorf("title line %q: want .TH %s %s \"YYYY-MM-DD\" \"Caplance\" %q (the markdown's first line: %% %s %s \"YYYY-MM-DD\" \"Caplance\" %q)",
							l, strings.ToUpper(p.name), p.section, manuals[p.section], strings.ToUpper(p.name), p.section, manuals[p.section])
					}
					break
				}
			}
			if th != nil {
				if th[1] != strings.ToUpper(p.name) || th[2] != p.section {
					t.Errorf(".TH %s %s: want .TH %s %s", th[1], th[2], strings.ToUpper(p.name), p.section)
				}
				if _, err := time.Parse(time.DateOnly, th[3]); err != nil {
					t.Errorf(".TH date %q: want YYYY-MM-DD", th[3])
				}
				if th[4] != "Caplance" || th[5] != manuals[p.section] {
					t.Errorf(".TH source %q, manual %q: want \"Caplance\", %q", th[4], th[5], manuals[p.section])
				}
			} else if !strings.Contains(roff, "\n.TH ") {
				t.Errorf("no .TH line: the markdown must start with %% %s %s \"YYYY-MM-DD\" \"Caplance\" %q", strings.ToUpper(p.name), p.section, manuals[p.section])
			}

			// Sections: exactly the markdown's headings, in order; NAME
			// first, SYNOPSIS next (commands and files), SEE ALSO last.
			var sections []string
			for _, l := range lines {
				if name, ok := strings.CutPrefix(l, ".SH "); ok {
					sections = append(sections, strings.Trim(name, `"`))
				}
			}
			var headings []string
			for _, m := range mdHeading.FindAllStringSubmatch(p.md, -1) {
				headings = append(headings, m[1])
			}
			if !slices.Equal(sections, headings) {
				t.Errorf("rendered sections %q, want the markdown's headings %q", sections, headings)
			}
			want := []string{"NAME"}
			if p.section != "7" {
				want = append(want, "SYNOPSIS")
			}
			if len(sections) < len(want) || !slices.Equal(sections[:len(want)], want) {
				t.Errorf("sections %q: want them to start with %q", sections, want)
			}
			for _, s := range []string{"DESCRIPTION", "SEE ALSO"} {
				if !slices.Contains(sections, s) {
					t.Errorf("no %s section", s)
				}
			}
			if len(sections) > 0 && sections[len(sections)-1] != "SEE ALSO" {
				t.Errorf("last section %q: want SEE ALSO", sections[len(sections)-1])
			}

			// NAME: "name \- description" on one line.
			if name := roffSection(lines, "NAME"); len(name) != 1 || !strings.HasPrefix(name[0], p.name+` \- `) {
				t.Errorf("NAME section %q: want one line %q", name, p.name+` \- description`)
			}
			// SYNOPSIS: plain paragraphs; a definition list there is a
			// mistake in the markdown.
			if slices.Contains(roffSection(lines, "SYNOPSIS"), ".TP") {
				t.Errorf("SYNOPSIS has a definition list (a line starting with ':' after a synopsis line)")
			}

			// Every definition (":   " in markdown) is a .TP with its term.
			defs := 0
			for _, l := range strings.Split(p.md, "\n") {
				if strings.HasPrefix(l, ":   ") {
					defs++
				}
			}
			tps := 0
			for i, l := range lines {
				if l != ".TP" {
					continue
				}
				tps++
				if i+2 >= len(lines) || lines[i+1] == "" || inlineMacro.MatchString(lines[i+1]) || lines[i+2] == "" {
					t.Errorf("line %d: .TP without a term and its text", i+1)
				}
			}
			if tps != defs {
				t.Errorf("%d .TP in the roff, want one per definition (%d lines starting with ':   ' in the markdown)", tps, defs)
			}

			// Text: no markdown left over, every font change closed.
			inExample := false
			for i, l := range lines {
				switch {
				case l == ".EX":
					inExample = true
				case l == ".EE":
					inExample = false
				case !inExample && leakedMark.MatchString(l):
					t.Errorf("line %d: markdown not rendered: %q", i+1, l)
				}
			}
			if o, c := len(fontOpen.FindAllString(roff, -1)), len(fontClose.FindAllString(roff, -1)); o != c {
				t.Errorf("%d font changes (\\fB, \\fI) but %d returns (\\fP, \\fR)", o, c)
			}
		})
	}
}

// roffSection is the non-empty lines of the section name.
func roffSection(lines []string, name string) []string {
	var body []string
	in := false
	for _, l := range lines {
		if strings.HasPrefix(l, ".SH ") {
			in = strings.Trim(l[len(".SH "):], `"`) == name
			continue
		}
		if in && l != "" {
			body = append(body, l)
		}
	}
	return body
}

var (
	// A reference as the pages write it: **caplanced.toml**(5); bare in
	// running text: caplance-healthd(8).
	reference  = regexp.MustCompile(`(?:\*\*([a-z][a-z0-9_.+-]*)\*\*|\b(caplance[a-z0-9.-]*))\(([1-9])\)`)
	seeAlsoRef = regexp.MustCompile(`^\*\*([a-z][a-z0-9_.+-]*)\*\*\(([1-9])\)$`)
)

// TestCrossReferences checks that every Caplance page a page names exists
// with that section, and that SEE ALSO is a list of **name**(section) that
// includes every Caplance page the text names, and not the page itself.
func TestCrossReferences(t *testing.T) {
	ps := pages(t)
	exists := map[string]bool{}
	for _, p := range ps {
		exists[p.title()] = true
	}
	for _, p := range ps {
		t.Run(p.title(), func(t *testing.T) {
			body, seeAlso, ok := strings.Cut(p.md, "\n# SEE ALSO\n")
			if !ok {
				t.Fatal("no SEE ALSO section")
			}
			if rest, _, more := strings.Cut(seeAlso, "\n# "); more {
				t.Errorf("SEE ALSO is not the last section")
				seeAlso = rest
			}
			named := map[string]bool{} // Caplance pages the text names
			for _, m := range reference.FindAllStringSubmatch(body, -1) {
				name := m[1] + m[2]
				ref := name + "(" + m[3] + ")"
				if !strings.HasPrefix(name, "caplance") {
					continue
				}
				if !exists[ref] {
					t.Errorf("names %s: there is no man/%s.%s.md", ref, name, m[3])
				}
				if ref != p.title() {
					named[ref] = true
				}
			}
			listed := map[string]bool{}
			for _, entry := range strings.Split(strings.TrimSpace(seeAlso), ",") {
				entry = strings.TrimSpace(entry)
				m := seeAlsoRef.FindStringSubmatch(entry)
				if m == nil {
					t.Errorf("SEE ALSO entry %q: want **name**(section), entries separated by commas", entry)
					continue
				}
				ref := m[1] + "(" + m[2] + ")"
				switch {
				case ref == p.title():
					t.Errorf("SEE ALSO names the page itself")
				case listed[ref]:
					t.Errorf("SEE ALSO names %s twice", ref)
				case strings.HasPrefix(m[1], "caplance") && !exists[ref]:
					t.Errorf("SEE ALSO names %s: there is no man/%s.%s.md", ref, m[1], m[2])
				}
				listed[ref] = true
			}
			for ref := range named {
				if !listed[ref] {
					t.Errorf("the page names %s but SEE ALSO does not", ref)
				}
			}
		})
	}
	// Every page can be found from another one.
	for _, p := range ps {
		found := false
		for _, q := range ps {
			if q.title() != p.title() && strings.Contains(q.md, "**"+p.name+"**("+p.section+")") {
				found = true
			}
		}
		if !found {
			t.Errorf("no other page names %s", p.title())
		}
	}
}

// helpFlag is the line of a flag in "caplanced --help": "      --name  usage"
// or "      --name PLACEHOLDER  usage" (pflag's FlagUsages, -h with its
// shorthand).
var helpFlag = regexp.MustCompile(`^  (?:-[a-z], |    )--([a-z0-9][a-z0-9-]*)(?: ([A-Z]+))?  `)

// TestCaplancedFlags builds caplanced, reads its flags from --help as users
// see them, and checks that caplanced(8) describes each in OPTIONS (with an
// argument exactly when the flag takes one) and shows it in SYNOPSIS, and
// describes no flag caplanced does not have.
func TestCaplancedFlags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "caplanced")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/caplance/caplance/caplanced").CombinedOutput(); err != nil {
		t.Fatalf("go build caplanced: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "--help")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("caplanced --help: %v\n%s", err, stderr.Bytes())
	}
	help := stdout.String()
	takesArg := map[string]bool{"help": false} // --help is answered by package cli, not listed
	for _, line := range strings.Split(help, "\n") {
		if m := helpFlag.FindStringSubmatch(line); m != nil {
			takesArg[m[1]] = m[2] != ""
		}
	}
	if len(takesArg) < 3 || !strings.Contains(help, "caplanced(8)") {
		t.Fatalf("caplanced --help: want its flags and a pointer to caplanced(8); it printed:\n%s", help)
	}

	raw, err := os.ReadFile("caplanced.8.md")
	if err != nil {
		t.Fatal(err)
	}
	section := func(name string) string {
		_, rest, ok := strings.Cut(string(raw), "\n# "+name+"\n")
		if !ok {
			t.Fatalf("caplanced(8) has no %s section", name)
		}
		body, _, _ := strings.Cut(rest, "\n# ")
		return body
	}
	synopsis, options := section("SYNOPSIS"), section("OPTIONS")
	// Definition terms of OPTIONS: the lines that start with **--.
	var terms []string
	for _, l := range strings.Split(options, "\n") {
		if strings.HasPrefix(l, "**--") {
			terms = append(terms, l)
		}
	}
	documented := map[string]bool{}
	for _, term := range terms {
		for _, m := range regexp.MustCompile(`\*\*--([a-z0-9-]+)\*\*`).FindAllStringSubmatch(term, -1) {
			documented[m[1]] = true
		}
	}
	for name, arg := range takesArg {
		entry := "**--" + name + "**"
		if !strings.Contains(synopsis, entry) {
			t.Errorf("SYNOPSIS does not show %s", entry)
		}
		i := slices.IndexFunc(terms, func(term string) bool { return strings.Contains(term, entry) })
		if i < 0 {
			t.Errorf("OPTIONS does not describe %s (a line starting with **--)", entry)
			continue
		}
		if hasArg := strings.Contains(terms[i], entry+" *"); hasArg != arg {
			t.Errorf("OPTIONS: %q: --%s takes an argument: %v, but the entry shows one: %v", terms[i], name, arg, hasArg)
		}
	}
	for name := range documented {
		if _, ok := takesArg[name]; !ok {
			t.Errorf("OPTIONS describes --%s, which caplanced --help does not list", name)
		}
	}
}
