package healthd

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caplance/caplance/internal/checkspec"
	"github.com/caplance/caplance/internal/config"
)

// DefaultConfigPath is where the packaged caplance-healthd looks for its
// configuration.
const DefaultConfigPath = "/etc/caplance/caplance-healthd.toml"

// Defaults of the keys of caplance-healthd.toml(5).
const (
	DefaultBus                 = "system"
	DefaultMaxConcurrentProbes = 64
	MaxMaxConcurrentProbes     = 4096
	DefaultRetryMin            = 500 * time.Millisecond
	DefaultRetryMax            = 30 * time.Second
	DefaultReportTimeout       = 5 * time.Second
)

// Config is a validated caplance-healthd.toml.
type Config struct {
	// Bus is "system", "session" or a D-Bus address.
	Bus string
	// MaxConcurrentProbes bounds the probes running at once.
	MaxConcurrentProbes int
	// Defaults are the tunables of every check whose spec does not set
	// them.
	Defaults Defaults
	// ExecDir is where the programs of exec checks of backends added over
	// D-Bus must lie (execRefusal).
	ExecDir string
	// RetryMin and RetryMax bound the backoff between tries of reports
	// that failed; ReportTimeout bounds one ReportHealth call.
	RetryMin, RetryMax, ReportTimeout time.Duration
	// MetricsListen is metrics.listen: where the metrics are served when
	// systemd passes no socket; "" for nowhere.
	MetricsListen string
}

// Defaults are check tunables; a zero field (and a false HasInitial or
// HasJitter) is not set, and check's own default applies.
type Defaults struct {
	Interval, Timeout time.Duration
	Rise, Fall        int
	Initial           checkspec.State
	HasInitial        bool
	Jitter            time.Duration
	HasJitter         bool
}

// DefaultConfig is the configuration of an empty file.
func DefaultConfig() *Config {
	return &Config{
		Bus:                 DefaultBus,
		MaxConcurrentProbes: DefaultMaxConcurrentProbes,
		ExecDir:             DefaultExecDir,
		RetryMin:            DefaultRetryMin,
		RetryMax:            DefaultRetryMax,
		ReportTimeout:       DefaultReportTimeout,
	}
}

type rawConfig struct {
	Bus                 string       `toml:"bus"`
	MaxConcurrentProbes *int         `toml:"max_concurrent_probes"`
	ExecDir             *string      `toml:"exec_dir"`
	Defaults            *rawDefaults `toml:"defaults"`
	Report              *rawReport   `toml:"report"`
	Metrics             *rawMetrics  `toml:"metrics"`
}

type rawMetrics struct {
	Listen string `toml:"listen"`
}

type rawDefaults struct {
	Interval string `toml:"interval"`
	Timeout  string `toml:"timeout"`
	Rise     *int   `toml:"rise"`
	Fall     *int   `toml:"fall"`
	Initial  string `toml:"initial"`
	Jitter   string `toml:"jitter"`
}

type rawReport struct {
	RetryMin string `toml:"retry_min"`
	RetryMax string `toml:"retry_max"`
	Timeout  string `toml:"timeout"`
}

// LoadConfig reads and validates the file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes and validates data, named name in errors. Every
// problem is reported: the error is an errors.Join of one error per
// problem, each starting with name.
func ParseConfig(name string, data []byte) (*Config, error) {
	var raw rawConfig
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	unknown, err := config.DecodeStrict(data, &raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// Unknown keys are reported with the problems of the known ones.
	for _, err := range unknown {
		add("%v", err)
	}

	cfg := DefaultConfig()
	switch raw.Bus {
	case "":
	case "system", "session":
		cfg.Bus = raw.Bus
	default:
		if !strings.Contains(raw.Bus, ":") {
			add("bus %q: want system, session or a D-Bus address such as unix:path=/run/dbus/system_bus_socket", raw.Bus)
		}
		cfg.Bus = raw.Bus
	}
	if m := raw.Metrics; m != nil && m.Listen != "" {
		if err := config.CheckListen(m.Listen); err != nil {
			add("metrics.listen %q: %v", short(m.Listen), err)
		} else {
			cfg.MetricsListen = m.Listen
		}
	}
	if n := raw.MaxConcurrentProbes; n != nil {
		if *n < 1 || *n > MaxMaxConcurrentProbes {
			add("max_concurrent_probes %d: must be between 1 and %d", *n, MaxMaxConcurrentProbes)
		} else {
			cfg.MaxConcurrentProbes = *n
		}
	}
	if d := raw.ExecDir; d != nil {
		switch {
		case !filepath.IsAbs(*d):
			add("exec_dir %q: not an absolute path", short(*d))
		case filepath.Clean(*d) == "/":
			add("exec_dir %q: must not be /: it would allow every program", *d)
		default:
			cfg.ExecDir = filepath.Clean(*d)
		}
	}
	if d := raw.Defaults; d != nil {
		cfg.Defaults = validateDefaults(*d, add)
	}
	if r := raw.Report; r != nil {
		cfg.RetryMin = duration(r.RetryMin, DefaultRetryMin, 10*time.Millisecond, time.Hour, "report: retry_min", add)
		cfg.RetryMax = duration(r.RetryMax, DefaultRetryMax, 10*time.Millisecond, time.Hour, "report: retry_max", add)
		cfg.ReportTimeout = duration(r.Timeout, DefaultReportTimeout, 10*time.Millisecond, time.Minute, "report: timeout", add)
		if cfg.RetryMax < cfg.RetryMin {
			add("report: retry_max %v: shorter than retry_min %v", cfg.RetryMax, cfg.RetryMin)
		}
	}
	if len(problems) > 0 {
		errs := make([]error, len(problems))
		for i, p := range problems {
			errs[i] = fmt.Errorf("%s: %s", name, p)
		}
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

func validateDefaults(raw rawDefaults, add func(string, ...any)) Defaults {
	var d Defaults
	if raw.Interval != "" {
		d.Interval = duration(raw.Interval, 0, checkspec.MinInterval, checkspec.MaxInterval, "defaults: interval", add)
	}
	if raw.Timeout != "" {
		d.Timeout = duration(raw.Timeout, 0, checkspec.MinTimeout, checkspec.MaxInterval, "defaults: timeout", add)
		interval := cmpOr(d.Interval, checkspec.DefaultInterval)
		if d.Timeout > interval {
			add("defaults: timeout %q: longer than the interval %v (a probe must end before the next starts)", raw.Timeout, interval)
		}
	}
	d.Rise = count(raw.Rise, "defaults: rise", add)
	d.Fall = count(raw.Fall, "defaults: fall", add)
	if raw.Initial != "" {
		switch raw.Initial {
		case "unknown":
			d.Initial, d.HasInitial = checkspec.StateUnknown, true
		case "up":
			d.Initial, d.HasInitial = checkspec.StateUp, true
		case "down":
			d.Initial, d.HasInitial = checkspec.StateDown, true
		default:
			add("defaults: initial %q: must be unknown, up or down", raw.Initial)
		}
	}
	if raw.Jitter != "" {
		d.Jitter = duration(raw.Jitter, 0, 0, checkspec.MaxJitter, "defaults: jitter", add)
		d.HasJitter = true
	}
	return d
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// duration parses a Go duration in [lo, hi]; def when raw is empty or
// invalid.
func duration(raw string, def, lo, hi time.Duration, place string, add func(string, ...any)) time.Duration {
	if raw == "" {
		return def
	}
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		add("%s %q: not a duration (write e.g. \"500ms\", \"2s\" or \"1m\")", place, raw)
	case d < lo || d > hi:
		add("%s %q: must be between %v and %v", place, raw, lo, hi)
	default:
		return d
	}
	return def
}

func count(raw *int, place string, add func(string, ...any)) int {
	if raw == nil {
		return 0
	}
	if *raw < 1 || *raw > checkspec.MaxRiseFall {
		add("%s %d: must be between 1 and %d", place, *raw, checkspec.MaxRiseFall)
		return 0
	}
	return *raw
}

// ParseSpec parses a backend's check spec and fills in the tunables it does
// not set from d. A spec whose own timeout is longer than the default
// interval gets that timeout as its interval.
func (d Defaults) ParseSpec(spec string) (*checkspec.Spec, error) {
	s, err := checkspec.Parse(spec)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(spec)
	if err != nil {
		return s, nil // Parse accepted it: cannot happen
	}
	given, _ := url.ParseQuery(u.RawQuery)
	var add []string
	set := func(name, value string) { add = append(add, name+"="+url.QueryEscape(value)) }
	interval := s.Interval
	if !given.Has("interval") && d.Interval != 0 {
		interval = d.Interval
		if given.Has("timeout") {
			interval = max(interval, s.Timeout)
		}
		set("interval", interval.String())
	}
	if !given.Has("timeout") && d.Timeout != 0 {
		set("timeout", min(d.Timeout, interval).String())
	}
	if !given.Has("rise") && d.Rise != 0 {
		set("rise", strconv.Itoa(d.Rise))
	}
	if !given.Has("fall") && d.Fall != 0 {
		set("fall", strconv.Itoa(d.Fall))
	}
	if !given.Has("initial") && d.HasInitial {
		set("initial", d.Initial.String())
	}
	if !given.Has("jitter") && d.HasJitter {
		set("jitter", d.Jitter.String())
	}
	if len(add) == 0 {
		return s, nil
	}
	sep := "?"
	if strings.Contains(spec, "?") {
		sep = "&"
		if strings.HasSuffix(spec, "?") || strings.HasSuffix(spec, "&") {
			sep = ""
		}
	}
	return checkspec.Parse(spec + sep + strings.Join(add, "&"))
}
