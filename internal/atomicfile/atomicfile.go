// Package atomicfile replaces a file's content atomically and durably: a
// reader sees the old content or the new, never a mix, and after a crash the
// file holds one of the two. It owns that sequence (a temporary file beside
// the target, write, chmod, fsync, rename, fsync of the directory) and the
// temporary files it leaves when a process dies half-way; nothing else.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces the file at path with data, mode perm. On error path is
// unchanged, unless only the last step failed: then path already holds data
// but a crash may still bring back the old content, and errors.Is(err,
// ErrNotDurable) holds. No temporary file is left behind either way.
func Write(path string, data []byte, perm fs.FileMode) error {
	if err := Replace(path, data, perm); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("%w: %w", ErrNotDurable, err)
	}
	return nil
}

// ErrNotDurable marks an error of Write that came after the rename.
var ErrNotDurable = errors.New("replaced, but not durably")

// Replace is Write without its last step: the rename is done but not yet
// durable until SyncDir of path's directory. For callers that must react to
// a failed directory sync themselves.
func Replace(path string, data []byte, perm fs.FileMode) (err error) {
	dir, base := filepath.Split(path)
	dir = filepath.Clean(dir)
	tmp, err := os.CreateTemp(dir, tempPrefix(base)+"*")
	if err != nil {
		return fmt.Errorf("creating a temporary file in %s: %w", dir, bare(err))
	}
	renamed := false
	defer func() {
		if !renamed {
			os.Remove(tmp.Name())
		}
	}()
	_, err = tmp.Write(data)
	if err == nil {
		// CreateTemp makes the file 0600 whatever the umask; readers of
		// the target may need more.
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), bare(err))
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", tmp.Name(), filepath.Base(path), bare(err))
	}
	renamed = true
	return nil
}

// Remove removes path durably; a missing file is no error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// RemoveStale removes the temporary files a process that died inside Write
// left beside path. path itself is never touched: it holds the old content
// or the new.
func RemoveStale(path string) error {
	dir, base := filepath.Split(path)
	stale, err := filepath.Glob(filepath.Join(dir, globEscape(tempPrefix(base))+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range stale {
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SyncDir makes a rename or removal in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, bare(err))
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, bare(err))
	}
	return nil
}

// tempPrefix names the temporary files of base: hidden, and never matching
// a reader's glob for base itself.
func tempPrefix(base string) string { return "." + base + ".tmp-" }

// globEscape quotes the characters filepath.Match treats specially.
func globEscape(s string) string {
	var out []byte
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', '\\':
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// bare strips the operation and path from a file error, which the messages
// above word better.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}
