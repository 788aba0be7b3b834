package flow

// Malformed is the reason Parse rejects a packet. It is an error that never
// allocates, and a small integer from 0 to NumMalformed-1, so a caller can
// count drops in a [NumMalformed]uint64 indexed by reason. The values and
// their String names are stable: counters and dashboards are keyed on them.
type Malformed uint8

// The reasons. New ones are added at the end, never renumbered.
const (
	// ErrTooShort: the packet is empty or shorter than a minimal IP header.
	ErrTooShort Malformed = iota
	// ErrVersion: the version nibble is neither 4 nor 6.
	ErrVersion
	// ErrHeaderLength: the IPv4 IHL is below 5 or runs past the packet.
	ErrHeaderLength
	// ErrTotalLength: the IPv4 total length is below the header length or
	// past the packet, or the IPv6 payload length is past the packet.
	ErrTotalLength
	// ErrExtensionHeaders: the IPv6 extension-header chain is cut short,
	// runs past the payload, is longer than the walk allows, or has a
	// hop-by-hop header anywhere but first.
	ErrExtensionHeaders
	// ErrTruncatedTransport: the transport header Parse reads is cut short.
	ErrTruncatedTransport
	// ErrICMPEmbedded: the packet quoted in an ICMP error cannot be keyed
	// (any of the reasons above, or of the wrong IP version).
	ErrICMPEmbedded
	// ErrICMPNested: an ICMP error quotes another ICMP error, which no
	// correct host sends (RFC 1122 3.2.2, RFC 4443 2.4).
	ErrICMPNested
)

// NumMalformed is the number of reasons.
const NumMalformed = int(ErrICMPNested) + 1

var malformedNames = [NumMalformed]string{
	ErrTooShort:           "too_short",
	ErrVersion:            "version",
	ErrHeaderLength:       "header_length",
	ErrTotalLength:        "total_length",
	ErrExtensionHeaders:   "extension_headers",
	ErrTruncatedTransport: "truncated_transport",
	ErrICMPEmbedded:       "icmp_embedded",
	ErrICMPNested:         "icmp_nested",
}

var malformedMessages = [NumMalformed]string{
	ErrTooShort:           "flow: packet shorter than an IP header",
	ErrVersion:            "flow: IP version is neither 4 nor 6",
	ErrHeaderLength:       "flow: bad IPv4 header length",
	ErrTotalLength:        "flow: IP length field disagrees with the packet",
	ErrExtensionHeaders:   "flow: bad IPv6 extension header chain",
	ErrTruncatedTransport: "flow: transport header cut short",
	ErrICMPEmbedded:       "flow: ICMP error quotes a packet that cannot be keyed",
	ErrICMPNested:         "flow: ICMP error quotes an ICMP error",
}

// String returns the reason as a short snake_case name for counters and
// logs, such as "too_short".
func (m Malformed) String() string {
	if int(m) >= NumMalformed {
		return "unknown"
	}
	return malformedNames[m]
}

// Error returns a sentence for people.
func (m Malformed) Error() string {
	if int(m) >= NumMalformed {
		return "flow: malformed packet"
	}
	return malformedMessages[m]
}
