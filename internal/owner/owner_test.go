package owner_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/owner"
)

// One claim per network namespace: a second one is refused with the
// holder's PID and runtime directory, a claim in another namespace is not,
// and a released claim can be taken again.
func TestClaim(t *testing.T) {
	lab := netnstest.NewForTest(t, "own")
	a, err := lab.AddHost("a", netip.MustParsePrefix("198.18.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddHost("b", netip.MustParsePrefix("198.18.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	claim := func(h *netnstest.Host, dir string) (o *owner.Owner, err error) {
		err = h.Do(func() error { o, err = owner.Claim(dir); return err })
		return o, err
	}
	first, err := claim(a, "/run/first")
	if err != nil {
		t.Fatalf("first claim: %v", err)
	}
	_, err = claim(a, "/run/second")
	var held *owner.HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second claim in the same namespace: got %v, want a HeldError", err)
	}
	want := &owner.HeldError{PID: os.Getpid(), UID: os.Geteuid(), RuntimeDir: "/run/first"}
	if diff := cmp.Diff(want, held); diff != "" {
		t.Errorf("HeldError (-want +got):\n%s", diff)
	}
	if got, want := err.Error(), "a caplanced already runs in this network namespace: PID "; !strings.HasPrefix(got, want) {
		t.Errorf("message %q, want it to start with %q", got, want)
	}
	other, err := claim(b, "/run/first")
	if err != nil {
		t.Fatalf("claim in another namespace: %v", err)
	}
	other.Close()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := claim(a, "/run/second")
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	again.Close()
}

// A process that holds the name without answering as a caplanced is still
// named by its PID.
func TestClaimHeldBySomethingElse(t *testing.T) {
	lab := netnstest.NewForTest(t, "own")
	h, err := lab.AddHost("a", netip.MustParsePrefix("198.18.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	var squatter *net.UnixListener
	err = h.Do(func() (err error) {
		squatter, err = net.ListenUnix("unix", &net.UnixAddr{Name: owner.SocketName, Net: "unix"})
		if err != nil {
			return err
		}
		// Accepts and says nothing useful.
		go func() {
			for {
				c, err := squatter.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("hello\n"))
				c.Close()
			}
		}()
		_, err = owner.Claim("/run/x")
		return err
	})
	defer squatter.Close()
	var held *owner.HeldError
	if !errors.As(err, &held) {
		t.Fatalf("claim of a squatted name: got %v, want a HeldError", err)
	}
	want := &owner.HeldError{PID: os.Getpid(), UID: os.Geteuid()}
	if diff := cmp.Diff(want, held); diff != "" {
		t.Errorf("HeldError (-want +got):\n%s", diff)
	}
}
