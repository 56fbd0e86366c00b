package takeover

import (
	"encoding/binary"
	"fmt"

	"github.com/xdpcache/xdpcache/cache"
)

// An item record: key length (u16), key, flags (u32), exptime (i64), CAS (u64), last access
// (i64), access bits (u8: fetched, stale, win issued), value length (u32), value. Little-endian.
const itemFixed = 2 + 4 + 8 + 8 + 8 + 1 + 4

const (
	bitFetched = 1 << iota
	bitStale
	bitWinIssued
)

type movedItem struct {
	key string
	it  cache.Item
}

func appendItem(b []byte, key string, it *cache.Item) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(key)))
	b = append(b, key...)
	b = binary.LittleEndian.AppendUint32(b, it.Flags)
	b = binary.LittleEndian.AppendUint64(b, uint64(it.Exptime))
	b = binary.LittleEndian.AppendUint64(b, it.CAS)
	b = binary.LittleEndian.AppendUint64(b, uint64(it.LastAccess))
	var bits byte
	if it.Fetched {
		bits |= bitFetched
	}
	if it.Stale {
		bits |= bitStale
	}
	if it.WinIssued {
		bits |= bitWinIssued
	}
	b = append(b, bits)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(it.Value)))
	return append(b, it.Value...)
}

// parseItems decodes a frame of item records; values alias b.
func parseItems(b []byte, fn func(movedItem) error) error {
	for len(b) > 0 {
		if len(b) < 2 {
			return fmt.Errorf("%w: short item record", errProtocol)
		}
		kl := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+kl+itemFixed-2 {
			return fmt.Errorf("%w: short item record", errProtocol)
		}
		var m movedItem
		m.key = string(b[2 : 2+kl])
		p := b[2+kl:]
		m.it.Flags = binary.LittleEndian.Uint32(p)
		m.it.Exptime = int64(binary.LittleEndian.Uint64(p[4:]))
		m.it.CAS = binary.LittleEndian.Uint64(p[12:])
		m.it.LastAccess = int64(binary.LittleEndian.Uint64(p[20:]))
		bits := p[28]
		m.it.Fetched, m.it.Stale, m.it.WinIssued = bits&bitFetched != 0, bits&bitStale != 0, bits&bitWinIssued != 0
		vl := int(binary.LittleEndian.Uint32(p[29:]))
		p = p[33:]
		if len(p) < vl {
			return fmt.Errorf("%w: item value cut short", errProtocol)
		}
		m.it.Value = p[:vl:vl]
		if err := fn(m); err != nil {
			return err
		}
		b = p[vl:]
	}
	return nil
}

func appendKey(b []byte, key string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(key)))
	return append(b, key...)
}

func parseKeys(b []byte, fn func(string)) error {
	for len(b) > 0 {
		if len(b) < 2 {
			return fmt.Errorf("%w: short key record", errProtocol)
		}
		n := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+n {
			return fmt.Errorf("%w: short key record", errProtocol)
		}
		fn(string(b[2 : 2+n]))
		b = b[2+n:]
	}
	return nil
}
