// Package inet holds the Internet checksum (RFC 1071), the one used by the
// IPv4 header, ICMP, UDP and TCP, written once for the data path, the health
// checks and the tests.
//
// It is pure: standard library only, no I/O, no state, and nothing here
// allocates.
package inet

// Sum adds b, as big-endian 16-bit words, to the ones'-complement sum s
// without folding it, so sums over several pieces (a pseudo-header and a
// segment) add up. An odd last byte counts as the high byte of a word padded
// with zero, as RFC 1071 says, so only the last piece of a sum may have an
// odd length.
//
// The uint32 cannot overflow when s is at most 0xffff (folded, or a small
// partial sum) and b is at most 128 KiB - 2 bytes: more than any IP packet.
func Sum(b []byte, s uint32) uint32 {
	n := len(b) &^ 1
	for i := 0; i < n; i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b) > n {
		s += uint32(b[n]) << 8
	}
	return s
}

// Fold reduces an unfolded sum to 16 bits, carries added back in.
func Fold(s uint32) uint16 {
	s = s>>16 + s&0xffff
	s += s >> 16
	return uint16(s)
}

// Checksum is the checksum to write into a header whose checksum field in
// b is zero: the complement of the folded sum of b.
func Checksum(b []byte) uint16 { return ^Fold(Sum(b, 0)) }

// Valid reports whether b, its checksum field included, sums to 0xffff: the
// check a receiver makes.
func Valid(b []byte) bool { return Fold(Sum(b, 0)) == 0xffff }
