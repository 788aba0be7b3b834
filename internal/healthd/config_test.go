package healthd

import (
	"bytes"
	"github.com/BurntSushi/toml"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/cli"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want *Config
	}{
		{name: "empty file: defaults", doc: "", want: DefaultConfig()},
		{
			name: "every key",
			doc: `
bus = "unix:path=/tmp/bus"
max_concurrent_probes = 8
exec_dir = "/usr/local/lib/caplance/checks/"
[defaults]
interval = "5s"
timeout = "2s"
rise = 1
fall = 5
initial = "down"
jitter = "0s"
[report]
retry_min = "100ms"
retry_max = "1m"
timeout = "3s"
[metrics]
listen = "127.0.0.1:9470"
`,
			want: &Config{
				Bus: "unix:path=/tmp/bus", MaxConcurrentProbes: 8, ExecDir: "/usr/local/lib/caplance/checks",
				Defaults: Defaults{
					Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 1, Fall: 5,
					Initial: checkspec.StateDown, HasInitial: true, Jitter: 0, HasJitter: true,
				},
				RetryMin: 100 * time.Millisecond, RetryMax: time.Minute, ReportTimeout: 3 * time.Second,
				MetricsListen: "127.0.0.1:9470",
			},
		},
		{
			name: "session bus, some defaults",
			doc:  "bus = \"session\"\n[defaults]\ninterval = \"500ms\"\n",
			want: func() *Config {
				c := DefaultConfig()
				c.Bus, c.Defaults.Interval = "session", 500*time.Millisecond
				return c
			}(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig("test.toml", []byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "every problem at once, unknown keys with their line",
			doc: `bus = "nowhere"
max_concurrent_probes = 0
intervall = "1s"
[defaults]
interval = "50ms"
timeout = "3s"
rise = 0
fall = 101
initial = "maybe"
jitter = "-1s"
colour = "blue"
[report]
retry_min = "2s"
retry_max = "1s"
timeout = "soon"
[reports]
retry_min = "1s"
`,
			want: []string{
				`test.toml: line 3: unknown key "intervall"`,
				`test.toml: line 11: unknown key "defaults.colour"`,
				`test.toml: line 16: unknown key "reports"`,
				`test.toml: bus "nowhere": want system, session or a D-Bus address such as unix:path=/run/dbus/system_bus_socket`,
				`test.toml: max_concurrent_probes 0: must be between 1 and 4096`,
				`test.toml: defaults: interval "50ms": must be between 100ms and 1h0m0s`,
				`test.toml: defaults: timeout "3s": longer than the interval 2s (a probe must end before the next starts)`,
				`test.toml: defaults: rise 0: must be between 1 and 100`,
				`test.toml: defaults: fall 101: must be between 1 and 100`,
				`test.toml: defaults: initial "maybe": must be unknown, up or down`,
				`test.toml: defaults: jitter "-1s": must be between 0s and 1h0m0s`,
				`test.toml: report: timeout "soon": not a duration (write e.g. "500ms", "2s" or "1m")`,
				`test.toml: report: retry_max 1s: shorter than retry_min 2s`,
			},
		},
		{
			name: "metrics.listen not an address",
			doc:  "[metrics]\nlisten = \"localhost:9470\"\n",
			want: []string{`test.toml: metrics.listen "localhost:9470": "localhost" is not an IP address (names are not accepted)`},
		},
		{
			name: "metrics.listen without a port",
			doc:  "[metrics]\nlisten = \"[::1]\"\n",
			want: []string{`test.toml: metrics.listen "[::1]": want IP:PORT, such as 127.0.0.1:9469 or [::1]:9469`},
		},
		{
			name: "exec_dir relative",
			doc:  "exec_dir = \"checks.d\"\n",
			want: []string{`test.toml: exec_dir "checks.d": not an absolute path`},
		},
		{
			name: "exec_dir /",
			doc:  "exec_dir = \"/\"\n",
			want: []string{`test.toml: exec_dir "/": must not be /: it would allow every program`},
		},
		{
			name: "wrong types do not hide other problems",
			doc:  "max_concurrent_probes = \"many\"\ncolour = 1\n[defaults]\nrise = \"2\"\nfall = 0\n",
			want: []string{
				`test.toml: line 1: max_concurrent_probes: must be an integer, not a string`,
				`test.toml: line 2: unknown key "colour"`,
				`test.toml: line 4: defaults.rise: must be an integer, not a string`,
				`test.toml: defaults: fall 0: must be between 1 and 100`,
			},
		},
		{
			name: "syntax",
			doc:  "[defaults\n",
			want: []string{`test.toml: line 2, column 10: expected '.' or ']' to end table name, but got '\n' instead`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig("test.toml", []byte(tt.doc))
			if err == nil {
				t.Fatalf("accepted: %+v", got)
			}
			if diff := cmp.Diff(tt.want, strings.Split(err.Error(), "\n")); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

// The shipped configurations are what operators copy: they must parse,
// and the reference must set every key.
func TestShippedConfigs(t *testing.T) {
	files, err := filepath.Glob("../../contrib/caplance-healthd*.toml")
	if err != nil || len(files) < 2 {
		t.Fatalf("shipped configs: %v %v", files, err)
	}
	for _, f := range files {
		cfg, err := LoadConfig(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if strings.HasSuffix(f, "minimal.toml") {
			if diff := cmp.Diff(DefaultConfig(), cfg); diff != "" {
				t.Errorf("%s is not the defaults (-want +got):\n%s", f, diff)
			}
		}
	}
	data, err := os.ReadFile("../../contrib/caplance-healthd.reference.toml")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	md, err := toml.Decode(string(data), &doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range configKeys() {
		if !md.IsDefined(strings.Split(key, ".")...) {
			t.Errorf("the reference configuration does not set %q", key)
		}
	}
	// It documents the defaults: the same configuration as an empty file,
	// with every tunable spelt out.
	ref, err := LoadConfig("../../contrib/caplance-healthd.reference.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Defaults = Defaults{
		Interval: checkspec.DefaultInterval, Timeout: checkspec.DefaultTimeout, Rise: checkspec.DefaultRise, Fall: checkspec.DefaultFall,
		Initial: checkspec.DefaultInitial, HasInitial: true, Jitter: checkspec.DefaultInterval, HasJitter: true,
	}
	if diff := cmp.Diff(want, ref); diff != "" {
		t.Errorf("the reference configuration is not the defaults (-want +got):\n%s", diff)
	}
}

// configKeys are every key of the file, dotted ("defaults.interval").
func configKeys() []string {
	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name := prefix + f.Tag.Get("toml")
			ft := f.Type
			if ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct {
				walk(name+".", ft.Elem())
				continue
			}
			keys = append(keys, name)
		}
	}
	walk("", reflect.TypeFor[rawConfig]())
	return keys
}

// caplance-healthd.toml(5) describes every key, in its section.
func TestManPageDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../../man/caplance-healthd.toml.5.md")
	if err != nil {
		t.Fatal(err)
	}
	page := string(raw)
	for _, key := range configKeys() {
		section, name, ok := strings.Cut(key, ".")
		body := page
		if ok {
			_, rest, found := strings.Cut(page, "\n# ["+section+"]\n")
			if !found {
				t.Errorf("caplance-healthd.toml(5) has no [%s] section", section)
				continue
			}
			body, _, _ = strings.Cut(rest, "\n# ")
		} else {
			name = key
			_, rest, _ := strings.Cut(page, "\n# TOP-LEVEL KEYS\n")
			body, _, _ = strings.Cut(rest, "\n# ")
		}
		if !strings.Contains(body, "**"+name+"** =") {
			t.Errorf("caplance-healthd.toml(5) does not describe %q", key)
		}
	}
}

// caplance-healthd(8) describes every flag, and the check spec syntax of
// package checkspec.
func TestManPageDocumentsEveryFlag(t *testing.T) {
	raw, err := os.ReadFile("../../man/caplance-healthd.8.md")
	if err != nil {
		t.Fatal(err)
	}
	page := string(raw)
	_, options, _ := strings.Cut(page, "\n# OPTIONS\n")
	options, _, _ = strings.Cut(options, "\n# ")
	cmd := Command()
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(options, "\n**--"+f.Name+"**") {
			t.Errorf("OPTIONS does not describe --%s", f.Name)
		}
	})
	for _, entry := range []string{"**--help**", "**--version**"} {
		if !strings.Contains(options, "\n"+entry) {
			t.Errorf("OPTIONS does not describe %s", entry)
		}
	}
	for _, kind := range checkspec.Kinds {
		if !strings.Contains(page, "**"+string(kind)+"**") {
			t.Errorf("caplance-healthd(8) does not describe the %s check", kind)
		}
	}
	for _, name := range []string{"State", "Reason", "Detail", "LatencyUSec", "Successes", "Failures", "LastProbeUSec", "Caplanced", "Status", "Version", "Name", "Address", "Check"} {
		if !strings.Contains(page, "**"+name+"**") {
			t.Errorf("caplance-healthd(8) does not describe the property %s", name)
		}
	}
}

func TestDefaultsParseSpec(t *testing.T) {
	all := Defaults{Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 4, Fall: 6, Initial: checkspec.StateUp, HasInitial: true, Jitter: time.Second, HasJitter: true}
	tests := []struct {
		name     string
		defaults Defaults
		spec     string
		want     string // the canonical spec
		wantErr  string
	}{
		{name: "no defaults", spec: "tcp://:80", want: "tcp://:80"},
		{name: "defaults fill what the spec leaves out", defaults: all, spec: "tcp://:80",
			want: "tcp://:80?interval=5s&timeout=2s&rise=4&fall=6&initial=up&jitter=1s"},
		{name: "the spec wins", defaults: all, spec: "http://:8080/healthz?rise=1&interval=1s&jitter=0s",
			want: "http://:8080/healthz?interval=1s&rise=1&fall=6&initial=up&jitter=0s"},
		{name: "the spec's timeout wins and stretches the default interval", defaults: Defaults{Interval: time.Second}, spec: "tcp://:80?timeout=1500ms",
			want: "tcp://:80?interval=1.5s&timeout=1.5s"},
		{name: "a default timeout is cut to the spec's interval", defaults: all, spec: "udp://:53?send=text:x&interval=1s",
			want: "udp://:53?send=text:x&interval=1s&rise=4&fall=6&initial=up"},
		{name: "a trailing question mark", defaults: Defaults{Rise: 3}, spec: "tcp://:80?", want: "tcp://:80?rise=3"},
		{name: "an invalid spec is the check's error", defaults: all, spec: "tcp://:0", wantErr: `tcp check "tcp://:0": port 0: must be between 1 and 65535`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.defaults.ParseSpec(tt.spec)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.String(); got != tt.want {
				t.Errorf("%s → %s, want %s", tt.spec, got, tt.want)
			}
		})
	}
}

func TestCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(good, []byte("[defaults]\nrise = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("max_concurrent_probes = 0\n[defaults]\nfall = 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args       []string
		code       int
		stdout     string
		stderrPart string
	}{
		{args: []string{"--check-config", "--config", good}, stdout: "ok\n"},
		{args: []string{"--check-config", "--config", good, "--bus", "session"}, stdout: "ok\n"},
		{args: []string{"--check-config", "--config", bad}, code: 1,
			stderrPart: "caplance-healthd: " + bad + ": max_concurrent_probes 0: must be between 1 and 4096\ncaplance-healthd: " + bad + ": defaults: fall 0: must be between 1 and 100\n"},
		{args: []string{"--check-config", "--config", filepath.Join(dir, "none.toml")}, code: 1, stderrPart: "no such file or directory"},
		{args: []string{"extra"}, code: 2, stderrPart: `unexpected argument "extra"`},
		{args: []string{"--help"}, stdout: "Usage: caplance-healthd"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := cli.Execute(Command(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			if !strings.HasPrefix(stdout.String(), tt.stdout) {
				t.Errorf("stdout %q, want %q", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderrPart) {
				t.Errorf("stderr %q, want it to contain %q", stderr.String(), tt.stderrPart)
			}
		})
	}
}
