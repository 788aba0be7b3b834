package rawiotest

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPolled: a net.UDPConn's socket is in the runtime's epoll, a socket
// from unix.Socket is not.
func TestPolled(t *testing.T) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var connFD int
	if err := raw.Control(func(fd uintptr) { connFD = int(fd) }); err != nil {
		t.Fatal(err)
	}
	plain, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(plain)
	for _, tc := range []struct {
		name string
		fd   int
		want bool
	}{
		{"net.UDPConn", connFD, true},
		{"unix.Socket", plain, false},
	} {
		got, err := Polled(tc.fd)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: Polled(%d) = %v, want %v", tc.name, tc.fd, got, tc.want)
		}
	}
}
