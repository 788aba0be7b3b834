package inet_test

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/caplance/caplance/internal/inet"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChecksum checks known vectors: RFC 1071's own example (section 3,
// sum 0xddf2), an IPv4 header whose checksum is well known (0xb861), an odd
// length, and sums long enough to carry many times.
func TestChecksum(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want uint16
	}{
		{"empty", nil, 0xffff},
		{"RFC 1071 section 3 example", unhex(t, "0001f203f4f5f6f7"), ^uint16(0xddf2)},
		{"IPv4 header, checksum field zero", unhex(t, "450000730000400040110000c0a80001c0a800c7"), 0xb861},
		{"odd length: last byte is a high byte", unhex(t, "0001f203f4f5f6"), 0x2304},
		{"one byte", []byte{0x12}, ^uint16(0x1200)},
		{"65535 bytes of 0xff", bytes.Repeat([]byte{0xff}, 65535), 0x00ff},
		{"65535 bytes of 0x01", bytes.Repeat([]byte{0x01}, 65535), 0x7f80},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inet.Checksum(tt.b); got != tt.want {
				t.Errorf("Checksum = %#04x, want %#04x", got, tt.want)
			}
		})
	}
}

// TestValid: a header with its checksum written in is valid; any change of
// one bit makes it invalid.
func TestValid(t *testing.T) {
	hdr := unhex(t, "45000073000040004011b861c0a80001c0a800c7")
	if !inet.Valid(hdr) {
		t.Fatal("a header with a correct checksum is not Valid")
	}
	var broken []int
	for i := range len(hdr) * 8 {
		hdr[i/8] ^= 1 << (i % 8)
		if inet.Valid(hdr) {
			broken = append(broken, i)
		}
		hdr[i/8] ^= 1 << (i % 8)
	}
	if diff := cmp.Diff([]int(nil), broken); diff != "" {
		t.Errorf("bits whose flip still passes Valid (-want +got):\n%s", diff)
	}
}

// TestSumInPieces: a sum carried over even-length pieces (a pseudo-header,
// then a segment) equals the sum of the whole.
func TestSumInPieces(t *testing.T) {
	b := unhex(t, "c0a80001c0a800c70011000c9c4000350008abcd4142")
	for cut := 0; cut <= len(b); cut += 2 {
		if got, want := inet.Fold(inet.Sum(b[cut:], inet.Sum(b[:cut], 0))), inet.Fold(inet.Sum(b, 0)); got != want {
			t.Errorf("cut at %d: %#04x, whole: %#04x", cut, got, want)
		}
	}
}

func TestAllocs(t *testing.T) {
	b := make([]byte, 1500)
	if n := testing.AllocsPerRun(100, func() { _ = inet.Checksum(b) }); n != 0 {
		t.Errorf("Checksum: %v allocs per run, want 0", n)
	}
}
