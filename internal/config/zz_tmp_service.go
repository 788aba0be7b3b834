package config

// TEMPORARY shim (lead): stands in for internal/config/service.go until the
// wt-config branch lands, so that registry and dbusapi build meanwhile. The
// merge replaces it with the real validation.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/caplance/caplance/internal/model"
)

// DefaultService is the name of the implicit service of today's form.
const DefaultService = "default"

// VIPSpec is one VIP of a service as given, with its port list.
type VIPSpec struct{ Address, Ports string }

// ServiceSpec is a service as given, before validation.
type ServiceSpec struct {
	Name      string
	VIPs      []VIPSpec
	Protocols string
	Hash      string
	TableSize *int64
	Check     string
}

// ParsePorts parses "80,443,8000-8099" or "all" (nil).
func ParsePorts(s string) ([]model.PortRange, error) {
	if s == "all" {
		return nil, nil
	}
	var out []model.PortRange
	for _, f := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(f, "-")
		l, err := strconv.ParseUint(lo, 10, 16)
		if err != nil || l == 0 {
			return nil, fmt.Errorf("port %q: not a port", f)
		}
		h := l
		if isRange {
			if h, err = strconv.ParseUint(hi, 10, 16); err != nil || h < l {
				return nil, fmt.Errorf("port range %q: not a range", f)
			}
		}
		out = append(out, model.PortRange{First: uint16(l), Last: uint16(h)})
	}
	return out, nil
}

// ParseProtocols parses "tcp", "udp" or "tcp+udp".
func ParseProtocols(s string) (model.Protocols, error) {
	for _, p := range []model.Protocols{model.TCP, model.UDP, model.TCP | model.UDP} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("protocols %q: must be tcp, udp or tcp+udp", s)
}

// ParseHash parses a hash name.
func ParseHash(s string) (model.Hash, error) {
	for _, h := range model.Hashes() {
		if h.String() == s {
			return h, nil
		}
	}
	return 0, fmt.Errorf("hash %q: must be 5-tuple, source-ip or source-ip-port", s)
}

// CheckService validates spec; defaultTableSize applies when it has none.
func CheckService(spec ServiceSpec, defaultTableSize int) (model.Service, error) {
	svc := model.Service{Name: spec.Name, TableSize: defaultTableSize, Check: spec.Check, Protocols: model.TCP | model.UDP}
	if err := CheckBackendName(spec.Name); err != nil {
		return svc, fmt.Errorf("name: %v", err)
	}
	if spec.TableSize != nil {
		svc.TableSize = int(*spec.TableSize)
	}
	if svc.TableSize == 0 {
		svc.TableSize = 65537
	}
	var err error
	if spec.Protocols != "" {
		if svc.Protocols, err = ParseProtocols(spec.Protocols); err != nil {
			return svc, err
		}
	}
	if spec.Hash != "" {
		if svc.Hash, err = ParseHash(spec.Hash); err != nil {
			return svc, err
		}
	}
	if len(spec.VIPs) == 0 {
		return svc, errors.New("vips: at least one VIP is required")
	}
	for _, v := range spec.VIPs {
		a, err := ParseAddress(v.Address)
		if err != nil {
			return svc, err
		}
		mv := model.VIP{Addr: a}
		if v.Ports != "" {
			if mv.Ports, err = ParsePorts(v.Ports); err != nil {
				return svc, err
			}
		}
		svc.VIPs = append(svc.VIPs, mv)
	}
	if spec.Check != "" {
		if err := CheckSpec(spec.Check); err != nil {
			return svc, err
		}
	}
	return svc, nil
}
