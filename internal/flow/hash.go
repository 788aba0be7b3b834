package flow

import (
	"encoding/binary"
	"math/bits"
)

// XXH64 primes.
const (
	prime1 uint64 = 11400714785074694791
	prime2 uint64 = 14029467366897019727
	prime3 uint64 = 1609587929392839161
	prime4 uint64 = 9650029242287828579
	prime5 uint64 = 2870177450012600261

	// The initial lane values for seed 0: prime1+prime2 and -prime1, modulo 2⁶⁴.
	init1 uint64 = 6983438078262162902
	init4 uint64 = 7046029288634856825
)

// Hash returns XXH64, seed 0, of the key's 37-byte wire layout
// Src ‖ Dst ‖ SrcPort ‖ DstPort ‖ Proto (ports big-endian).
//
// Every balancer instance behind the same ECMP group must send a flow to the
// same backend, so the hash has no seed (hash/maphash is randomly seeded) and
// must never change: a change moves every flow at the upgrade. XXH64 is fast,
// mixes well and has a public specification, so the value can be reproduced
// outside Go (`xxhsum -H1` of the layout). The function is XXH64 unrolled for
// exactly this 37-byte input: one 32-byte stripe (the two addresses), a 4-byte
// tail (the ports) and a 1-byte tail (the protocol).
func (k Key) Hash() uint64 {
	v1 := round(init1, binary.LittleEndian.Uint64(k.Src[0:8]))
	v2 := round(prime2, binary.LittleEndian.Uint64(k.Src[8:16]))
	v3 := round(0, binary.LittleEndian.Uint64(k.Dst[0:8]))
	v4 := round(init4, binary.LittleEndian.Uint64(k.Dst[8:16]))

	h := bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) +
		bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
	h = merge(h, v1)
	h = merge(h, v2)
	h = merge(h, v3)
	h = merge(h, v4)
	h += 37

	// The ports' four big-endian wire bytes, read little-endian as XXH64 does.
	ports := uint32(bits.ReverseBytes16(k.SrcPort)) | uint32(bits.ReverseBytes16(k.DstPort))<<16
	h ^= uint64(ports) * prime1
	h = bits.RotateLeft64(h, 23)*prime2 + prime3

	h ^= uint64(k.Proto) * prime5
	h = bits.RotateLeft64(h, 11) * prime1

	h ^= h >> 33
	h *= prime2
	h ^= h >> 29
	h *= prime3
	h ^= h >> 32
	return h
}

func round(acc, input uint64) uint64 {
	acc += input * prime2
	acc = bits.RotateLeft64(acc, 31)
	return acc * prime1
}

func merge(acc, v uint64) uint64 {
	acc ^= round(0, v)
	return acc*prime1 + prime4
}
