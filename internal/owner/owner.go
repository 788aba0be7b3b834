// Package owner makes one caplanced at a time the owner of a network
// namespace's caplance state (the nftables table inet caplance, the VIPs,
// the sysctls), whatever its runtime directory: the owner holds the abstract
// unix socket "@caplance/owner", whose name exists once per network
// namespace and vanishes with the process that bound it, even after a
// SIGKILL. Another caplanced, or caplanced --cleanup, that finds the name
// taken learns from the socket who holds it and refuses to touch anything.
//
// It owns that socket and its one-line answer; it changes nothing on the
// host. The journal's flock (package vip) stays: it keeps two caplanced in
// different namespaces off one runtime directory.
package owner

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SocketName is the abstract socket's name, as ss -x -l shows it.
const SocketName = "@caplance/owner"

// answerPrefix starts the line the owner writes to whoever connects; the
// runtime directory follows.
const answerPrefix = "caplanced runtime-dir="

// answerTimeout bounds the wait for an owner's answer; one that does not
// answer is still named by its PID.
const answerTimeout = 2 * time.Second

// Owner is the held claim; Close releases it.
type Owner struct {
	ln   *net.UnixListener
	done chan struct{}
}

// HeldError says who owns the namespace's caplance state.
type HeldError struct {
	// PID and UID are the holder's, from the kernel (SO_PEERCRED).
	PID, UID int
	// RuntimeDir is the holder's runtime directory, "" if it did not say
	// (it is then not a caplanced, or too busy to answer).
	RuntimeDir string
}

func (e *HeldError) Error() string {
	if e.RuntimeDir == "" {
		return fmt.Sprintf("this network namespace's caplance state is held by PID %d (uid %d), which does not answer as a caplanced (it holds the abstract socket %s)",
			e.PID, e.UID, SocketName)
	}
	return fmt.Sprintf("a caplanced already runs in this network namespace: PID %d, runtime directory %s", e.PID, e.RuntimeDir)
}

// Claim takes ownership of the calling thread's network namespace for a
// caplanced using runtimeDir, or returns a *HeldError naming the owner.
func Claim(runtimeDir string) (*Owner, error) {
	if abs, err := filepath.Abs(runtimeDir); err == nil {
		runtimeDir = abs
	}
	// The holder may exit between a failed bind and the connect: try again.
	for range 3 {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: SocketName, Net: "unix"})
		if err == nil {
			o := &Owner{ln: ln, done: make(chan struct{})}
			go o.serve(runtimeDir)
			return o, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("claiming this network namespace (abstract socket %s): %w", SocketName, err)
		}
		held, err := ask()
		if errors.Is(err, syscall.ECONNREFUSED) {
			continue // gone meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("asking who holds the abstract socket %s: %w", SocketName, err)
		}
		return nil, held
	}
	return nil, fmt.Errorf("the abstract socket %s is taken and released over and over; is another caplanced starting and failing?", SocketName)
}

// ask connects to the owner and returns who it is.
func ask() (*HeldError, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: SocketName, Net: "unix"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	held := &HeldError{PID: int(cred.Pid), UID: int(cred.Uid)}
	_ = c.SetReadDeadline(time.Now().Add(answerTimeout))
	line, _ := bufio.NewReader(io.LimitReader(c, 4096)).ReadString('\n')
	if dir, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), answerPrefix); ok && dir != "" {
		held.RuntimeDir = dir
	}
	return held, nil
}

// serve answers every connection with the runtime directory.
func (o *Owner) serve(runtimeDir string) {
	defer close(o.done)
	answer := []byte(answerPrefix + runtimeDir + "\n")
	for {
		c, err := o.ln.Accept()
		if err != nil {
			return // closed
		}
		_ = c.SetWriteDeadline(time.Now().Add(answerTimeout))
		_, _ = c.Write(answer)
		c.Close()
	}
}

// Close releases the claim: the name is free for the next caplanced.
func (o *Owner) Close() error {
	err := o.ln.Close()
	<-o.done
	return err
}
