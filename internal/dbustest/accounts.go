package dbustest

import (
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The accounts of caplanced.dbus(7), AUTHORIZATION.
const (
	// DaemonUser may own org.caplance.Caplance1.
	DaemonUser = "caplance"
	// HealthUser may call ReportHealth.
	HealthUser = "caplance-health"
	// AdminGroup may change the backend set and reload.
	AdminGroup = "caplance-admin"
)

var accountsMu sync.Mutex

// EnsureAccounts creates the system accounts the shipped policy names when
// they are missing, as a package would (the commands CI runs up front):
//
//	groupadd --system caplance-admin
//	useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin caplance
//	useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin caplance-health
//
// It never changes or deletes an existing account, and the accounts it
// creates stay: other test binaries, running at the same time, may use
// them. A concurrent creation by another process is not an error.
func EnsureAccounts(t testing.TB) {
	t.Helper()
	accountsMu.Lock()
	defer accountsMu.Unlock()
	if _, err := user.LookupGroup(AdminGroup); err != nil {
		create(t, func() error { _, err := user.LookupGroup(AdminGroup); return err },
			"groupadd", "--system", AdminGroup)
	}
	for _, name := range []string{DaemonUser, HealthUser} {
		if _, err := user.Lookup(name); err != nil {
			create(t, func() error { _, err := user.Lookup(name); return err },
				"useradd", "--system", "--user-group", "--no-create-home",
				"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name)
		}
	}
}

// create runs the command until exists says the account is there: a
// concurrent useradd holds the passwd lock for a moment, and a concurrent
// creation of the same account makes ours fail.
func create(t testing.TB, exists func() error, name string, args ...string) {
	t.Helper()
	var out []byte
	var err error
	for range 20 {
		out, err = exec.Command(name, args...).CombinedOutput()
		if exists() == nil {
			t.Logf("dbustest: created the system account: %s %v", name, args)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("dbustest: %s %v: %v: %s", name, args, err, out)
}

// Nobody is an unprivileged caller: the user nobody with no other group.
func Nobody(t testing.TB) Credential {
	t.Helper()
	return User(t, "nobody")
}

// Admin is a member of caplance-admin: nobody with caplance-admin as a
// supplementary group. The bus and caplanced take the groups from the
// connecting process, so no account has to be made a member.
func Admin(t testing.TB) Credential {
	t.Helper()
	c := Nobody(t)
	c.Groups = []uint32{GroupID(t, AdminGroup)}
	return c
}

// Health is the user caplance-health, with its own group.
func Health(t testing.TB) Credential {
	t.Helper()
	return User(t, HealthUser)
}

// Root is uid 0 with group 0.
func Root() Credential { return Credential{Groups: []uint32{0}} }

// User is the user name with its primary group and no other.
func User(t testing.TB, name string) Credential {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("dbustest: %v", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("dbustest: user %s: uid %q gid %q", name, u.Uid, u.Gid)
	}
	return Credential{UID: uint32(uid), GID: uint32(gid), Groups: []uint32{uint32(gid)}}
}

// GroupID returns the gid of the group name.
func GroupID(t testing.TB, name string) uint32 {
	t.Helper()
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatalf("dbustest: %v", err)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		t.Fatalf("dbustest: group %s: gid %q: %v", name, g.Gid, err)
	}
	return uint32(gid)
}
