// Package benchnet is the data-path benchmark's traffic kit: the load (UDP
// flows whose payload says which phase and run it belongs to), the frames
// that carry it, built with gopacket, a generator that sends them from an
// AF_PACKET socket's TX ring (TPACKET_V2, qdisc bypassed), sinks that count
// and check what arrives, the search for the highest lossless rate (RFC 2544
// style), the probes that say where the CPU went and where packets were
// lost (/proc counters), and a run's numbers as benchmark metrics.
//
// It owns none of the lab: the caller builds the namespaces, opens the ring
// and the sinks inside them (netnstest.Host.Do) and starts whatever forwards
// between them. The one setting it changes is RPS on one link of the lab's
// switch namespace (SteerReceive), never anything in the root namespace;
// the generator's thread runs pinned to GenCPU. The generator shares no code with caplanced's data path
// (package rawio), so tuning one does not move the other's baseline; the
// sinks receive with rawio.Batch, the same for every path measured.
package benchnet
