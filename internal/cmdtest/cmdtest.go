// Package cmdtest builds the project's commands for tests, each at most
// once per test binary, into one directory that other users may read (some
// tests run a command under switched credentials), and starts a command
// with a stop that requires it to exit cleanly on SIGTERM (Start). It owns
// that directory and nothing else; a TestMain calls Cleanup to remove it.
package cmdtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string]string{}
)

// Build builds the command in the module's directory name (e.g.
// "caplanced") and returns the binary's path.
func Build(name string) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if path, ok := built[name]; ok {
		return path, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "caplance-cmdtest-"); err != nil {
			return "", err
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return "", err
		}
	}
	path := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", path, "./"+name)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cmdtest: go build %s: %v\n%s", name, err, out)
	}
	built[name] = path
	return path, nil
}

// Binary is Build for a test: it fails t if the build fails.
func Binary(t testing.TB, name string) string {
	t.Helper()
	path, err := Build(name)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// Cleanup removes the built binaries.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
		dir, built = "", map[string]string{}
	}
}

// moduleRoot is the directory of go.mod above the working directory.
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("cmdtest: no go.mod above the working directory")
		}
		d = parent
	}
}

// stopWithin is how long a command stopped by Start's stop may take to exit.
const stopWithin = 10 * time.Second

// Start starts cmd and returns a channel closed when it has exited, and a
// function that stops it: SIGTERM, after which it must exit with status 0
// within 10 s, or t fails (and it is killed), with log() (its output) in
// the message. stop runs at t's cleanup too; only its first call acts.
func Start(t testing.TB, cmd *exec.Cmd, log func() string) (exited <-chan struct{}, stop func()) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	name := filepath.Base(cmd.Path)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(stopWithin):
				_ = cmd.Process.Kill()
				<-done
				t.Errorf("%s did not exit within %v of SIGTERM\n%s", name, stopWithin, log())
				return
			}
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("%s exited %d after SIGTERM\n%s", name, code, log())
			}
		})
	}
	t.Cleanup(stop)
	return done, stop
}
