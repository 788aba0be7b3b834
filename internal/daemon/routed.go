package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/caplance/caplance/internal/announce"
	"github.com/caplance/caplance/internal/atomicfile"
	"github.com/caplance/caplance/internal/config"
)

// MaintenanceFile is the name, in the state directory, of the maintenance
// flag of a routed balancer: present means in maintenance (no route
// announced), so that a restart during maintenance does not announce.
const MaintenanceFile = "maintenance"

// startAnnouncer prepares a routed balancer: the receiver's ARP sysctls
// (its VIPs live on lo) and the Announcer, in maintenance if the state
// directory says so. Nothing is announced before ready.
func (r *running) startAnnouncer(b *config.Balancer, stateDir string) error {
	if err := r.host.ReceiverSysctls(); err != nil {
		return err
	}
	r.maintenancePath = filepath.Join(stateDir, MaintenanceFile)
	_, err := os.Stat(r.maintenancePath)
	on := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("maintenance flag: %w", err)
	}
	r.ann = announce.New(r.host, announce.Config{
		Table: b.RouteTable, Protocol: b.RouteProtocol, MinBackends: b.RouteMinBackends,
		Changed: r.routesChanged, Logger: r.log,
	})
	if on {
		r.log.Warn("in maintenance: no VIP is announced until caplancectl maintenance off", "file", r.maintenancePath)
	}
	// Also withdraws what an earlier run of this protocol left in the
	// table and its journal did not list.
	if err := r.ann.SetMaintenance(on); err != nil {
		return err
	}
	return nil
}

// announceReady starts the announcements, after READY=1.
func (r *running) announceReady() {
	if r.ann == nil {
		return
	}
	r.hostMu.Lock()
	defer r.hostMu.Unlock()
	// A failure is logged by the Announcer; the next change retries.
	_ = r.ann.SetReady()
}

// setMaintenance is D-Bus SetMaintenance. The flag is written (or
// removed) before the routes change, so that a crash in between leaves the
// next start with the state the operator asked for.
func (r *running) setMaintenance(on bool) error {
	r.hostMu.Lock()
	defer r.hostMu.Unlock()
	var err error
	if on {
		err = atomicfile.Write(r.maintenancePath, []byte("caplancectl maintenance on: no VIP is announced; remove with caplancectl maintenance off\n"), 0o644)
	} else {
		err = atomicfile.Remove(r.maintenancePath)
	}
	if err != nil {
		return fmt.Errorf("maintenance flag: %w; nothing changed", err)
	}
	if err := r.ann.SetMaintenance(on); err != nil {
		return err
	}
	if on {
		r.log.Info("maintenance on: every route withdrawn")
	} else {
		r.log.Info("maintenance off: servable VIPs announced", "vips", r.ann.Status().Announced)
	}
	return nil
}

// routesChanged is the Announcer's Changed: the D-Bus properties and the
// STATUS= line follow.
func (r *running) routesChanged() {
	if r.api != nil {
		st := r.ann.Status()
		r.api.SetRoutes(st.Maintenance, addrStrings(st.Announced))
	}
	select {
	case r.backendsChanged <- struct{}{}:
	default:
	}
}

// withdraw is the first step of a routed balancer's stop: delete every
// route, then keep forwarding for delay so that the routers move the flows
// to the other balancers, answering the watchdog meanwhile. A signal
// (a second SIGTERM or SIGINT) or a failed goroutine ends the delay early.
func (r *running) withdraw(delay time.Duration, sigs <-chan os.Signal, failed <-chan struct{}) {
	notify(r.log, "STOPPING=1\nSTATUS=withdrawing routes")
	r.hostMu.Lock()
	err := r.ann.Withdraw()
	r.hostMu.Unlock()
	if err != nil {
		r.log.Error("withdrawing routes; the stop deletes those left", "err", err)
	} else {
		r.log.Info("routes withdrawn", "forwarding_for", delay)
	}
	status := fmt.Sprintf("routes withdrawn, forwarding for %s more", delay)
	notify(r.log, "STATUS="+status)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return
		case sig := <-sigs:
			r.log.Info("second signal: ending the withdraw delay early", "signal", sig.String())
			return
		case <-failed:
			return
		case answered := <-r.loopChecks:
			close(answered)
		case reply := <-r.reloads:
			reply <- errors.New("caplanced is stopping: no reload")
		case <-r.backendsChanged:
		}
	}
}

// routesStatus is the STATUS= part of a routed balancer.
func (r *running) routesStatus() string {
	st := r.ann.Status()
	s := fmt.Sprintf("routes: %d announced", len(st.Announced))
	if st.Maintenance {
		s += " (maintenance)"
	}
	return s
}

func addrStrings(addrs []netip.Addr) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}
