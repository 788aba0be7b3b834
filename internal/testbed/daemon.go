package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/daemon"
	"github.com/caplance/caplance/internal/netnstest"
	"github.com/caplance/caplance/internal/notifysock"
)

// readyTimeout bounds how long a daemon may take to report READY=1.
const readyTimeout = 15 * time.Second

// Daemon is one caplanced (or caplance-healthd) process.
type Daemon struct {
	Name       string
	ConfigPath string
	RuntimeDir string
	// args are the command-line arguments after the binary.
	args    []string
	LogPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	notify  *notifysock.Socket
}

// StartDaemon writes cfg and starts caplanced on host, serving its D-Bus API
// on bus ("none" for none), and waits for READY=1.
func (tb *Testbed) StartDaemon(host *netnstest.Host, name, cfg, bus string) (*Daemon, error) {
	dir, err := tb.dir(name)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		Name:       name,
		ConfigPath: filepath.Join(dir, "caplanced.toml"),
		RuntimeDir: filepath.Join(dir, "run"),
		LogPath:    filepath.Join(dir, "caplanced.log"),
		exited:     make(chan struct{}),
	}
	if err := os.WriteFile(d.ConfigPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.RuntimeDir, 0o755); err != nil {
		return nil, err
	}
	d.args = []string{"--config", d.ConfigPath, "--runtime-dir", d.RuntimeDir,
		"--state-dir", filepath.Join(dir, "state"), "--bus", bus}
	return d, d.start(host, tb.opts.Binary)
}

// StartHealthd starts caplance-healthd (binary) on host with an empty
// configuration, on bus, and waits for READY=1.
func (tb *Testbed) StartHealthd(host *netnstest.Host, binary, bus string) (*Daemon, error) {
	return tb.StartHealthdWith(host, binary, bus, "")
}

// StartHealthdWith is StartHealthd with cfg as the configuration file.
func (tb *Testbed) StartHealthdWith(host *netnstest.Host, binary, bus, cfg string) (*Daemon, error) {
	dir, err := tb.dir("healthd")
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		Name:       "healthd",
		ConfigPath: filepath.Join(dir, "caplance-healthd.toml"),
		LogPath:    filepath.Join(dir, "caplance-healthd.log"),
		exited:     make(chan struct{}),
	}
	if err := os.WriteFile(d.ConfigPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	d.args = []string{"--config", d.ConfigPath, "--bus", bus}
	return d, d.start(host, binary)
}

// Restart starts a stopped or killed daemon again with the same files.
func (d *Daemon) Restart(host *netnstest.Host, binary string) error {
	d.exited = make(chan struct{})
	return d.start(host, binary)
}

func (d *Daemon) start(host *netnstest.Host, binary string) error {
	sock := filepath.Join(filepath.Dir(d.ConfigPath), "notify.sock")
	os.Remove(sock)
	notify, err := notifysock.Listen(sock)
	if err != nil {
		return err
	}
	d.notify = notify
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	d.cmd = host.Command(context.Background(), binary, d.args...)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := host.Start(d.cmd); err != nil {
		return err
	}
	exited := d.exited
	go func() { d.cmd.Wait(); notify.Close(); close(exited) }()
	if err := d.waitFor("READY=1", 0); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(binary), d.Name, err, d.Log())
	}
	return nil
}

// waitFor waits until a notify message after the first skip ones has the
// line state, the process exits, or readyTimeout passes.
func (d *Daemon) waitFor(state string, skip int) error {
	_, err := d.notify.WaitFor(state, skip, readyTimeout, d.exited)
	if errors.Is(err, notifysock.ErrExited) {
		return fmt.Errorf("%w (%v)", err, d.cmd.ProcessState)
	}
	return err
}

// Messages returns the sd_notify datagrams received so far.
func (d *Daemon) Messages() []string {
	var texts []string
	for _, m := range d.notify.Messages() {
		texts = append(texts, m.Text)
	}
	return texts
}

// Log returns what the daemon has logged.
func (d *Daemon) Log() string {
	data, _ := os.ReadFile(d.LogPath)
	return string(data)
}

// Reload writes cfg and sends SIGHUP, then waits for the READY=1 that ends
// the reload.
func (d *Daemon) Reload(cfg string) error {
	if err := os.WriteFile(d.ConfigPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	seen := len(d.Messages())
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	if err := d.waitFor("RELOADING=1", seen); err != nil {
		return err
	}
	return d.waitFor("READY=1", seen)
}

// Stop sends SIGTERM and waits for a clean exit.
func (d *Daemon) Stop() error {
	select {
	case <-d.exited:
		return nil
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		return fmt.Errorf("caplanced %s: no exit within 10s of SIGTERM", d.Name)
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("caplanced %s: exit code %d after SIGTERM\n%s", d.Name, code, d.Log())
	}
	return nil
}

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig os.Signal) error { return d.cmd.Process.Signal(sig) }

// Wait waits up to 10 s for the daemon to exit and returns its exit code.
func (d *Daemon) Wait() (int, error) {
	select {
	case <-d.exited:
		return d.cmd.ProcessState.ExitCode(), nil
	case <-time.After(10 * time.Second):
		return 0, fmt.Errorf("caplanced %s still runs after 10s", d.Name)
	}
}

// Kill sends SIGKILL, as a crash would, and waits for the process to go.
func (d *Daemon) Kill() error {
	if err := d.cmd.Process.Kill(); err != nil {
		return err
	}
	<-d.exited
	return nil
}

// PID is the caplanced process's id, for reading its CPU time under /proc
// (the data-path benchmark does): `ip netns exec` execs caplanced in place,
// so the process started is caplanced itself.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Stats returns counters written after since (the stats file is rewritten
// every second).
func (d *Daemon) Stats(since time.Time) (daemon.Stats, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := daemon.ReadStats(d.RuntimeDir)
		if err == nil && st.Written.After(since) {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, errors.Join(errors.New("no fresh stats within 5s"), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DisableTxChecksum turns off transmit checksum offload on the interface of
// the calling thread's namespace: between veths of one machine no NIC ever
// fills in the checksums, and a packet the balancer forwards as it is would
// arrive with a bad one.
func DisableTxChecksum(iface string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	const ethtoolSTXCSUM = 0x17
	value := struct{ cmd, data uint32 }{cmd: ethtoolSTXCSUM}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:], iface)
	ifr.data = uintptr(unsafe.Pointer(&value))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&value)
	if errno != 0 {
		return fmt.Errorf("disable tx checksum offload on %s: %w", iface, errno)
	}
	return nil
}
