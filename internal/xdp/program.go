package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ErrUnsupported is wrapped by the errors of Load, Attach and NewSocket when
// the kernel or the process cannot do XDP or AF_XDP at all (no BPF syscall,
// missing capabilities, a seccomp or address-family filter, a driver that
// refuses both attach modes), as opposed to a bad argument. A dataplane =
// "auto" setting falls back to the raw path on it (errors.Is).
var ErrUnsupported = errors.New("XDP or AF_XDP not available")

// unsupported marks err with ErrUnsupported when it says the kernel or the
// process's privileges cannot do what was asked (EACCES included: a verifier
// that refuses the program is a kernel that cannot run it).
func unsupported(err error) error {
	for _, e := range []error{unix.EPERM, unix.EACCES, unix.ENOSYS, unix.EOPNOTSUPP, unix.EAFNOSUPPORT, ebpf.ErrNotSupported} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
	}
	return err
}

// Options sizes the program's maps.
type Options struct {
	// MaxVIPs is the capacity of the VIP map (SetVIPs refuses more).
	MaxVIPs int
	// MaxQueues is the capacity of the socket map: receive queues 0 to
	// MaxQueues-1 can have a socket (Register refuses others).
	MaxQueues int
}

// Mode is how the program is attached to an interface.
type Mode int

const (
	// ModeNative runs the program in the driver, before an skb exists.
	ModeNative Mode = iota + 1
	// ModeGeneric runs it in the stack's receive path, after the skb is
	// built (any driver, slower); AF_XDP sockets then work in copy mode.
	ModeGeneric
)

func (m Mode) String() string {
	switch m {
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// license is what the kernel is told about the program. The project has
// not chosen a license yet (packaging/nfpm/copyright); the helpers the
// program calls are not GPL-only, so the string gates nothing here. Change
// it with the project's license.
const license = "Proprietary"

// The kernel's XDP actions and struct xdp_md offsets the program uses.
const (
	xdpPass = 2

	mdData         = 0
	mdDataEnd      = 4
	mdRxQueueIndex = 16
)

// Program is the loaded XDP program with its two maps, at most one
// attachment, and the VIP set last given to SetVIPs. Its methods are safe
// for concurrent use.
type Program struct {
	prog *ebpf.Program
	vips *ebpf.Map // [16]byte address → u8 IP version (4 or 6)
	xsks *ebpf.Map // u32 receive queue → AF_XDP socket

	maxVIPs, maxQueues int

	mu      sync.Mutex
	link    link.Link
	current map[[16]byte]struct{}
}

// Load creates the maps and loads the program into the kernel; nothing is
// attached yet. Close releases it all.
func Load(opts Options) (*Program, error) {
	if opts.MaxVIPs < 1 || opts.MaxQueues < 1 {
		return nil, fmt.Errorf("xdp: load: MaxVIPs (%d) and MaxQueues (%d) must be at least 1", opts.MaxVIPs, opts.MaxQueues)
	}
	vips, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "caplance_vips", Type: ebpf.Hash, KeySize: 16, ValueSize: 1, MaxEntries: uint32(opts.MaxVIPs),
	})
	if err != nil {
		return nil, unsupported(fmt.Errorf("xdp: create the VIP map: %w", err))
	}
	xsks, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "caplance_xsks", Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: uint32(opts.MaxQueues),
	})
	if err != nil {
		vips.Close()
		return nil, unsupported(fmt.Errorf("xdp: create the socket map: %w", err))
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "caplance_xdp",
		Type:         ebpf.XDP,
		License:      license,
		Instructions: instructions(vips.FD(), xsks.FD()),
	})
	if err != nil {
		vips.Close()
		xsks.Close()
		return nil, unsupported(fmt.Errorf("xdp: load the program: %w", err))
	}
	return &Program{prog: prog, vips: vips, xsks: xsks, maxVIPs: opts.MaxVIPs, maxQueues: opts.MaxQueues,
		current: make(map[[16]byte]struct{})}, nil
}

// instructions returns the program (see the package comment). R6 keeps the
// context across the helper calls and R7 the packet's IP version; R2 and R3
// hold data and data_end while parsing, and every packet read is preceded by
// a bounds check against data_end that covers it, as the verifier demands.
// The lookup key is built on the stack at R10-16. The map's value is the
// VIP's IP version, which must be the packet's: an IPv6 packet to
// ::ffff:a.b.c.d is not one to the IPv4 VIP a.b.c.d (the raw path's filters
// do not take it either).
func instructions(vipsFD, xsksFD int) asm.Instructions {
	const (
		ethLen  = 14
		ipv4Len = 20
		ipv6Len = 40
		key     = -16
	)
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, mdData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, mdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, ethLen),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		// EtherType, read in network order whatever the host's.
		asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.JEq.Imm(asm.R5, unix.ETH_P_IP, "ipv4"),
		asm.JEq.Imm(asm.R5, unix.ETH_P_IPV6, "ipv6"),
		asm.Ja.Label("pass"),

		asm.Mov.Imm(asm.R7, 4).WithSymbol("ipv4"),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, ethLen+ipv4Len),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		// IHL below 5 is malformed: the stack (and the raw path) judge it.
		asm.LoadMem(asm.R5, asm.R2, ethLen, asm.Byte),
		asm.And.Imm(asm.R5, 0x0f),
		asm.JLT.Imm(asm.R5, 5, "pass"),
		// Flags and fragment offset: MF (0x2000) or any offset is a fragment.
		asm.LoadMem(asm.R5, asm.R2, ethLen+6, asm.Half),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.JSet.Imm(asm.R5, 0x3fff, "pass"),
		// ICMP passes: the stack answers it as in raw mode, and the raw
		// path takes the errors that quote a flow (rare, so cheap there).
		asm.LoadMem(asm.R5, asm.R2, ethLen+9, asm.Byte),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_ICMP, "pass"),
		// Key ::ffff:a.b.c.d; byte-wise stores keep it endian-neutral.
		asm.StoreImm(asm.R10, key, 0, asm.Word),
		asm.StoreImm(asm.R10, key+4, 0, asm.Word),
		asm.StoreImm(asm.R10, key+8, 0, asm.Half),
		asm.StoreImm(asm.R10, key+10, 0xff, asm.Byte),
		asm.StoreImm(asm.R10, key+11, 0xff, asm.Byte),
		asm.LoadMem(asm.R5, asm.R2, ethLen+16, asm.Word),
		asm.StoreMem(asm.R10, key+12, asm.R5, asm.Word),
		asm.Ja.Label("lookup"),

		asm.Mov.Imm(asm.R7, 6).WithSymbol("ipv6"),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, ethLen+ipv6Len),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		// The first next header: any extension header flow.Parse walks
		// (hop-by-hop 0, routing 43, fragment 44, AH 51, destination
		// options 60) passes, so no fragment hides behind another one.
		asm.LoadMem(asm.R5, asm.R2, ethLen+6, asm.Byte),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_HOPOPTS, "pass"),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_ROUTING, "pass"),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_FRAGMENT, "pass"),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_AH, "pass"),
		asm.JEq.Imm(asm.R5, unix.IPPROTO_DSTOPTS, "pass"),
		// ICMPv6 passes as ICMP does; above all neighbour discovery to a
		// VIP (unicast solicitations for unreachability detection), which
		// only the stack answers.
		asm.JEq.Imm(asm.R5, unix.IPPROTO_ICMPV6, "pass"),
		asm.LoadMem(asm.R5, asm.R2, ethLen+24, asm.DWord),
		asm.StoreMem(asm.R10, key, asm.R5, asm.DWord),
		asm.LoadMem(asm.R5, asm.R2, ethLen+32, asm.DWord),
		asm.StoreMem(asm.R10, key+8, asm.R5, asm.DWord),

		asm.LoadMapPtr(asm.R1, vipsFD).WithSymbol("lookup"),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, key),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Byte),
		asm.JNE.Reg(asm.R1, asm.R7, "pass"),
		// bpf_redirect_map(xsks, rx_queue_index, XDP_PASS): the low bits of
		// the flags are the action when the queue has no socket.
		asm.LoadMapPtr(asm.R1, xsksFD),
		asm.LoadMem(asm.R2, asm.R6, mdRxQueueIndex, asm.Word),
		asm.Mov.Imm(asm.R3, xdpPass),
		asm.FnRedirectMap.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	}
}

// Attach attaches the program to the interface ifindex through a bpf_link,
// natively if the driver can, generically otherwise, and returns the mode
// it got. The kernel detaches a bpf_link when its last file descriptor
// closes, so a process that dies, however it dies, leaves no program on the
// interface; and no one else's XDP program is replaced, since a link cannot
// be created while another program is attached. Detach is the normal stop.
func (p *Program) Attach(ifindex int) (Mode, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link != nil {
		return 0, fmt.Errorf("xdp: attach to interface %d: already attached", ifindex)
	}
	native, err := link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err == nil {
		p.link = native
		return ModeNative, nil
	}
	generic, gerr := link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: ifindex, Flags: link.XDPGenericMode})
	if gerr == nil {
		p.link = generic
		return ModeGeneric, nil
	}
	err = fmt.Errorf("xdp: attach to interface %d: native: %w; generic: %w", ifindex, err, gerr)
	if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EINVAL) {
		// Someone else's program, a missing interface or a bad index:
		// not a kernel without XDP.
		return 0, err
	}
	return 0, unsupported(err)
}

// Detach removes the program from its interface; without an attachment it
// does nothing.
func (p *Program) Detach() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link == nil {
		return nil
	}
	err := p.link.Close()
	p.link = nil
	if err != nil {
		return fmt.Errorf("xdp: detach: %w", err)
	}
	return nil
}

// Close detaches the program and releases it and its maps.
func (p *Program) Close() error {
	err := p.Detach()
	return errors.Join(err, p.prog.Close(), p.vips.Close(), p.xsks.Close())
}

// SetVIPs makes vips the set of destinations redirected to the sockets:
// addresses not yet in the map are added, those no longer in vips deleted.
// An invalid address or more than MaxVIPs distinct addresses changes
// nothing. A failure in the middle leaves a mix of the old and new sets;
// calling SetVIPs again repairs it.
func (p *Program) SetVIPs(vips []netip.Addr) error {
	want := make(map[[16]byte]uint8, len(vips))
	for _, a := range vips {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("xdp: set VIPs: %q is not an unzoned IP address", a.String())
		}
		want[a.As16()] = version(a)
	}
	if len(want) > p.maxVIPs {
		return fmt.Errorf("xdp: set VIPs: %d addresses, the map holds %d", len(want), p.maxVIPs)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.current {
		if _, ok := want[k]; ok {
			continue
		}
		if err := p.vips.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("xdp: set VIPs: delete %v: %w", netip.AddrFrom16(k).Unmap(), err)
		}
		delete(p.current, k)
	}
	for k := range want {
		if _, ok := p.current[k]; ok {
			continue
		}
		if err := p.vips.Put(k, want[k]); err != nil {
			return fmt.Errorf("xdp: set VIPs: add %v: %w", netip.AddrFrom16(k).Unmap(), err)
		}
		p.current[k] = struct{}{}
	}
	return nil
}

// version is the IP version of a's family: an IPv4-mapped IPv6 address is
// IPv4, the form the map keys every IPv4 address in.
func version(a netip.Addr) uint8 {
	if a.Unmap().Is4() {
		return 4
	}
	return 6
}

// Register makes s the socket of the receive queue it is bound to,
// replacing the queue's previous socket. Closing s removes it.
func (p *Program) Register(s *Socket) error {
	if s.queue >= p.maxQueues {
		return fmt.Errorf("xdp: register a socket: queue %d outside 0 to %d", s.queue, p.maxQueues-1)
	}
	if err := p.xsks.Put(uint32(s.queue), uint32(s.fd)); err != nil {
		return fmt.Errorf("xdp: register the socket of queue %d: %w", s.queue, err)
	}
	return nil
}

// Unregister removes the socket of receive queue queue, whose packets to a
// VIP then pass to the stack.
func (p *Program) Unregister(queue int) error {
	if err := p.xsks.Delete(uint32(queue)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("xdp: unregister the socket of queue %d: %w", queue, err)
	}
	return nil
}
