package healthd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestExecRefusal: which programs a backend added over D-Bus may run, on
// files made for the test (it runs as root, to give some of them to
// nobody).
func TestExecRefusal(t *testing.T) {
	t.Parallel()
	base := t.TempDir() // under /tmp: root-owned with the sticky bit, above exec_dir
	dir := filepath.Join(base, "checks.d")
	mkdir := func(path string, mode os.FileMode) string {
		t.Helper()
		if err := os.Mkdir(path, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return path
	}
	file := func(path string, mode os.FileMode) string {
		t.Helper()
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	mkdir(dir, 0o755)
	ok := file(filepath.Join(dir, "ok"), 0o755)
	nested := file(filepath.Join(mkdir(filepath.Join(dir, "sub"), 0o755), "check"), 0o700)
	groupWritable := file(filepath.Join(dir, "gw"), 0o775)
	notRoot := file(filepath.Join(dir, "nobody"), 0o755)
	if err := os.Chown(notRoot, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	openDir := mkdir(filepath.Join(dir, "open"), 0o777)
	inOpen := file(filepath.Join(openDir, "check"), 0o755)
	stickyDir := mkdir(filepath.Join(dir, "sticky"), 0o1777)
	inSticky := file(filepath.Join(stickyDir, "check"), 0o755)
	link := filepath.Join(dir, "link")
	if err := os.Symlink("/bin/sh", link); err != nil {
		t.Fatal(err)
	}
	inLink := filepath.Join(dir, "inlink")
	if err := os.Symlink("ok", inLink); err != nil {
		t.Fatal(err)
	}
	dirLink := filepath.Join(base, "dirlink")
	if err := os.Symlink("checks.d", dirLink); err != nil {
		t.Fatal(err)
	}
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	resolvesTo := ""
	if sh != "/bin/sh" {
		resolvesTo = " (it resolves to " + sh + ")"
	}
	long := "/" + strings.Repeat("x", 200)

	rule := "; backends added over D-Bus may run only programs under exec_dir that root owns and only root can change"
	notUnder := " (exec_dir in caplance-healthd.toml); backends added over D-Bus may run only programs there"
	tests := []struct {
		name, dir, program, want string
	}{
		{"a root-owned program", dir, ok, ""},
		{"in a subdirectory", dir, nested, ""},
		{"a link inside", dir, inLink, ""},
		{"exec_dir a link", dirLink, ok, ""},
		{"elsewhere", dir, "/bin/sh", "exec check refused: /bin/sh is not under " + dir + notUnder + resolvesTo},
		{"a link out", dir, link, "exec check refused: " + link + " is not under " + dir + notUnder + " (it resolves to " + sh + ")"},
		{"exec_dir itself", dir, dir, "exec check refused: " + dir + " is not under " + dir + notUnder},
		{"group-writable", dir, groupWritable, "exec check refused: " + groupWritable + " is writable by group or others (mode 0775; exec_dir " + dir + ")" + rule},
		{"not root's", dir, notRoot, "exec check refused: " + notRoot + " is owned by uid 65534, not root (exec_dir " + dir + ")" + rule},
		{"in a world-writable directory", dir, inOpen, "exec check refused: " + openDir + " is writable by group or others (mode 0777; exec_dir " + dir + ")" + rule},
		{"sticky below exec_dir", dir, inSticky, "exec check refused: " + stickyDir + " is writable by group or others (mode 0777; exec_dir " + dir + ")" + rule},
		{"a directory", dir, filepath.Join(dir, "sub"), "exec check refused: " + filepath.Join(dir, "sub") + " is not a regular file" + rule},
		{"missing", dir, filepath.Join(dir, "none"), "exec check refused: " + filepath.Join(dir, "none") + ": no such file or directory (exec_dir " + dir + ")" + rule},
		{"no exec_dir", filepath.Join(base, "none"), ok, "exec check refused: exec_dir " + filepath.Join(base, "none") + ": no such file or directory" + rule},
		{"a long path", dir, long, "exec check refused: /" + strings.Repeat("x", 127) + "… (201 bytes): no such file or directory (exec_dir " + dir + ")" + rule},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, execRefusal(tt.dir, tt.program)); diff != "" {
				t.Errorf("execRefusal(%s, %s) (-want +got):\n%s", tt.dir, tt.program, diff)
			}
		})
	}
}
