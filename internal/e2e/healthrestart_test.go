package e2e

import (
	"testing"
)

// TestHealthSurvivesRestart: a backend caplance-healthd reported down stays
// out of rotation across a restart of caplanced, with its health and
// detail, until the next report brings it back.
func TestHealthSurvivesRestart(t *testing.T) {
	tb, _, mgr := newBusTestbed(t)
	be1 := tb.Backends[0].Name

	call(t, mgr, "ReportHealth", be1, false, "http: status 503 after 3 failures")
	if n := servedBy(t, tb, 30)[be1]; n != 0 {
		t.Fatalf("the backend reported down served %d of 30 new connections", n)
	}
	lb := tb.Balancer
	if err := lb.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := lb.Restart(tb.LB, caplancedBin); err != nil {
		t.Fatal(err)
	}
	if row := listBackends(t, mgr)[be1]; row.Health != "down" || row.HealthDetail != "http: status 503 after 3 failures" {
		t.Errorf("after the restart: Health %q, HealthDetail %q; want down and the last report's detail", row.Health, row.HealthDetail)
	}
	if n := servedBy(t, tb, 30)[be1]; n != 0 {
		t.Errorf("the backend reported down served %d of 30 new connections after the restart", n)
	}

	call(t, mgr, "ReportHealth", be1, true, "http: status 200 after 2 successes")
	if n := servedBy(t, tb, 60)[be1]; n == 0 {
		t.Errorf("the backend reported up again served none of 60 new connections")
	}
}
