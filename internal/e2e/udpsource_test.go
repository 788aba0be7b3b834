package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	xipv4 "golang.org/x/net/ipv4"

	"github.com/caplance/caplance/internal/testbed"
)

// TestUDPAnswerSource shows what caplanced(8), NOTES, tells operators: a
// UDP server on a backend answers the client directly, so it must answer
// from the VIP. Bound to the VIP (the testbed's echo server) or reading the
// destination with IP_PKTINFO it does; bound to 0.0.0.0 and answering with a
// plain sendto, its answer leaves from the backend's own address, and the
// client's connected socket never sees it.
func TestUDPAnswerSource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces)")
	}
	tb := openTestbed(t, testbed.Options{Prefix: "udps", Backends: 1, Workers: 1})
	if err := tb.StartBalancer(); err != nil {
		t.Fatal(err)
	}
	const wildcardPort, pktinfoPort = 9, 10
	be := tb.Backends[0]
	err := be.Host.Do(func() error {
		plain, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", wildcardPort))
		if err != nil {
			return err
		}
		t.Cleanup(func() { plain.Close() })
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := plain.ReadFrom(buf)
				if err != nil {
					return
				}
				plain.WriteTo(buf[:n], from)
			}
		}()
		pc, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", pktinfoPort))
		if err != nil {
			return err
		}
		t.Cleanup(func() { pc.Close() })
		withInfo := xipv4.NewPacketConn(pc)
		if err := withInfo.SetControlMessage(xipv4.FlagDst, true); err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 1500)
			for {
				n, cm, from, err := withInfo.ReadFrom(buf)
				if err != nil {
					return
				}
				withInfo.WriteTo(buf[:n], &xipv4.ControlMessage{Src: cm.Dst}, from)
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// An unconnected socket on the client takes an answer from anyone and
	// says where it came from.
	var client net.PacketConn
	if err := tb.Client.Do(func() (err error) { client, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	answerFrom := func(port uint16) netip.Addr {
		t.Helper()
		to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(testbed.VIP, port))
		buf := make([]byte, 1500)
		// A datagram may be lost while the lab settles: ask again.
		for range 10 {
			if _, err := client.WriteTo([]byte("who"), to); err != nil {
				t.Fatal(err)
			}
			client.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, from, err := client.ReadFrom(buf)
			if err == nil {
				return from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
		}
		t.Fatalf("no answer from VIP port %d", port)
		return netip.Addr{}
	}
	for _, tt := range []struct {
		server string
		port   uint16
		want   netip.Addr
	}{
		{"bound to the VIP", testbed.EchoPort, testbed.VIP},
		{"bound to 0.0.0.0, answering with IP_PKTINFO", pktinfoPort, testbed.VIP},
		{"bound to 0.0.0.0, plain sendto", wildcardPort, be.Addr},
	} {
		if got := answerFrom(tt.port); got != tt.want {
			t.Errorf("server %s: answer from %s, want %s", tt.server, got, tt.want)
		}
	}

	// What a client's connected socket (a resolver's) makes of the last:
	// the kernel drops an answer from another address than the VIP.
	conn, err := tb.DialUDP(netip.AddrPortFrom(testbed.VIP, wildcardPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("who")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := conn.Read(make([]byte, 1500)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a connected socket read %d bytes (%v) of an answer from %s; want none", n, err, be.Addr)
	}
}
