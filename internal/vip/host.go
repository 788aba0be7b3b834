package vip

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/caplance/caplance/internal/atomicfile"
)

// Host makes host changes and journals how to undo them. It is not safe for
// concurrent use; the daemon serialises changes. All methods act on the
// network namespace of the calling thread.
type Host struct {
	path string
	lock *os.File // nil once closed
	// changes is the journal, oldest first; its first nLeft entries were
	// left by an earlier run.
	changes []Change
	nLeft   int
}

// ErrLocked is returned by Open when another process holds the journal.
var ErrLocked = errors.New("host-change journal is in use by another caplanced")

var errClosed = errors.New("vip: Host is closed")

// Open loads the journal in dir, creating dir if needed, and locks it for
// this process until Close. Leftovers reports what an earlier run left.
func Open(dir string) (*Host, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock host-change journal: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s is locked)", ErrLocked, lock.Name())
		}
		return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	path := filepath.Join(dir, JournalName)
	// A crash while writing leaves only the temporary file half-written;
	// the journal itself is intact.
	if err := atomicfile.RemoveStale(path); err != nil {
		lock.Close()
		return nil, fmt.Errorf("remove stale journal: %w", err)
	}
	changes, err := readJournal(path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &Host{path: path, lock: lock, changes: changes, nLeft: len(changes)}, nil
}

// Close releases the journal's lock without undoing anything, as the kernel
// does when the process dies. The Host is unusable afterwards.
func (h *Host) Close() error {
	if h.lock == nil {
		return nil
	}
	err := h.lock.Close() // releases the flock
	h.lock = nil
	return err
}

// Path is the journal's file name.
func (h *Host) Path() string { return h.path }

// Leftovers returns the changes an earlier run recorded and did not undo.
func (h *Host) Leftovers() []Change { return slices.Clone(h.changes[:h.nLeft]) }

// Changes returns every change the journal holds, oldest first: the
// leftovers followed by the changes made through h.
func (h *Host) Changes() []Change { return slices.Clone(h.changes) }

// Undo undoes every recorded change, newest first. It keeps going when one
// fails and returns the failures joined; the journal then keeps just the
// changes that failed, and is removed when all succeeded.
func (h *Host) Undo() error {
	if h.lock == nil {
		return errClosed
	}
	var errs []error
	var failed []Change // newest first
	nLeft := 0
	for i := len(h.changes) - 1; i >= 0; i-- {
		c := h.changes[i]
		if err := undo(c); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", c, err))
			failed = append(failed, c)
			if i < h.nLeft {
				nLeft++
			}
		}
	}
	slices.Reverse(failed)
	h.changes, h.nLeft = failed, nLeft
	if err := writeJournal(h.path, h.changes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// record appends c to the journal, durably, before the change is made.
func (h *Host) record(c Change) error {
	if h.lock == nil {
		return errClosed
	}
	h.changes = append(h.changes, c)
	if err := writeJournal(h.path, h.changes); err != nil {
		h.changes = h.changes[:len(h.changes)-1]
		return err
	}
	return nil
}

// forget drops the newest entry, recorded for a change that then failed or
// turned out to be no change at all, and joins any journal error to err.
func (h *Host) forget(err error) error {
	h.changes = h.changes[:len(h.changes)-1]
	if werr := writeJournal(h.path, h.changes); werr != nil {
		// The entry stays on disk; undoing a change that was never made
		// is harmless.
		return errors.Join(err, werr)
	}
	return err
}

// rollback undoes the changes recorded since the journal had mark entries,
// for an operation that failed half-way; err is that operation's error.
func (h *Host) rollback(mark int, err error) error {
	errs := []error{err}
	for len(h.changes) > mark {
		c := h.changes[len(h.changes)-1]
		if uerr := undo(c); uerr != nil {
			// Keep it (and everything older) for Undo.
			errs = append(errs, fmt.Errorf("undo %s: %w", c, uerr))
			break
		}
		h.changes = h.changes[:len(h.changes)-1]
	}
	if werr := writeJournal(h.path, h.changes); werr != nil {
		errs = append(errs, werr)
	}
	return errors.Join(errs...)
}

// created reports whether link, of type linkType, is one h created (and has
// not undone).
func (h *Host) created(link, linkType string) bool {
	return slices.Contains(h.changes, Change{Kind: KindLinkCreated, Link: link, LinkType: linkType})
}

// undo reverts one change; a change that is already gone counts as undone.
func undo(c Change) error {
	switch c.Kind {
	case KindAddress:
		return delAddress(c.Link, c.Address)
	case KindSysctl:
		return restoreSysctl(c.Sysctl, c.Value)
	case KindLinkUp:
		return setLinkDown(c.Link)
	case KindLinkCreated:
		return delLink(c.Link, c.LinkType)
	case KindFOU:
		af := unix.AF_INET
		if c.Family == familyIPv6 {
			af = unix.AF_INET6
		}
		return delFOU(af, c.Port)
	case KindRoute:
		return delRoute(c.route())
	}
	return fmt.Errorf("unknown kind %q", string(c.Kind))
}
