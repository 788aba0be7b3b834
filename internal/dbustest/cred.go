package dbustest

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Credential is who a connection is: a uid, a primary gid and supplementary
// groups, as the kernel records them on the socket.
type Credential struct {
	UID    uint32
	GID    uint32
	Groups []uint32
}

func (c Credential) String() string {
	return fmt.Sprintf("uid=%d gid=%d groups=%v", c.UID, c.GID, c.Groups)
}

// dialUnixAs connects to the unix socket at path from a thread running as
// cred. The thread is locked to its goroutine and never unlocked, so the Go
// runtime ends it instead of reusing it with the changed credentials, and
// while it is locked the runtime starts new threads from its template
// thread, never by cloning this one.
func dialUnixAs(path string, cred Credential) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		c, err := dialOnThisThreadAs(path, cred)
		done <- result{c, err}
	}()
	r := <-done
	return r.conn, r.err
}

// dialOnThisThreadAs must run on a locked thread that is thrown away
// afterwards. The raw system calls change this thread's credentials only
// (the libc and syscall package wrappers change every thread's).
func dialOnThisThreadAs(path string, cred Credential) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var groups unsafe.Pointer
	if len(cred.Groups) > 0 {
		groups = unsafe.Pointer(&cred.Groups[0])
	}
	steps := []struct {
		name       string
		nr, a1, a2 uintptr
		a3         uintptr
	}{
		{"setgroups", unix.SYS_SETGROUPS, uintptr(len(cred.Groups)), uintptr(groups), 0},
		// The saved IDs stay root's; the thread ends anyway.
		{"setresgid", unix.SYS_SETRESGID, uintptr(cred.GID), uintptr(cred.GID), ^uintptr(0)},
		{"setresuid", unix.SYS_SETRESUID, uintptr(cred.UID), uintptr(cred.UID), ^uintptr(0)},
	}
	for _, s := range steps {
		if _, _, errno := unix.RawSyscall(s.nr, s.a1, s.a2, s.a3); errno != 0 {
			unix.Close(fd)
			return nil, fmt.Errorf("%s: %w", s.name, errno)
		}
	}
	runtime.KeepAlive(cred.Groups)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("connecting to %s as %v: %w", path, cred, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return net.FileConn(f)
}

// lockedBuffer collects a process's output for the test log.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
