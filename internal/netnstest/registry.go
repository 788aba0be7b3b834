package netnstest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// registryDir holds one file per lab, named after the lab's id, listing the
// lab's namespaces one a line.
const registryDir = "/run/caplance-netnstest"

// netnsDir is where `ip netns` keeps the bind mounts that name namespaces.
const netnsDir = "/run/netns"

// reserve picks an unused lab id and returns its registry file, already
// locked. The file is created unnamed (O_TMPFILE) and locked before it is
// linked into the registry, so a concurrent reapStale can never see it
// unlocked and take it for a dead run's.
func reserve(prefix string) (string, *os.File, error) {
	fd, err := unix.Open(registryDir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return "", nil, fmt.Errorf("create registry file in %s: %w", registryDir, err)
	}
	f := os.NewFile(uintptr(fd), registryDir)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		f.Close()
		return "", nil, fmt.Errorf("lock registry file: %w", err)
	}
	for range 10 {
		id := prefix + strings.ToLower(rand.Text()[:4])
		err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd),
			unix.AT_FDCWD, filepath.Join(registryDir, id), unix.AT_SYMLINK_FOLLOW)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			f.Close()
			return "", nil, fmt.Errorf("register lab %s: %w", id, err)
		}
		return id, f, nil
	}
	f.Close()
	return "", nil, fmt.Errorf("no free lab id for prefix %q after 10 tries", prefix)
}

// record replaces the registry file's list of namespaces.
func record(f *os.File, names []string) error {
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("record namespaces: %w", err)
	}
	if _, err := f.WriteAt([]byte(strings.Join(names, "\n")), 0); err != nil {
		return fmt.Errorf("record namespaces: %w", err)
	}
	return nil
}

// reapStale deletes the labs of dead runs: those whose registry lock is free.
func reapStale() error {
	entries, err := os.ReadDir(registryDir)
	if err != nil {
		return fmt.Errorf("read lab registry: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if err := reap(filepath.Join(registryDir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("stale lab %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}

func reap(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // another New reaped it first
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return nil // its lab is alive
	} else if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	// Another reaper may have removed this file between our open and our lock,
	// and a new lab may have reused the id since; its namespaces are not ours
	// to delete.
	var opened, named unix.Stat_t
	if unix.Fstat(int(f.Fd()), &opened) != nil || unix.Stat(path, &named) != nil ||
		opened.Ino != named.Ino || opened.Dev != named.Dev {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range strings.Fields(string(data)) {
		errs = append(errs, deleteNamespace(name))
	}
	if err := errors.Join(errs...); err != nil {
		return err // keep the file so the next New retries
	}
	return os.Remove(path)
}

// deleteNamespace kills the processes in the named namespace, which would
// otherwise keep it and its links alive, then removes its name. The kernel
// destroys the namespace, and with it its links, once nothing refers to it.
func deleteNamespace(name string) error {
	path := filepath.Join(netnsDir, name)
	var ns unix.Stat_t
	if err := unix.Stat(path, &ns); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	killIn(ns.Dev, ns.Ino)
	// EINVAL: the name exists but was never mounted (a run died inside
	// `ip netns add`); removing the file is all that is left to do.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove namespace %s: %w", name, err)
	}
	return nil
}

// killIn sends SIGKILL to every process, other than this one, whose network
// namespace is the one with the given nsfs device and inode. Errors are
// ignored: a process that exits meanwhile no longer holds the namespace.
func killIn(dev, ino uint64) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && st.Dev == dev && st.Ino == ino {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}
