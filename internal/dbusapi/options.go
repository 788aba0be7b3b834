package dbusapi

import (
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

// specOf is the service svc as it would be given: what ChangeService's
// options apply to.
func specOf(svc model.Service) config.ServiceSpec {
	spec := config.ServiceSpec{Name: svc.Name, Protocols: svc.Protocols.String(), Hash: svc.Hash.String(), Check: svc.Check}
	ts := int64(svc.TableSize)
	spec.TableSize = &ts
	for _, v := range svc.VIPs {
		spec.VIPs = append(spec.VIPs, config.VIPSpec{Address: v.Addr.String(), Ports: model.FormatPorts(v.Ports)})
	}
	return spec
}

// apply sets the options given on spec. Given VIPs all get the given port
// list, else the one the service has: a run-time service has one port list
// for all of its VIPs (AddService gives one).
func (o serviceOptions) apply(spec config.ServiceSpec) config.ServiceSpec {
	ports := "all"
	if len(spec.VIPs) > 0 {
		ports = spec.VIPs[0].Ports
	}
	if o.ports != nil {
		ports = *o.ports
	}
	if o.vips != nil {
		spec.VIPs = nil
		for _, a := range o.vips {
			spec.VIPs = append(spec.VIPs, config.VIPSpec{Address: a})
		}
	}
	if o.vips != nil || o.ports != nil {
		for i := range spec.VIPs {
			spec.VIPs[i].Ports = ports
		}
	}
	if o.protocols != nil {
		spec.Protocols = *o.protocols
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
	return spec
}

// checkService is the one call of config's service rules (the
// configuration file's): spec as given, with defaultTableSize for a spec
// without a table size.
func checkService(spec config.ServiceSpec, defaultTableSize uint32) (model.Service, error) {
	return config.CheckService(spec, int(defaultTableSize))
}
