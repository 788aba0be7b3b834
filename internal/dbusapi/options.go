package dbusapi

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/caplance/caplance/internal/config"
	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/quote"
	"github.com/caplance/caplance/internal/registry"
)

// option is a key of an a{sv} options argument and its D-Bus type.
type option struct{ key, sig string }

// The options of AddBackend, AddService and ChangeService
// (caplanced.dbus(7)), in the order their errors list them.
var (
	addBackendOptions    = []option{{"service", "s"}, {"weight", "u"}, {"check", "s"}, {"runtime", "b"}}
	changeServiceOptions = []option{{"vips", "as"}, {"ports", "s"}, {"protocols", "s"}, {"hash", "s"}, {"table_size", "u"}, {"check", "s"}}
	addServiceOptions    = append(slices.Clip(changeServiceOptions), option{"runtime", "b"})
)

// checkOptions refuses options with a key not in known or a value not of
// its type, naming the first bad key in sorted order. why, when not "",
// explains a key that is refused because it cannot be used here.
func checkOptions(options map[string]dbus.Variant, known []option, why map[string]string) error {
	for _, key := range slices.Sorted(maps.Keys(options)) {
		i := slices.IndexFunc(known, func(o option) bool { return o.key == key })
		if i < 0 {
			if w, ok := why[key]; ok {
				return errorf(registry.ErrInvalidArgument, "options: %s: %s", quote.Q(key), w)
			}
			names := make([]string, len(known))
			for j, o := range known {
				names[j] = fmt.Sprintf("%s (%s)", o.key, o.sig)
			}
			return errorf(registry.ErrInvalidArgument, "options: unknown option %s (the options are %s)", quote.Q(key), strings.Join(names, ", "))
		}
		if got := options[key].Signature().String(); got != known[i].sig {
			return errorf(registry.ErrInvalidArgument, "options: %q must be of type %s, not %s", key, known[i].sig, got)
		}
	}
	return nil
}

// parseAddOptions checks AddBackend's options.
func parseAddOptions(options map[string]dbus.Variant) (registry.AddOptions, error) {
	var opts registry.AddOptions
	if err := checkOptions(options, addBackendOptions, nil); err != nil {
		return opts, err
	}
	if v, ok := options["weight"]; ok {
		w := v.Value().(uint32)
		opts.Weight = &w
	}
	if v, ok := options["service"]; ok {
		opts.Service = v.Value().(string)
		if err := checkServiceName(opts.Service); err != nil {
			return opts, err
		}
	}
	opts.Check, _ = options["check"].Value().(string)
	opts.Runtime, _ = options["runtime"].Value().(bool)
	return opts, nil
}

// serviceOptions are AddService's and ChangeService's options of a type
// already checked: each nil when not given.
type serviceOptions struct {
	vips                          []string
	ports, protocols, hash, check *string
	tableSize                     *uint32
}

func parseServiceOptions(options map[string]dbus.Variant) serviceOptions {
	str := func(key string) *string {
		if v, ok := options[key].Value().(string); ok {
			return &v
		}
		return nil
	}
	o := serviceOptions{ports: str("ports"), protocols: str("protocols"), hash: str("hash"), check: str("check")}
	if v, ok := options["vips"]; ok {
		o.vips = v.Value().([]string)
		if o.vips == nil {
			o.vips = []string{} // given empty: refused as such
		}
	}
	if v, ok := options["table_size"].Value().(uint32); ok {
		o.tableSize = &v
	}
	return o
}

// spec is the options as config's service rules take them: what is not
// given stays as the base service has it (config.CheckService).
// Empty strings are refused: config would take them as "not given".
func (o serviceOptions) spec(name string) (config.ServiceSpec, error) {
	spec := config.ServiceSpec{Name: name, VIPs: o.vips}
	for key, v := range map[string]*string{"ports": o.ports, "protocols": o.protocols, "hash": o.hash} {
		if v != nil && *v == "" {
			return spec, fmt.Errorf("%s: empty (leave the option out to keep or default it)", key)
		}
	}
	if o.ports != nil {
		spec.Ports = *o.ports
	}
	if o.protocols != nil {
		spec.Protocols = []string{*o.protocols}
	}
	if o.hash != nil {
		spec.Hash = *o.hash
	}
	if o.check != nil {
		spec.Check = *o.check
	}
	if o.tableSize != nil {
		ts := int64(*o.tableSize)
		spec.TableSize = &ts
	}
	return spec, nil
}

// checkService is the one call of config's service rules (the
// configuration file's): the options of service name over base, the service as it is (or config's
// defaults for a new one).
func checkService(o serviceOptions, name string, base model.Service) (model.Service, error) {
	spec, err := o.spec(name)
	if err != nil {
		return base, err
	}
	svc, problems := config.CheckService(spec, base)
	if o.check != nil && *o.check == "" {
		svc.Check = "" // config takes "" as "keep": here it removes the default check
	}
	if len(problems) > 0 {
		msgs := make([]string, len(problems))
		for i, p := range problems {
			msgs[i] = p.Error()
		}
		return svc, errors.New(strings.Join(msgs, "; "))
	}
	return svc, nil
}
