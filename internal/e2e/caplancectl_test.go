package e2e

import (
	"bytes"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/caplance/caplance/internal/dbustest"
)

// TestCaplancectl runs the real caplancectl as root, as a member of
// caplance-admin and as an unprivileged user against the real caplanced on
// a private system bus with the shipped policy.
func TestCaplancectl(t *testing.T) {
	tb, bus, mgr := newBusTestbed(t)
	root, admin, nobody := dbustest.Root(), dbustest.Admin(t), dbustest.Nobody(t)

	ctl := func(cred dbustest.Credential, args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(caplancectlBin, append([]string{"--bus", bus.Address}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: cred.Groups}}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			if _, ok := err.(*exec.ExitError); !ok {
				t.Fatalf("caplancectl %v: %v", args, err)
			}
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}
	tests := []struct {
		name       string
		cred       dbustest.Credential
		args       []string
		wantCode   int
		wantOutput string // substring of stdout+stderr
	}{
		{"anyone lists", nobody, []string{"list"}, 0, "be2"},
		{"anyone reads stats", nobody, []string{"stats"}, 0, "forwarded"},
		{"anyone reads status", nobody, []string{"status"}, 0, "balancer"},
		{"nobody may not drain", nobody, []string{"drain", "be1"}, 1, "caplance-admin"},
		{"nobody may not add", nobody, []string{"add-backend", "be3", "198.18.0.13"}, 1, "caplance-admin"},
		{"nobody may not reload", nobody, []string{"reload"}, 1, "caplance-admin"},
		{"admin adds", admin, []string{"add-backend", "be3", "198.18.0.13", "--weight", "50"}, 0, ""},
		{"admin drains", admin, []string{"drain", "be3"}, 0, ""},
		{"draining twice changes nothing and says so", admin, []string{"drain", "be3"}, 0, `backend "be3": already drained`},
		{"adding again as it is changes nothing and says so", admin, []string{"add-backend", "be3", "198.18.0.13", "--weight", "50"}, 0, `backend "be3": already added`},
		{"adding again with another weight is refused", admin, []string{"add-backend", "be3", "198.18.0.13", "--weight", "60"}, 1, `"be3": it exists already with weight 50, not 60`},
		{"admin undrains", admin, []string{"undrain", "be3"}, 0, ""},
		{"undraining twice changes nothing and says so", admin, []string{"undrain", "be3"}, 0, `backend "be3": already undrained`},
		{"admin sets a weight", admin, []string{"set-weight", "be3", "70"}, 0, ""},
		{"weight out of range", admin, []string{"set-weight", "be3", "10001"}, 1, "between 0 and 10000"},
		{"unknown backend", root, []string{"show", "be9"}, 1, "no such backend"},
		{"duplicate address", root, []string{"add-backend", "be4", "198.18.0.11"}, 1, "already used"},
		{"bad weight is a usage error", root, []string{"set-weight", "be1", "x"}, 2, `weight "x"`},
		{"root removes", root, []string{"remove-backend", "be3"}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := listBackends(t, mgr)
			code, stdout, stderr := ctl(tt.cred, tt.args...)
			if code != tt.wantCode || !strings.Contains(stdout+stderr, tt.wantOutput) {
				t.Errorf("caplancectl %v as %v: exit %d, output %q%q; want exit %d and %q",
					tt.args, tt.cred, code, stdout, stderr, tt.wantCode, tt.wantOutput)
			}
			if tt.wantCode != 0 {
				if after := listBackends(t, mgr); len(after) != len(before) || after["be1"] != before["be1"] {
					t.Errorf("a refused command changed the backends:\n%v\n%v", before, after)
				}
			}
		})
	}

	t.Run("TAB completes backend and service names from caplanced, for anyone", func(t *testing.T) {
		for _, tt := range []struct {
			words []string
			want  string
		}{
			{[]string{"drain", ""}, "be1\nbe2\n:4\n"},
			{[]string{"list", "--service", ""}, "default\n:4\n"},
		} {
			code, stdout, _ := ctl(nobody, append([]string{"__complete"}, tt.words...)...)
			if code != 0 || stdout != tt.want {
				t.Errorf("caplancectl __complete %q: exit %d, %q; want %q", tt.words, code, stdout, tt.want)
			}
		}
	})

	t.Run("the health user reports health, an admin may not", func(t *testing.T) {
		healthConn := bus.ConnectAs(t, dbustest.Health(t))
		obj := healthConn.Object("org.caplance.Caplance1", "/org/caplance/Caplance1")
		if err := obj.Call("org.caplance.Caplance1.Manager.ReportHealth", 0, "be1", false, "http: status 503").Err; err != nil {
			t.Fatalf("ReportHealth as caplance-health: %v", err)
		}
		if got := listBackends(t, mgr)["be1"]; got.Health != "down" || got.HealthDetail != "http: status 503" {
			t.Errorf("be1 after a down report: %+v", got)
		}
		if n := servedBy(t, tb, 30)["be1"]; n != 0 {
			t.Errorf("a backend reported down served %d new connections", n)
		}
		adminConn := bus.ConnectAs(t, admin)
		err := adminConn.Object("org.caplance.Caplance1", "/org/caplance/Caplance1").
			Call("org.caplance.Caplance1.Manager.ReportHealth", 0, "be1", true, "fake").Err
		if dbustest.ErrorName(err) != "org.freedesktop.DBus.Error.AccessDenied" {
			t.Errorf("ReportHealth as an admin: %v, want AccessDenied", err)
		}
		if got := listBackends(t, mgr)["be1"]; got.Health != "down" {
			t.Errorf("a refused report changed be1: %+v", got)
		}
	})

	t.Run("exit 3 when caplanced is not running", func(t *testing.T) {
		if err := tb.Balancer.Stop(); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := ctl(root, "list")
		if code != 3 || !strings.Contains(stderr, "systemctl start caplanced") {
			t.Errorf("list without caplanced: exit %d, %q", code, stderr)
		}
	})
}
