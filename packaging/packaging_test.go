// Package packaging holds no code, only the test of the .deb and .rpm that
// build.sh makes with nfpm: what each package holds and with which modes, the
// conffiles and what the shipped ones say, the maintainer scripts, and what
// lintian and rpmlint say.
package packaging

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/healthd"
)

// tools the test runs, and how to get each.
var tools = []struct{ name, install string }{
	{"nfpm", "go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"},
	{"go-md2man", "go install github.com/cpuguy83/go-md2man/v2@v2.0.7"},
	{"dpkg-deb", "apt-get install dpkg"},
	{"rpm", "apt-get install --no-install-recommends rpm"},
	{"lintian", "apt-get install --no-install-recommends lintian"},
	{"rpmlint", "apt-get install --no-install-recommends rpmlint"},
	{"rpm2cpio", "apt-get install --no-install-recommends rpmlint"},
	{"cpio", "apt-get install --no-install-recommends rpmlint"},
}

func requireTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool.name); err != nil {
			missing = append(missing, fmt.Sprintf("  %s: %s", tool.name, tool.install))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("tools missing (.ci/setup --test installs them all):\n%s", strings.Join(missing, "\n"))
	}
}

// run runs a command and returns its standard output; it fails the test,
// with both outputs, if the command fails.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// runErr runs a command and returns its combined output.
func runErr(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// top is the repository's top directory, seen from this package's directory.
const top = ".."

func glob(t *testing.T, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(top, pattern))
	if err != nil || len(files) == 0 {
		t.Fatalf("no file matches %s (%v)", pattern, err)
	}
	return files
}

// entry is one file of a package: its mode string ("-rw-r--r--") and owner.
type entry struct {
	Mode, Owner string
}

// wantFiles lists the regular files both packages must hold (and no other),
// from the repository: every unit, policy, sysusers/tmpfiles entry and man
// page there must be in the packages.
func wantFiles(t *testing.T, packager string) map[string]entry {
	t.Helper()
	exe := entry{"-rwxr-xr-x", "root/root"}
	file := entry{"-rw-r--r--", "root/root"}
	want := map[string]entry{
		"/usr/sbin/caplanced":                                              exe,
		"/usr/sbin/caplance-healthd":                                       exe,
		"/usr/bin/caplancectl":                                             exe,
		"/etc/caplance/caplanced.toml":                                     file,
		"/etc/caplance/caplance-healthd.toml":                              file,
		"/usr/share/bash-completion/completions/caplancectl":               file,
		"/usr/share/fish/vendor_completions.d/caplancectl.fish":            file,
		"/usr/share/doc/caplance/examples/bird/caplance.conf":              file,
		"/usr/share/doc/caplance/examples/caplanced.reference.toml":        file,
		"/usr/share/doc/caplance/examples/caplanced.receiver.toml":         file,
		"/usr/share/doc/caplance/examples/caplanced.services.toml":         file,
		"/usr/share/doc/caplance/examples/caplance-healthd.reference.toml": file,
		"/usr/share/doc/caplance/examples/dbus/private-bus.conf":           file,
		"/usr/share/doc/caplance/examples/frr/frr.conf":                    file,
		"/usr/share/doc/caplance/examples/prometheus/caplance.rules.yml":   file,
		"/usr/share/doc/caplance/examples/grafana/caplance.json":           file,
	}
	dirs := map[string]string{
		"packaging/systemd/*.service": "/usr/lib/systemd/system/",
		"packaging/systemd/*.socket":  "/usr/lib/systemd/system/",
		"packaging/dbus/*.conf":       "/usr/share/dbus-1/system.d/",
		"packaging/sysusers.d/*.conf": "/usr/lib/sysusers.d/",
		"packaging/tmpfiles.d/*.conf": "/usr/lib/tmpfiles.d/",
		"packaging/iproute2/*.conf":   "/etc/iproute2/rt_protos.d/",
	}
	for pattern, dir := range dirs {
		for _, f := range glob(t, pattern) {
			want[dir+filepath.Base(f)] = file
		}
	}
	for _, md := range glob(t, "man/*.md") {
		page := strings.TrimSuffix(filepath.Base(md), ".md") // caplanced.8
		section := page[strings.LastIndexByte(page, '.')+1:]
		want["/usr/share/man/man"+section+"/"+page+".gz"] = file
	}
	switch packager {
	case "deb":
		want["/usr/share/zsh/vendor-completions/_caplancectl"] = file
		want["/usr/share/doc/caplance/copyright"] = file
		want["/usr/share/doc/caplance/changelog.Debian.gz"] = file
		want["/usr/share/lintian/overrides/caplance"] = file
	case "rpm":
		want["/usr/share/zsh/site-functions/_caplancectl"] = file
		want["/usr/share/licenses/caplance/copyright"] = file
	}
	return want
}

var conffiles = []string{"/etc/caplance/caplance-healthd.toml", "/etc/caplance/caplanced.toml", "/etc/iproute2/rt_protos.d/caplance.conf"}

func TestPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs and both packages; not with -short")
	}
	requireTools(t)

	out := t.TempDir()
	version := strings.TrimSpace(run(t, nil, "./build.sh", "version"))
	built := strings.Fields(run(t, []string{"OUT=" + out}, "./build.sh", "deb", "rpm"))
	deb := filepath.Join(out, "caplance_"+version+"-1_amd64.deb")
	rpm := filepath.Join(out, "caplance-"+version+"-1.x86_64.rpm")
	for _, f := range []string{deb, rpm} {
		if !slices.Contains(built, f) {
			t.Fatalf("build.sh printed %q, want %s among them", built, f)
		}
	}

	t.Run("deb/files", func(t *testing.T) {
		got := map[string]entry{}
		for _, line := range lines(run(t, nil, "dpkg-deb", "--contents", deb)) {
			// -rw-r--r-- root/root 1940 2026-11-26 16:00 ./etc/caplance/caplanced.toml
			f := strings.Fields(line)
			if len(f) < 6 || !strings.HasPrefix(f[0], "-") {
				continue // directories
			}
			if f[1] == "0/0" {
				f[1] = "root/root" // nfpm writes the changelog it makes with numeric ids only
			}
			got[strings.TrimPrefix(f[5], ".")] = entry{f[0], f[1]}
		}
		if diff := cmp.Diff(wantFiles(t, "deb"), got); diff != "" {
			t.Errorf("files of the .deb (-want +got):\n%s", diff)
		}
		// exec_dir (caplance-healthd.toml(5)), shipped empty.
		if contents := run(t, nil, "dpkg-deb", "--contents", deb); !regexp.MustCompile(`(?m)^drwxr-xr-x root/root .* \./etc/caplance/checks\.d/$`).MatchString(contents) {
			t.Errorf("the .deb has no /etc/caplance/checks.d (0755 root):\n%s", contents)
		}
	})

	t.Run("rpm/files", func(t *testing.T) {
		got := map[string]entry{}
		qf := "[%{FILEMODES:perms}|%{FILEUSERNAME}/%{FILEGROUPNAME}|%{FILENAMES}\n]"
		for _, line := range lines(run(t, nil, "rpm", "-qp", "--qf", qf, rpm)) {
			f := strings.Split(line, "|")
			if len(f) != 3 || !strings.HasPrefix(f[0], "-") {
				continue
			}
			got[f[2]] = entry{f[0], f[1]}
		}
		if diff := cmp.Diff(wantFiles(t, "rpm"), got); diff != "" {
			t.Errorf("files of the .rpm (-want +got):\n%s", diff)
		}
		list := lines(run(t, nil, "rpm", "-qp", "--qf", qf, rpm))
		for _, dir := range []string{"/etc/caplance", "/etc/caplance/checks.d"} {
			if !slices.Contains(list, "drwxr-xr-x|root/root|"+dir) {
				t.Errorf("the rpm does not own %s (0755 root):\n%s", dir, strings.Join(list, "\n"))
			}
		}
	})

	t.Run("deb/conffiles", func(t *testing.T) {
		got := lines(run(t, nil, "dpkg-deb", "--info", deb, "conffiles"))
		slices.Sort(got)
		if diff := cmp.Diff(conffiles, got); diff != "" {
			t.Errorf("conffiles of the .deb (-want +got):\n%s", diff)
		}
	})

	t.Run("rpm/config", func(t *testing.T) {
		// c = %config, n = noreplace (an edited file stays; the new one is .rpmnew).
		var got []string
		for _, line := range lines(run(t, nil, "rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", rpm)) {
			if flags, name, ok := strings.Cut(line, " "); ok && strings.Contains(flags, "c") {
				if !strings.Contains(flags, "n") {
					t.Errorf("%s is %%config without noreplace (flags %q)", name, flags)
				}
				got = append(got, name)
			}
		}
		slices.Sort(got)
		if diff := cmp.Diff(conffiles, got); diff != "" {
			t.Errorf("%%config files of the .rpm (-want +got):\n%s", diff)
		}
	})

	// A routed balancer needs a routing daemon; nothing else does.
	t.Run("deb/suggests", func(t *testing.T) {
		if got := strings.TrimSpace(run(t, nil, "dpkg-deb", "--field", deb, "Suggests")); got != "bird2 | frr" {
			t.Errorf("Suggests of the .deb = %q, want \"bird2 | frr\"", got)
		}
		if depends := run(t, nil, "dpkg-deb", "--field", deb, "Depends"); strings.Contains(depends, "bird") || strings.Contains(depends, "frr") {
			t.Errorf("the .deb depends on a routing daemon: %s", depends)
		}
	})

	t.Run("rpm/suggests", func(t *testing.T) {
		got := lines(run(t, nil, "rpm", "-qp", "--suggests", rpm))
		if diff := cmp.Diff([]string{"bird", "frr"}, got); diff != "" {
			t.Errorf("suggests of the .rpm (-want +got):\n%s", diff)
		}
	})

	t.Run("deb/scripts", func(t *testing.T) {
		info := run(t, nil, "dpkg-deb", "--info", deb)
		for _, script := range []string{"postinst", "prerm", "postrm"} {
			// " 2680 bytes,    65 lines   *  postinst   #!/bin/sh": * = executable
			if !regexp.MustCompile(`\*\s+` + script + `\s+#!/bin/sh`).MatchString(info) {
				t.Errorf("the .deb has no executable /bin/sh %s:\n%s", script, info)
			}
		}
	})

	t.Run("rpm/scripts", func(t *testing.T) {
		scripts := run(t, nil, "rpm", "-qp", "--scripts", rpm)
		for _, s := range []string{"postinstall", "preuninstall", "postuninstall"} {
			if !strings.Contains(scripts, s+" scriptlet (using /bin/sh)") {
				t.Errorf("the .rpm has no %s scriptlet:\n%s", s, scripts)
			}
		}
	})

	t.Run("lintian", func(t *testing.T) {
		// Overrides come from the package (/usr/share/lintian/overrides).
		out, err := runErr(nil, "lintian", "--fail-on", "error,warning", deb)
		t.Logf("lintian:\n%s", out)
		if err != nil {
			t.Errorf("lintian failed: %v", err)
		}
		for _, line := range lines(out) {
			if strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: ") {
				t.Errorf("lintian: %s", line)
			}
		}
	})

	t.Run("rpmlint", func(t *testing.T) {
		// nfpm writes the rpm's cpio payload with absolute names
		// (/usr/sbin/caplanced, not ./usr/sbin/caplanced), and rpmlint
		// unpacks it with a bare `cpio -id`, which would write into / and
		// leave rpmlint's directory empty. A cpio first in PATH adds
		// --no-absolute-filenames.
		real, err := exec.LookPath("cpio")
		if err != nil {
			t.Fatal(err)
		}
		bin := t.TempDir()
		wrapper := filepath.Join(bin, "cpio")
		script := fmt.Sprintf("#!/bin/sh\nexec %s --no-absolute-filenames \"$@\"\n", real)
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		if got, _ := exec.LookPath("cpio"); got != wrapper {
			t.Fatalf("cpio resolves to %s, not the wrapper %s: not running rpmlint", got, wrapper)
		}
		out, err := runErr(nil, "rpmlint", "--config", filepath.Join("lintian", "rpmlint.toml"), rpm)
		t.Logf("rpmlint:\n%s", out)
		if err != nil {
			t.Errorf("rpmlint failed: %v", err)
		}
		if !strings.Contains(out, "1 packages and 0 specfiles checked; 0 errors") {
			t.Errorf("rpmlint did not check the package, or found errors")
		}
		// A check that reads the files (no-binary, dbus-parsing-exception)
		// shows whether the payload was unpacked where rpmlint looks.
		if strings.Contains(out, "no-binary") || strings.Contains(out, "parsing-exception") {
			t.Errorf("rpmlint did not see the package's files")
		}
	})
}

// TestVersion checks how build.sh maps the build's VERSION (git describe) to
// a version both dpkg and rpm accept and order correctly.
func TestVersion(t *testing.T) {
	head := strings.TrimSpace(run(t, nil, "git", "rev-parse", "--short", "HEAD"))
	count := strings.TrimSpace(run(t, nil, "git", "rev-list", "--count", "HEAD"))
	tests := []struct{ in, want string }{
		{"v1.2.3", "1.2.3"},
		{"1.2.3", "1.2.3"},
		{"v1.2.3-rc1", "1.2.3~rc1"},
		{"v1.2.3-4-gabc1234", "1.2.3+git4.abc1234"},
		{"v1.2.3-4-gabc1234-dirty", "1.2.3+git4.abc1234.dirty"},
		{"v1.2.3-rc1-4-gabc1234", "1.2.3~rc1+git4.abc1234"},
		{head, "0.0.0~git" + count + "." + head},
		{head + "-dirty", "0.0.0~git" + count + "." + head + ".dirty"},
		{"0.0.0-dev", "0.0.0~dev"},
	}
	for _, tt := range tests {
		got := strings.TrimSpace(run(t, []string{"VERSION=" + tt.in}, "./build.sh", "version"))
		if got != tt.want {
			t.Errorf("VERSION=%s: build.sh version = %q, want %q", tt.in, got, tt.want)
		}
	}
	for _, bad := range []string{"v1.2.3 beta", "release_1", "v1.2.3/x"} {
		if out, err := runErr([]string{"VERSION=" + bad}, "./build.sh", "version"); err == nil {
			t.Errorf("VERSION=%q: build.sh version = %q, want an error", bad, out)
		}
	}
}

// TestPurgeAccounts checks that the .deb's postrm removes on purge exactly
// the accounts that sysusers.d creates (a user's own group included).
func TestPurgeAccounts(t *testing.T) {
	var users, groups []string
	for _, f := range glob(t, "packaging/sysusers.d/*.conf") {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range lines(string(data)) {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			switch f[0] {
			case "u", "u!":
				users = append(users, f[1])
				groups = append(groups, f[1])
			case "g":
				groups = append(groups, f[1])
			}
		}
	}
	data, err := os.ReadFile(filepath.Join("scripts", "deb", "postrm"))
	if err != nil {
		t.Fatal(err)
	}
	list := func(kind string) []string {
		m := regexp.MustCompile(`(?m)^\s*for ` + kind + ` in ([^;]+);`).FindStringSubmatch(string(data))
		if m == nil {
			t.Fatalf("postrm has no `for %s in …;` loop", kind)
		}
		return strings.Fields(m[1])
	}
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return slices.Compact(s) }
	if diff := cmp.Diff(sorted(users), sorted(list("user"))); diff != "" {
		t.Errorf("users: sysusers.d vs packaging/scripts/deb/postrm (-sysusers +postrm):\n%s", diff)
	}
	if diff := cmp.Diff(sorted(groups), sorted(list("group"))); diff != "" {
		t.Errorf("groups: sysusers.d vs packaging/scripts/deb/postrm (-sysusers +postrm):\n%s", diff)
	}
}

// TestScripts checks the maintainer scripts' syntax, and that every lintian
// override and rpmlint filter has a comment saying why.
func TestScripts(t *testing.T) {
	for _, f := range glob(t, "packaging/scripts/*/*") {
		if out, err := runErr(nil, "sh", "-n", f); err != nil {
			t.Errorf("sh -n %s: %v\n%s", f, err, out)
		}
	}
	justified := func(file string, isRule func(string) bool) {
		data, err := os.ReadFile(filepath.Join("lintian", file))
		if err != nil {
			t.Fatal(err)
		}
		commented := false
		for i, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			switch {
			case line == "":
				commented = false
			case strings.HasPrefix(line, "#"):
				commented = true
			case isRule(line) && !commented:
				t.Errorf("packaging/lintian/%s:%d: %q has no comment above it saying why", file, i+1, line)
			}
		}
	}
	justified("caplance", func(string) bool { return true })
	justified("rpmlint.toml", func(line string) bool { return strings.HasPrefix(line, "'") || strings.HasPrefix(line, `"`) })
}

func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if line := strings.TrimRight(sc.Text(), " \t"); line != "" {
			out = append(out, line)
		}
	}
	return out
}

// shippedSource returns the repository file nfpm.yaml installs as dst.
func shippedSource(t *testing.T, dst string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("nfpm", "nfpm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*- src: (\S+)\n\s*dst: ` + regexp.QuoteMeta(dst) + `\n`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("nfpm.yaml installs nothing as %s", dst)
	}
	return filepath.Join(top, string(m[1]))
}

// TestShippedConfig checks the /etc/caplance/caplanced.toml the packages
// install. As shipped it is refused, each error naming a placeholder on its
// line, so that a started caplanced never puts example addresses on a real
// interface; once the placeholders are addresses (either family) it is a
// balancer, and it names no interface.
func TestShippedConfig(t *testing.T) {
	path := shippedSource(t, "/etc/caplance/caplanced.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = config.Parse("caplanced.toml", data, nil)
	var got []string
	if err != nil {
		got = strings.Split(err.Error(), "\n")
	}
	// line is the line of the placeholder's value.
	line := func(placeholder string) int {
		i := bytes.Index(data, []byte(`"`+placeholder+`"`))
		if i < 0 {
			t.Fatalf("%s has no %q", path, placeholder)
		}
		return 1 + bytes.Count(data[:i], []byte("\n"))
	}
	want := []string{
		fmt.Sprintf(`caplanced.toml: line %d: service "web": vips: "EDIT-ME-VIP": not an IP address`, line("EDIT-ME-VIP")),
		fmt.Sprintf(`caplanced.toml: line %d: service "web": backend "backend1": address "EDIT-ME-BACKEND1": not an IP address`, line("EDIT-ME-BACKEND1")),
		fmt.Sprintf(`caplanced.toml: line %d: service "web": backend "backend2": address "EDIT-ME-BACKEND2": not an IP address`, line("EDIT-ME-BACKEND2")),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s as shipped: errors (-want +got):\n%s", path, diff)
	}

	for _, addrs := range [][3]string{
		{"192.0.2.100", "198.51.100.11", "198.51.100.12"},
		{"2001:db8::100", "2001:db8:1::11", "2001:db8:1::12"},
	} {
		edited := strings.NewReplacer(`"EDIT-ME-VIP"`, `"`+addrs[0]+`"`,
			`"EDIT-ME-BACKEND1"`, `"`+addrs[1]+`"`, `"EDIT-ME-BACKEND2"`, `"`+addrs[2]+`"`).Replace(string(data))
		cfg, err := config.Parse("caplanced.toml", []byte(edited), nil)
		if err != nil {
			t.Errorf("%s with the addresses %v: %v", path, addrs, err)
			continue
		}
		if cfg.Balancer == nil || cfg.Receiver != nil || cfg.SinglePool {
			t.Errorf("with %v: not a balancer alone in the services form: %+v", addrs, cfg)
			continue
		}
		if cfg.Balancer.Interface != "" {
			t.Errorf("with %v: interface = %q, want none (the VIP's subnet picks it)", addrs, cfg.Balancer.Interface)
		}
		var gotAddrs []string
		for _, svc := range cfg.Services {
			for _, vip := range svc.VIPs {
				gotAddrs = append(gotAddrs, svc.Name+" "+vip.Addr.String())
			}
		}
		for _, b := range cfg.Backends {
			gotAddrs = append(gotAddrs, b.Service+" "+b.Name+" "+b.Address.String())
		}
		wantAddrs := []string{"web " + addrs[0], "web backend1 " + addrs[1], "web backend2 " + addrs[2]}
		if diff := cmp.Diff(wantAddrs, gotAddrs); diff != "" {
			t.Errorf("with %v: services and backends (-want +got):\n%s", addrs, diff)
		}
	}
}

// TestShippedHealthdConfig checks the /etc/caplance/caplance-healthd.toml
// the packages install: the defaults, so that a later release's defaults
// reach a host whose file nobody edited.
func TestShippedHealthdConfig(t *testing.T) {
	path := shippedSource(t, "/etc/caplance/caplance-healthd.toml")
	cfg, err := healthd.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(healthd.DefaultConfig(), cfg); diff != "" {
		t.Errorf("%s is not the defaults (-want +got):\n%s", path, diff)
	}
}
