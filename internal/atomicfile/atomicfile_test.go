package atomicfile_test

import (
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/atomicfile"
)

// entries lists dir's file names with their content.
func entries(t *testing.T, dir string) map[string]string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, de := range des {
		data, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			out[de.Name()] = "(" + de.Type().String() + ")"
			continue
		}
		out[de.Name()] = string(data)
	}
	return out
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, content := range []string{"first\n", "second, longer\n", ""} {
		if err := atomicfile.Write(path, []byte(content), 0o640); err != nil {
			t.Fatalf("Write(%q): %v", content, err)
		}
		if diff := cmp.Diff(map[string]string{"state.json": content}, entries(t, dir)); diff != "" {
			t.Errorf("directory after Write(%q) (-want +got):\n%s", content, diff)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o640 {
			t.Errorf("mode %v, want 0640", fi.Mode().Perm())
		}
	}
}

// A write that fails half-way (here: the file size limit, as a full disk
// would) leaves the old content and no temporary file.
func TestWriteFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := atomicfile.Write(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	signal.Ignore(syscall.SIGXFSZ)
	defer signal.Reset(syscall.SIGXFSZ)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 16, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	err := atomicfile.Write(path, []byte("new content longer than sixteen bytes\n"), 0o644)
	if rerr := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); rerr != nil {
		t.Fatal(rerr)
	}
	if !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("Write over the size limit: got %v, want EFBIG", err)
	}
	if diff := cmp.Diff(map[string]string{"state.json": "old\n"}, entries(t, dir)); diff != "" {
		t.Errorf("directory after a failed write (-want +got):\n%s", diff)
	}
}

func TestRenameFailureLeavesNoTempFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	// A non-empty directory cannot be renamed over.
	if err := os.MkdirAll(filepath.Join(path, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := atomicfile.Write(path, []byte("new\n"), 0o644)
	if err == nil || errors.Is(err, atomicfile.ErrNotDurable) {
		t.Fatalf("Write over a directory: got %v, want a rename error", err)
	}
	if diff := cmp.Diff(map[string]string{"state.json": "(d---------)"}, entries(t, dir)); diff != "" {
		t.Errorf("directory after a failed rename (-want +got):\n%s", diff)
	}
}

func TestWriteMissingDirectory(t *testing.T) {
	err := atomicfile.Write(filepath.Join(t.TempDir(), "none", "state.json"), []byte("x"), 0o644)
	if err == nil || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Write into a missing directory: got %v, want ENOENT", err)
	}
}

// RemoveStale removes what a crash inside Write leaves, and nothing else.
func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"state.json":               "intact",
		".state.json.tmp-12345":    "half-writ",
		".state.json.tmp-":         "half",
		"other.json":               "other",
		".other.json.tmp-1":        "another file's",
		"state.json.tmp-not-ours1": "not ours",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := atomicfile.RemoveStale(filepath.Join(dir, "state.json")); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"state.json":               "intact",
		"other.json":               "other",
		".other.json.tmp-1":        "another file's",
		"state.json.tmp-not-ours1": "not ours",
	}
	if diff := cmp.Diff(want, entries(t, dir)); diff != "" {
		t.Errorf("directory after RemoveStale (-want +got):\n%s", diff)
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := atomicfile.Write(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time the file is already gone
		if err := atomicfile.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(map[string]string{}, entries(t, dir)); diff != "" {
		t.Errorf("directory after Remove (-want +got):\n%s", diff)
	}
}
