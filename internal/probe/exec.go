package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/checkspec"
)

// execPath is the PATH an exec check runs with.
const execPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// outputGrace is how long the output is still read after the program has
// exited and its process group has been killed: only a process that left the
// group can hold the pipe open longer.
const outputGrace = 100 * time.Millisecond

// exec runs the program on an OS thread of its own that has given up, for
// its children, every capability it can (dropChildCaps): caplance-healthd
// holds CAP_NET_RAW as an ambient capability, which an execve would pass
// on. Capabilities belong to a thread, so the thread never runs anything
// else: its goroutine ends locked, and Go ends the thread with it (or, for
// the process's main thread, which cannot end, parks it for good). It lives
// until the program has been waited for, as Pdeathsig needs.
func (p *probe) exec(c *checkspec.Exec, t checkspec.Target) (bool, string) {
	type outcome struct {
		up     bool
		detail string
	}
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		if err := dropChildCaps(); err != nil {
			done <- outcome{false, "exec: " + err.Error()}
			return
		}
		up, detail := p.execOnThread(c, t)
		done <- outcome{up, detail}
	}()
	o := <-done
	return o.up, o.detail
}

// dropChildCaps clears, on the calling thread, the inheritable and ambient
// capability sets, and the bounding set as far as the thread may (that
// needs CAP_SETPCAP, which caplance-healthd's unit does not grant; the
// unit's CapabilityBoundingSet= bounds it instead). A program the thread
// then executes starts with no capabilities, unless it is set-user-ID root
// or has file capabilities, which NoNewPrivileges=yes (the unit) disables;
// for a thread of root, an empty bounding set is what empties it.
func dropChildCaps() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	// Permitted and effective stay (they are not inherited across execve
	// by a process that is not root); a capability leaves the ambient set
	// when it leaves the inheritable set.
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("dropping the inheritable capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing the ambient capabilities: %w", err)
	}
	for c := uintptr(0); ; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0)
		if err == unix.EPERM || err == unix.EINVAL { // no CAP_SETPCAP; past the last capability
			return nil
		}
		if err != nil {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
}

// execOnThread runs the program and waits for it; see exec.
func (p *probe) execOnThread(c *checkspec.Exec, t checkspec.Target) (bool, string) {
	r, w, err := os.Pipe()
	if err != nil {
		return false, "exec: " + describe(err)
	}
	defer r.Close()
	// Not CommandContext: the timeout kills the whole group, below.
	cmd := exec.Command(c.Program, c.Args...)
	cmd.Dir = "/"
	cmd.Env = []string{execPath, "CAPLANCE_BACKEND_NAME=" + t.Name, "CAPLANCE_BACKEND_ADDRESS=" + checkspec.AddrString(t.Address)}
	cmd.Stdout, cmd.Stderr = w, w
	// Pdeathsig: if caplance-healthd dies, so does the check. (It fires when
	// the forking OS thread ends: the locked thread of exec, which ends only
	// after the program has been waited for, or with the process.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	w.Close()
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return false, fmt.Sprintf("exec: %s: %s", c.Program, describe(pe.Err))
		}
		return false, "exec: " + describe(err)
	}
	pgid := cmd.Process.Pid
	kill := func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) }

	out := &boundedBuffer{max: MaxOutput}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(out, r)
	}()
	stopTimer := context.AfterFunc(p.ctx, kill)
	err = cmd.Wait()
	// A program that exited on its own just as the timeout expired passes.
	timedOut := !stopTimer() && err != nil
	// Whatever the program left running in its group goes too, which also
	// closes the pipe's other ends.
	kill()
	select {
	case <-copied:
	case <-time.After(outputGrace):
		r.Close() // a process outside the group still holds the pipe
		<-copied
	}

	status := "exit status 0"
	var ee *exec.ExitError
	switch {
	case timedOut && p.parent.Err() == context.Canceled:
		status = "canceled, killed"
	case timedOut:
		status = "timeout after " + checkspec.ShortDuration(p.timeout.Round(time.Millisecond)) + ", killed"
	case errors.As(err, &ee):
		status = ee.Error() // "exit status 1", "signal: segmentation fault"
	case err != nil:
		status = describe(err)
	}
	detail := "exec: " + status
	if o := out.String(); o != "" {
		detail += ": " + o
	}
	return err == nil && !timedOut, detail
}

// boundedBuffer keeps the first max bytes written to it and counts the rest.
type boundedBuffer struct {
	mu    sync.Mutex
	max   int
	buf   []byte
	total int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += len(p)
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// String is the output kept, with a note of how much was left out.
func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(string(b.buf))
	if b.total > len(b.buf) {
		s += fmt.Sprintf(" … [%d more bytes not shown]", b.total-len(b.buf))
	}
	return s
}
