package vip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"

	"github.com/caplance/caplance/internal/atomicfile"
)

// Journal file names inside the state directory.
const (
	JournalName = "host-changes.json"
	lockName    = "host-changes.lock"
)

// journalVersion is the "version" this package writes and accepts.
const journalVersion = 1

// Kind says what a Change did, and so how it is undone.
type Kind string

// The kinds of change, as written in the journal's "kind" field.
const (
	// KindAddress: Address was added to Link; undo deletes it.
	KindAddress Kind = "address"
	// KindSysctl: Sysctl had Value; undo writes Value back.
	KindSysctl Kind = "sysctl"
	// KindLinkUp: Link was brought up; undo sets it down.
	KindLinkUp Kind = "link-up"
	// KindLinkCreated: Link, of type LinkType, was created; undo deletes it.
	KindLinkCreated Kind = "link-created"
	// KindFOU: a foo-over-UDP receive port for IPProto was added, IPv4
	// or, with Family "ipv6", IPv6; undo deletes it.
	KindFOU Kind = "fou"
	// KindRoute: a route to Address dev Link (lo) in Table with Protocol
	// was added (a routed VIP's announcement); undo deletes exactly that
	// route, if the table still has it with that protocol.
	KindRoute Kind = "route"
)

// Change is one recorded host change: one entry of the journal.
type Change struct {
	Kind     Kind         `json:"kind"`
	Link     string       `json:"link,omitempty"`
	LinkType string       `json:"type,omitempty"`
	Address  netip.Prefix `json:"address,omitzero"`
	Sysctl   string       `json:"sysctl,omitempty"`
	Value    string       `json:"value,omitempty"`
	Port     uint16       `json:"port,omitempty"`
	IPProto  uint8        `json:"ipproto,omitempty"`
	// Family is the family of a fou port: "" (IPv4, as journals written
	// before IPv6 ports say nothing) or familyIPv6.
	Family string `json:"family,omitempty"`
	// Table and Protocol are a route's routing table and rtnetlink
	// protocol.
	Table    uint32 `json:"table,omitempty"`
	Protocol uint8  `json:"protocol,omitempty"`
}

// familyIPv6 is Change.Family of an IPv6 foo-over-UDP port.
const familyIPv6 = "ipv6"

// String describes the change for a log line, in terms of what undoing it
// restores: "address 10.0.0.100/32 on eth0",
// "sysctl net.ipv4.conf.all.arp_ignore=0".
func (c Change) String() string {
	switch c.Kind {
	case KindAddress:
		return fmt.Sprintf("address %s on %s", c.Address, c.Link)
	case KindSysctl:
		return fmt.Sprintf("sysctl %s=%s", c.Sysctl, c.Value)
	case KindLinkUp:
		return fmt.Sprintf("link %s set up", c.Link)
	case KindLinkCreated:
		return fmt.Sprintf("%s link %s created", c.LinkType, c.Link)
	case KindFOU:
		if c.Family == familyIPv6 {
			return fmt.Sprintf("foo-over-UDP port %d ipproto %d (IPv6)", c.Port, c.IPProto)
		}
		return fmt.Sprintf("foo-over-UDP port %d ipproto %d", c.Port, c.IPProto)
	case KindRoute:
		return c.route().String()
	}
	return fmt.Sprintf("unknown change %q", string(c.Kind))
}

// validate reports what makes c impossible to undo.
func (c Change) validate() error {
	switch c.Kind {
	case KindAddress:
		if !c.Address.IsValid() {
			return errors.New(`address change without "address"`)
		}
		if c.Link == "" {
			return errors.New(`address change without "link"`)
		}
	case KindSysctl:
		if _, err := sysctlPath(c.Sysctl); err != nil {
			return err
		}
		if c.Value == "" {
			return errors.New(`sysctl change without "value"`)
		}
	case KindLinkUp:
		if c.Link == "" {
			return errors.New(`link-up change without "link"`)
		}
	case KindLinkCreated:
		if c.Link == "" || c.LinkType == "" {
			return errors.New(`link-created change without "link" or "type"`)
		}
	case KindFOU:
		if c.Port == 0 || c.IPProto == 0 {
			return errors.New(`fou change without "port" or "ipproto"`)
		}
		if c.Family != "" && c.Family != familyIPv6 {
			return fmt.Errorf(`fou change with family %q: want "ipv6" or none (IPv4)`, c.Family)
		}
	case KindRoute:
		if !c.Address.IsValid() || !c.Address.IsSingleIP() {
			return fmt.Errorf(`route change with "address" %s: want a /32 or /128`, c.Address)
		}
		if c.Link != "lo" {
			return fmt.Errorf(`route change with "link" %q: want "lo"`, c.Link)
		}
		if err := c.route().check(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown kind %q", string(c.Kind))
	}
	return nil
}

// route is the Route a KindRoute change added.
func (c Change) route() Route {
	return Route{VIP: c.Address.Addr(), Table: c.Table, Protocol: c.Protocol}
}

type journalFile struct {
	Version int      `json:"version"`
	Changes []Change `json:"changes"`
}

// readJournal returns the changes in the journal at path; a missing file is
// an empty journal.
func readJournal(path string) ([]Change, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read host-change journal: %w", err)
	}
	changes, err := parseJournal(data)
	if err != nil {
		return nil, fmt.Errorf("host-change journal %s is unreadable (%w); "+
			"undo the changes it lists by hand, then remove it", path, err)
	}
	return changes, nil
}

func parseJournal(data []byte) ([]Change, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var j journalFile
	if err := dec.Decode(&j); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return nil, errors.New("empty file")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, errors.New("truncated JSON")
		}
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("data after the JSON object")
	}
	if j.Version != journalVersion {
		return nil, fmt.Errorf("version %d, want %d", j.Version, journalVersion)
	}
	for i, c := range j.Changes {
		if err := c.validate(); err != nil {
			return nil, fmt.Errorf("change %d: %w", i+1, err)
		}
	}
	return j.Changes, nil
}

// writeJournal replaces the journal at path with changes atomically, or
// removes it when there are none.
func writeJournal(path string, changes []Change) error {
	if len(changes) == 0 {
		if err := atomicfile.Remove(path); err != nil {
			return fmt.Errorf("remove host-change journal: %w", err)
		}
		return nil
	}
	data, err := encodeJournal(changes)
	if err != nil {
		return fmt.Errorf("encode host-change journal: %w", err)
	}
	if err := atomicfile.Write(path, data, 0o644); err != nil {
		return fmt.Errorf("write host-change journal: %w", err)
	}
	return nil
}

// encodeJournal writes one change a line, for people reading the file.
func encodeJournal(changes []Change) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "{\n  \"version\": %d,\n  \"changes\": [\n", journalVersion)
	for i, c := range changes {
		line, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		b.WriteString("    ")
		b.Write(line)
		if i < len(changes)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("  ]\n}\n")
	return b.Bytes(), nil
}
