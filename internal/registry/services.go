package registry

import (
	"fmt"
	"maps"
	"slices"

	"github.com/caplance/caplance/internal/model"
	"github.com/caplance/caplance/internal/quote"
)

// MaxServices bounds how many services a balancer holds: each has a Maglev
// table of its own (65537 slots by default, 256 KiB), built at every change
// of its pool, so a stream of AddService calls must not grow it without end.
const MaxServices = 1000

// Services returns every service, sorted by name.
func (r *Registry) Services() []Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.cur.serviceList)
}

// GetService returns the service of that name.
func (r *Registry) GetService(name string) (Service, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.service(name)
}

func (s *state) service(name string) (Service, bool) {
	i, ok := slices.BinarySearchFunc(s.serviceList, name, func(svc Service, n string) int { return cmpString(svc.Name, n) })
	if !ok {
		return Service{}, false
	}
	return s.serviceList[i], true
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// AddService adds a run-time service, valid on its own (config.CheckService
// made it), with no backends yet. Without runtime it is written to the
// state file and restored at start.
func (r *Registry) AddService(svc model.Service, runtime bool) (Service, error) {
	place := fmt.Sprintf("adding service %s", quote.Q(svc.Name))
	s, err := r.change(place, func(next *state) error {
		if _, ok := next.services[svc.Name]; ok {
			return errorf(ErrAlreadyExists, "%s: a service of that name exists already", place)
		}
		if len(next.services) >= MaxServices {
			return errorf(ErrInvalidArgument, "%s: there are %d services already, as many as a balancer holds", place, MaxServices)
		}
		if err := next.fits(place, svc); err != nil {
			return err
		}
		next.setService(svc.Name, serviceReg{svc: svc, persistent: !runtime})
		return nil
	})
	if err != nil {
		return Service{}, err
	}
	got, _ := s.service(svc.Name)
	return got, nil
}

// fits refuses svc when it would take traffic another service takes, or
// a VIP that is the address of a backend.
func (s *state) fits(place string, svc model.Service) error {
	for name, other := range s.services {
		if name == svc.Name {
			continue
		}
		if vip, proto, port, ok := model.Overlap(svc, other.svc); ok {
			return errorf(ErrAlreadyExists, "%s: %s", place, overlapMessage(svc.Name, name, vip, proto, port))
		}
	}
	for _, v := range svc.VIPs {
		for _, b := range s.list {
			if b.Address == v.Addr {
				return errorf(ErrInvalidArgument, "%s: VIP %s is the address of backend %s (packets would loop)", place, v.Addr, quote.Q(b.Name))
			}
		}
	}
	return nil
}

// ChangeService changes a run-time service: edit gets the service as it is
// and returns it as it is to be, valid on its own (config.CheckService), or
// an error that refuses the change. The name cannot change. Backends keep
// their flows when their service's VIPs, ports, hash or table size change:
// only the service's own table is rebuilt.
func (r *Registry) ChangeService(name string, edit func(model.Service) (model.Service, error)) (Service, error) {
	place := fmt.Sprintf("changing service %s", quote.Q(name))
	s, err := r.change(place, func(next *state) error {
		sr, ok := next.services[name]
		if !ok {
			return serviceNotFound(name)
		}
		if sr.fromConfig {
			return fromConfigFile(name)
		}
		svc, err := edit(sr.svc)
		if err != nil {
			return errorf(ErrInvalidArgument, "%s: %v", place, err)
		}
		if svc.Name != name {
			return errorf(ErrInvalidArgument, "%s: a service cannot be renamed", place)
		}
		if err := next.fits(place, svc); err != nil {
			return err
		}
		sr.svc = svc
		next.setService(name, sr)
		return nil
	})
	if err != nil {
		return Service{}, err
	}
	got, _ := s.service(name)
	return got, nil
}

// RemoveService removes a run-time service with its backends (all run-time
// ones: the configuration file's are in its services), as `ipvsadm -D`
// does. Services of the configuration file are refused.
func (r *Registry) RemoveService(name string) error {
	_, err := r.change(fmt.Sprintf("removing service %s", quote.Q(name)), func(next *state) error {
		sr, ok := next.services[name]
		if !ok {
			return serviceNotFound(name)
		}
		if sr.fromConfig {
			return fromConfigFile(name)
		}
		for _, b := range next.list {
			if b.Service == name {
				next.deleteRuntime(b.Name)
				next.deleteOverride(b.Name)
			}
		}
		next.deleteService(name)
		return nil
	})
	return err
}

func serviceNotFound(name string) error {
	return errorf(ErrNotFound, "service %s: no such service", quote.Q(name))
}

func fromConfigFile(name string) error {
	return errorf(ErrInvalidArgument, "service %s is defined in the configuration file: change it there and reload", quote.Q(name))
}

// setService and deleteService replace s.services, which states share.
func (s *state) setService(name string, sr serviceReg) {
	m := maps.Clone(s.services)
	m[name] = sr
	s.services = m
}

func (s *state) deleteService(name string) {
	m := maps.Clone(s.services)
	delete(m, name)
	s.services = m
}
