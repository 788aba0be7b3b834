package check

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// execPath is the PATH an exec check runs with.
const execPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// outputGrace is how long the output is still read after the program has
// exited and its process group has been killed: only a process that left the
// group can hold the pipe open longer.
const outputGrace = 100 * time.Millisecond

func (p *probe) exec(t Target) (bool, string) {
	s := p.s
	r, w, err := os.Pipe()
	if err != nil {
		return false, "exec: " + describe(err)
	}
	defer r.Close()
	// Not CommandContext: the timeout kills the whole group, below.
	cmd := exec.Command(s.path, s.args...)
	cmd.Dir = "/"
	cmd.Env = []string{execPath, "CAPLANCE_BACKEND_NAME=" + t.Name, "CAPLANCE_BACKEND_ADDRESS=" + addrString(t.Address)}
	cmd.Stdout, cmd.Stderr = w, w
	// Pdeathsig: if caplance-healthd dies, so does the check. (It fires when
	// the forking OS thread ends, which for Go means the process, unless the
	// caller locked its thread and ends that goroutine mid-probe.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	w.Close()
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return false, fmt.Sprintf("exec: %s: %s", s.path, describe(pe.Err))
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
		status = "timeout after " + shortDuration(p.timeout.Round(time.Millisecond)) + ", killed"
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
