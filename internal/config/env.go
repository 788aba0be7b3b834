package config

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/caplance/caplance/internal/quote"
)

// EnvPrefix starts every environment override.
const EnvPrefix = "CAPLANCED_"

// applyEnv applies CAPLANCED_<SECTION>_<KEY> overrides: the section and key
// names of the file upper-cased, for every key of [balancer], [receiver] and [metrics]
// that holds a string, an integer, a boolean or a list of strings (lists are
// comma-separated). Setting a key of an absent section creates the section.
// A CAPLANCED_ variable that names no such key is a problem, so a typo is
// caught rather than silently ignored. set maps each key set (lookup) to
// its variable. Services and their backends have no variables: they are
// lists of tables. CAPLANCED_BALANCER_VIPS is the vips of the single-pool
// form, so with [[service]] entries it is an error, as balancer.vips is.
func applyEnv(raw *rawConfig, environ []string) (set map[string]string, probs problems) {
	settable := map[string]envField{}
	if raw.Balancer == nil {
		raw.Balancer = &rawBalancer{}
		defer dropIfEmpty(&raw.Balancer)
	}
	if raw.Receiver == nil {
		raw.Receiver = &rawReceiver{}
		defer dropIfEmpty(&raw.Receiver)
	}
	if raw.Metrics == nil {
		raw.Metrics = &rawMetrics{}
		defer dropIfEmpty(&raw.Metrics)
	}
	addSettable(settable, "balancer", reflect.ValueOf(raw.Balancer).Elem())
	addSettable(settable, "receiver", reflect.ValueOf(raw.Receiver).Elem())
	addSettable(settable, "metrics", reflect.ValueOf(raw.Metrics).Elem())

	set = map[string]string{}
	for _, kv := range slices.Sorted(slices.Values(environ)) {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		f, ok := settable[strings.TrimPrefix(name, EnvPrefix)]
		if !ok {
			probs = append(probs, problem{env: name, msg: "no such setting (see ENVIRONMENT VARIABLES in caplanced.toml(5))"})
			continue
		}
		set[lookup(f.key)] = name
		if err := setField(f.value, value); err != nil {
			probs = append(probs, problem{env: name, key: f.key, msg: fmt.Sprintf("%s: %v", quote.Q(value), err)})
		}
	}
	return set, probs
}

// envField is a key that a variable can set.
type envField struct {
	key   []string
	value reflect.Value
}

// EnvNames lists every environment variable that overrides a key, for the
// documentation test and --help.
func EnvNames() []string {
	settable := map[string]envField{}
	addSettable(settable, "balancer", reflect.ValueOf(&rawBalancer{}).Elem())
	addSettable(settable, "receiver", reflect.ValueOf(&rawReceiver{}).Elem())
	addSettable(settable, "metrics", reflect.ValueOf(&rawMetrics{}).Elem())
	var names []string
	for k := range settable {
		names = append(names, EnvPrefix+k)
	}
	sort.Strings(names)
	return names
}

func addSettable(into map[string]envField, section string, v reflect.Value) {
	for i := range v.NumField() {
		f := v.Field(i)
		if !envSettable(f.Type()) {
			continue
		}
		tag := v.Type().Field(i).Tag.Get("toml")
		into[strings.ToUpper(section+"_"+tag)] = envField{key: []string{section, tag}, value: f}
	}
}

// envSettable accepts the field types the raw sections use for scalars:
// string, *int, *bool and []string.
func envSettable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.String:
		return true
	case reflect.Pointer:
		return t.Elem().Kind() == reflect.Int || t.Elem().Kind() == reflect.Bool
	case reflect.Slice:
		return t.Elem().Kind() == reflect.String
	}
	return false
}

func setField(f reflect.Value, value string) error {
	switch f.Kind() {
	case reflect.String:
		f.SetString(value)
	case reflect.Pointer:
		if f.Type().Elem().Kind() == reflect.Bool {
			b, err := strconv.ParseBool(strings.TrimSpace(value))
			if err != nil {
				return fmt.Errorf("not a boolean (true or false)")
			}
			f.Set(reflect.ValueOf(&b))
			return nil
		}
		n, err := strconv.Atoi(strings.TrimSpace(value))
		if err != nil {
			return fmt.Errorf("not an integer")
		}
		f.Set(reflect.ValueOf(&n))
	case reflect.Slice:
		var items []string
		for _, s := range strings.Split(value, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
		f.Set(reflect.ValueOf(items))
	}
	return nil
}

// dropIfEmpty removes a section that applyEnv created and no variable set.
func dropIfEmpty[T any](section **T) {
	if reflect.ValueOf(**section).IsZero() {
		*section = nil
	}
}
