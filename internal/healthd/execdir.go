package healthd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultExecDir is where the programs of exec checks of backends added
// over D-Bus must lie (exec_dir).
const DefaultExecDir = "/etc/caplance/checks.d"

// sourceConfig is caplanced's Source of a backend from its configuration
// file, which only root writes; the others (runtime) were added over D-Bus
// by any member of caplance-admin (caplanced.dbus(7)).
const sourceConfig = "config"

// execRefusal says why the exec check program of a backend added over
// D-Bus may not run, "" when it may: after resolving symbolic links it must
// lie under dir, and it, dir, the directories between and those above up to
// / must be owned by root and not writable by group or others (above dir, a
// root-owned directory with the sticky bit, such as /tmp, is accepted:
// nobody else may rename or remove what root put in it). Then only root can
// change what runs.
func execRefusal(dir, program string) string {
	refuse := func(format string, args ...any) string {
		return "exec check refused: " + fmt.Sprintf(format, args...) +
			"; backends added over D-Bus may run only programs under exec_dir that root owns and only root can change"
	}
	notUnder := fmt.Sprintf("%s is not under %s (exec_dir in caplance-healthd.toml); backends added over D-Bus may run only programs there",
		short(program), dir)
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return refuse("exec_dir %s: %v", dir, pathReason(err, dir))
	}
	real, err := filepath.EvalSymlinks(program)
	if err != nil {
		return refuse("%s: %v (exec_dir %s)", short(program), pathReason(err, program), dir)
	}
	rel, err := filepath.Rel(realDir, real)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		if real != program {
			return "exec check refused: " + notUnder + fmt.Sprintf(" (it resolves to %s)", short(real))
		}
		return "exec check refused: " + notUnder
	}
	for p := real; ; p = filepath.Dir(p) {
		above := len(p) < len(realDir) // an ancestor of real, shorter than realDir
		fi, err := os.Lstat(p)
		if err != nil {
			return refuse("%s: %v", short(p), pathReason(err, p))
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		switch {
		case !ok:
			return refuse("%s: no owner known", short(p))
		case st.Uid != 0:
			return refuse("%s is owned by uid %d, not root (exec_dir %s)", short(p), st.Uid, dir)
		case p == real && !fi.Mode().IsRegular():
			return refuse("%s is not a regular file", short(p))
		case fi.Mode().Perm()&0o022 != 0 && !(above && fi.Mode()&os.ModeSticky != 0):
			return refuse("%s is writable by group or others (mode %04o; exec_dir %s)", short(p), fi.Mode().Perm(), dir)
		}
		if p == "/" {
			return ""
		}
	}
}

// pathReason is what went wrong with path: the error of a *PathError
// without the system call, and with the path only when it is another one
// (a component of path).
func pathReason(err error, path string) error {
	pe, ok := err.(*os.PathError)
	switch {
	case !ok:
		return err
	case pe.Path == path:
		return pe.Err
	default:
		return fmt.Errorf("%s: %w", short(pe.Path), pe.Err)
	}
}

// maxEcho bounds how much of a path a message repeats.
const maxEcho = 128

// short is s, or its first maxEcho bytes and a note of the rest.
func short(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	return fmt.Sprintf("%s… (%d bytes)", s[:maxEcho], len(s))
}
