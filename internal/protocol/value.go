package protocol

import "strconv"

// End closes every retrieval reply.
const End = "END\r\n"

// AppendValue appends one item of a retrieval reply as memcached sends it:
//
//	VALUE <key> <flags> <bytes>[ <cas unique>]\r\n<data>\r\n
//
// The CAS unique is written only when withCAS is set (gets, gats).
func AppendValue(dst []byte, key string, flags uint32, data []byte, cas uint64, withCAS bool) []byte {
	dst = AppendValueHeader(dst, key, flags, len(data))
	if withCAS {
		dst = append(dst, ' ')
		dst = strconv.AppendUint(dst, cas, 10)
	}
	dst = append(dst, "\r\n"...)
	dst = append(dst, data...)
	return append(dst, "\r\n"...)
}

// AppendValueHeader appends "VALUE <key> <flags> <bytes>" with no CAS and no line end. The kernel
// cache stores this prefix so that it can insert the CAS unique for gets in the same place the
// server does.
func AppendValueHeader(dst []byte, key string, flags uint32, size int) []byte {
	dst = append(dst, "VALUE "...)
	dst = append(dst, key...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, uint64(flags), 10)
	dst = append(dst, ' ')
	return strconv.AppendUint(dst, uint64(size), 10)
}
