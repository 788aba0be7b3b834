// Package quote shortens what an error message repeats of the input it
// refuses, so that an error answer stays small whatever it was given: a
// 100 kB name is echoed as its first Max bytes and "…". Every error that
// quotes a caller's or a file's text goes through it. It is pure: standard
// library only.
package quote

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Max is how many bytes of an input an error message repeats.
const Max = 64

// Q returns s quoted as by %q, cut to at most Max bytes (at a UTF-8
// boundary) and followed by "…" when it was longer.
func Q(s string) string {
	if len(s) <= Max {
		return strconv.Quote(s)
	}
	return strconv.Quote(prefix(s)) + "…"
}

// prefix returns the longest start of s of at most Max bytes that does not
// cut a UTF-8 sequence in two.
func prefix(s string) string {
	n := Max
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Arg is a string format argument whose %q is Q's; %s and %v print it
// whole. A function that formats messages from format strings whose
// convention is to quote input with %q can so bound every echo of input
// without changing its callers.
type Arg string

// Format implements fmt.Formatter.
func (a Arg) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprint(f, Q(string(a)))
		return
	}
	fmt.Fprint(f, string(a))
}
