package config

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// EnvPrefix starts every environment override.
const EnvPrefix = "CAPLANCED_"

// applyEnv applies CAPLANCED_<SECTION>_<KEY> overrides: the section and key
// names of the file upper-cased, for every key of [balancer] and [receiver]
// that holds a string, an integer or a list of those (lists are
// comma-separated). Setting a key of an absent section creates the section.
// A CAPLANCED_ variable that names no such key is an error, so a typo is
// caught rather than silently ignored.
func applyEnv(raw *rawConfig, environ []string) error {
	settable := map[string]reflect.Value{}
	if raw.Balancer == nil {
		raw.Balancer = &rawBalancer{}
		defer dropIfEmpty(&raw.Balancer)
	}
	if raw.Receiver == nil {
		raw.Receiver = &rawReceiver{}
		defer dropIfEmpty(&raw.Receiver)
	}
	addSettable(settable, "BALANCER", reflect.ValueOf(raw.Balancer).Elem())
	addSettable(settable, "RECEIVER", reflect.ValueOf(raw.Receiver).Elem())

	var errs []error
	for _, kv := range slices.Sorted(slices.Values(environ)) {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		field, ok := settable[strings.TrimPrefix(name, EnvPrefix)]
		if !ok {
			errs = append(errs, fmt.Errorf("environment %s: no such setting (see ENVIRONMENT VARIABLES in caplanced.toml(5))", name))
			continue
		}
		if err := setField(field, value); err != nil {
			errs = append(errs, fmt.Errorf("environment %s=%q: %w", name, value, err))
		}
	}
	return errors.Join(errs...)
}

// EnvNames lists every environment variable that overrides a key, for the
// documentation test and --help.
func EnvNames() []string {
	settable := map[string]reflect.Value{}
	addSettable(settable, "BALANCER", reflect.ValueOf(&rawBalancer{}).Elem())
	addSettable(settable, "RECEIVER", reflect.ValueOf(&rawReceiver{}).Elem())
	var names []string
	for k := range settable {
		names = append(names, EnvPrefix+k)
	}
	sort.Strings(names)
	return names
}

func addSettable(into map[string]reflect.Value, section string, v reflect.Value) {
	for i := range v.NumField() {
		f := v.Field(i)
		if !envSettable(f.Type()) {
			continue
		}
		tag := v.Type().Field(i).Tag.Get("toml")
		into[section+"_"+strings.ToUpper(tag)] = f
	}
}

// envSettable accepts the field types the raw sections use for scalars:
// string, *int and []string.
func envSettable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.String:
		return true
	case reflect.Pointer:
		return t.Elem().Kind() == reflect.Int
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
