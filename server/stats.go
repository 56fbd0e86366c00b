package server

import (
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/xdpcache/xdpcache/cache"
)

// counters are the server's own event counts, named after memcached's stats.
type counters struct {
	cmdGet, cmdSet, cmdFlush, cmdTouch, cmdMeta atomic.Uint64
	getHits, getMisses                          atomic.Uint64
	deleteHits, deleteMisses                    atomic.Uint64
	incrHits, incrMisses, decrHits, decrMisses  atomic.Uint64
	casHits, casMisses, casBadval               atomic.Uint64
	touchHits, touchMisses                      atomic.Uint64
	storeTooLarge, storeNoMemory                atomic.Uint64
	bytesRead, bytesWritten                     atomic.Uint64
	currConns, totalConns, rejectedConns        atomic.Int64
	udpRequests, udpDropped                     atomic.Uint64
	kernelErrors                                atomic.Uint64
	// sizesEnabled is memcached's track_sizes, switched by "stats sizes_enable|disable"; not a
	// counter, so stats reset leaves it.
	sizesEnabled atomic.Bool
}

// reset zeroes what memcached's `stats reset` zeroes (not gauges such as curr_connections).
func (c *counters) reset() {
	for _, v := range []*atomic.Uint64{&c.cmdGet, &c.cmdSet, &c.cmdFlush, &c.cmdTouch, &c.cmdMeta,
		&c.getHits, &c.getMisses, &c.deleteHits, &c.deleteMisses, &c.incrHits, &c.incrMisses,
		&c.decrHits, &c.decrMisses, &c.casHits, &c.casMisses, &c.casBadval, &c.touchHits,
		&c.touchMisses, &c.storeTooLarge, &c.storeNoMemory, &c.bytesRead, &c.bytesWritten,
		&c.udpRequests, &c.udpDropped, &c.kernelErrors} {
		v.Store(0)
	}
	c.totalConns.Store(0)
	c.rejectedConns.Store(0)
}

// stat is one "STAT name value" line.
type stat struct{ name, value string }

func u64(v uint64) string { return strconv.FormatUint(v, 10) }
func i64(v int64) string  { return strconv.FormatInt(v, 10) }

// generalStats lists the `stats` fields in memcached's order, with ours at the end.
func (s *Server) generalStats() []stat {
	st := &s.st
	cs := s.store.Stats()
	now := time.Now()
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	tv := func(t syscall.Timeval) string {
		return strconv.FormatInt(t.Sec, 10) + "." + leftPad(strconv.FormatInt(int64(t.Usec), 10), 6)
	}
	getHits, cmdGet := st.getHits.Load(), st.cmdGet.Load()
	var ks KernelStats
	var replyDSCP uint8
	if s.kernel != nil {
		replyDSCP = s.cfg.KernelReplyDSCP
		if k, err := s.kernel.Stats(); err == nil {
			ks = k
		} else {
			st.kernelErrors.Add(1)
		}
	}
	// Kernel-served keys are GETs memcached would have counted.
	getHits += ks.Hits
	cmdGet += ks.Hits
	accepting := "1"
	if s.isClosed() {
		accepting = "0"
	}
	return append([]stat{
		{"pid", strconv.Itoa(os.Getpid())},
		{"uptime", i64(int64(now.Sub(s.started).Seconds()))},
		{"time", i64(now.Unix())},
		{"version", ProtocolVersion},
		{"pointer_size", strconv.Itoa(strconv.IntSize)},
		{"rusage_user", tv(ru.Utime)},
		{"rusage_system", tv(ru.Stime)},
		{"max_connections", strconv.Itoa(s.cfg.ConnLimit)},
		{"curr_connections", i64(st.currConns.Load())},
		{"total_connections", i64(st.totalConns.Load())},
		{"rejected_connections", i64(st.rejectedConns.Load())},
		{"cmd_get", u64(cmdGet)},
		{"cmd_set", u64(st.cmdSet.Load())},
		{"cmd_flush", u64(st.cmdFlush.Load())},
		{"cmd_touch", u64(st.cmdTouch.Load())},
		{"cmd_meta", u64(st.cmdMeta.Load())},
		{"get_hits", u64(getHits)},
		{"get_misses", u64(st.getMisses.Load())},
		{"delete_misses", u64(st.deleteMisses.Load())},
		{"delete_hits", u64(st.deleteHits.Load())},
		{"incr_misses", u64(st.incrMisses.Load())},
		{"incr_hits", u64(st.incrHits.Load())},
		{"decr_misses", u64(st.decrMisses.Load())},
		{"decr_hits", u64(st.decrHits.Load())},
		{"cas_misses", u64(st.casMisses.Load())},
		{"cas_hits", u64(st.casHits.Load())},
		{"cas_badval", u64(st.casBadval.Load())},
		{"touch_hits", u64(st.touchHits.Load())},
		{"touch_misses", u64(st.touchMisses.Load())},
		{"store_too_large", u64(st.storeTooLarge.Load())},
		{"store_no_memory", u64(st.storeNoMemory.Load())},
		{"bytes_read", u64(st.bytesRead.Load())},
		{"bytes_written", u64(st.bytesWritten.Load())},
		{"limit_maxbytes", i64(cs.LimitMaxBytes)},
		{"accepting_conns", accepting},
		{"threads", strconv.Itoa(runtime.GOMAXPROCS(0))},
		{"bytes", u64(cs.Bytes)},
		{"curr_items", u64(cs.CurrItems)},
		{"total_items", u64(cs.TotalItems)},
		{"expired_unfetched", u64(cs.ExpiredUnfetched)},
		{"evicted_unfetched", u64(cs.EvictedUnfetched)},
		{"evictions", u64(cs.Evictions)},
		{"reclaimed", u64(cs.Reclaimed)},
		{"slab_reassign_rescues", u64(cs.SlabReassignRescues)},
		{"slab_reassign_evictions_nomem", u64(cs.SlabReassignEvictions)},
		{"slabs_moved", u64(cs.SlabsMoved)},
		{"slab_global_page_pool", u64(cs.SlabGlobalPagePool)},
		{"hash_bytes", u64(cs.HashBytes)},
		{"udp_requests", u64(st.udpRequests.Load())},
		{"udp_dropped", u64(st.udpDropped.Load())},
		{"kernel_get_hits", u64(ks.Hits)},
		{"kernel_requests", u64(ks.Requests)},
		{"kernel_bytes_sent", u64(ks.BytesSent)},
		{"kernel_fills", u64(ks.Fills)},
		{"kernel_fills_skipped", u64(ks.FillsSkipped)},
		{"kernel_evictions", u64(ks.Evictions)},
		{"kernel_admissions_refused", u64(ks.AdmissionsRefused)},
		{"kernel_reply_dscp", strconv.Itoa(int(replyDSCP))},
		{"kernel_errors", u64(st.kernelErrors.Load())},
		{"xdpcache_version", s.cfg.Version},
	}, s.be.stats()...)
}

func leftPad(s string, n int) string {
	for len(s) < n {
		s = "0" + s
	}
	return s
}

// Stats returns the general `stats` fields by name.
func (s *Server) Stats() map[string]string {
	list := s.generalStats()
	m := make(map[string]string, len(list))
	for _, st := range list {
		m[st.name] = st.value
	}
	return m
}

func (s *Server) settingsStats() []stat {
	yesno := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	return []stat{
		{"maxbytes", i64(s.cfg.MemoryLimit)},
		{"maxconns", strconv.Itoa(s.cfg.ConnLimit)},
		{"verbosity", strconv.Itoa(int(s.verbosity.Load()))},
		{"evictions", "on"},
		{"cas_enabled", "yes"},
		{"item_size_max", i64(s.cfg.MaxItemSize)},
		{"flush_enabled", "yes"},
		{"num_threads", strconv.Itoa(runtime.GOMAXPROCS(0))},
		{"udp_max_datagram", strconv.Itoa(s.cfg.MaxDatagram)},
		{"kernel_cache", yesno(s.kernel != nil)},
	}
}

// itemsStats reports each size class holding items, with memcached's "stats items" fields that
// the store keeps. Its LRU is not segmented, so the hot, warm and cold fields are absent.
func (s *Server) itemsStats() []stat {
	var list []stat
	for _, c := range s.store.Classes() {
		if c.Items == 0 {
			continue
		}
		p := "items:" + strconv.Itoa(c.Class) + ":"
		list = append(list,
			stat{p + "number", u64(c.Items)},
			stat{p + "age", i64(c.Age)},
			stat{p + "mem_requested", u64(c.MemRequested)},
			stat{p + "evicted", u64(c.Evicted)},
			stat{p + "evicted_nonzero", u64(c.EvictedNonzero)},
			stat{p + "evicted_time", i64(c.EvictedTime)},
			stat{p + "outofmemory", u64(c.OutOfMemory)},
			stat{p + "reclaimed", u64(c.Reclaimed)},
			stat{p + "expired_unfetched", u64(c.ExpiredUnfetched)},
			stat{p + "evicted_unfetched", u64(c.EvictedUnfetched)},
		)
	}
	return list
}

// slabsStats reports each size class that has pages, with memcached's "stats slabs" fields.
// The store counts fetches, stores and deletes per class; incr, decr, cas and touch it cannot
// tell apart from other changes, so those per-class fields are absent (the general stats have
// them).
func (s *Server) slabsStats() []stat {
	var list []stat
	active := 0
	for _, c := range s.store.Classes() {
		if c.TotalPages == 0 {
			continue
		}
		active++
		p := strconv.Itoa(c.Class) + ":"
		list = append(list,
			stat{p + "chunk_size", strconv.Itoa(c.ChunkSize)},
			stat{p + "chunks_per_page", strconv.Itoa(c.ChunksPerPage)},
			stat{p + "total_pages", strconv.Itoa(c.TotalPages)},
			stat{p + "total_chunks", strconv.Itoa(c.TotalChunks)},
			stat{p + "used_chunks", strconv.Itoa(c.UsedChunks)},
			stat{p + "free_chunks", strconv.Itoa(c.FreeChunks)},
			// Pages are cut into free chunks whole, so none wait at a page's end.
			stat{p + "free_chunks_end", "0"},
			stat{p + "get_hits", u64(c.GetHits)},
			stat{p + "cmd_set", u64(c.CmdSet)},
			stat{p + "delete_hits", u64(c.DeleteHits)},
			stat{p + "incr_hits", u64(c.Hits[cache.IncrHit])},
			stat{p + "decr_hits", u64(c.Hits[cache.DecrHit])},
			stat{p + "cas_hits", u64(c.Hits[cache.CASHit])},
			stat{p + "cas_badval", u64(c.Hits[cache.CASBadval])},
			stat{p + "touch_hits", u64(c.Hits[cache.TouchHit])},
		)
	}
	cs := s.store.Stats()
	return append(list, stat{"active_slabs", strconv.Itoa(active)}, stat{"total_malloced", u64(cs.TotalMalloced)})
}

// sizesStats is memcached's "stats sizes": the items held by size in 32-byte steps when
// enabled ("stats sizes_enable", as memcached's -o track_sizes), else its disabled status. The
// store walks its items to answer, so enabling costs nothing per store or delete.
func (s *Server) sizesStats() []stat {
	if !s.st.sizesEnabled.Load() {
		return []stat{{"sizes_status", "disabled"}}
	}
	var list []stat
	for _, sc := range s.store.Sizes() {
		list = append(list, stat{strconv.Itoa(sc.Size), u64(sc.Count)})
	}
	return list
}

// stats runs "stats [<group>]".
func (c *session) stats() {
	t := &c.tok
	var list []stat
	sub := ""
	if t.N > 1 {
		sub = string(t.Tok(1))
	}
	switch sub {
	case "":
		list = c.s.generalStats()
	case "settings":
		list = c.s.settingsStats()
	case "items":
		list = c.s.itemsStats()
	case "slabs":
		list = c.s.slabsStats()
	case "sizes":
		list = c.s.sizesStats()
	case "sizes_enable", "sizes_disable":
		// memcached answers these with the status line alone, no END.
		on := sub == "sizes_enable"
		c.s.st.sizesEnabled.Store(on)
		c.status = statusOK
		if on {
			c.reply("STAT sizes_status enabled")
		} else {
			c.reply("STAT sizes_status disabled")
		}
		return
	case "conns":
		list = nil
	case "reset":
		c.s.st.reset()
		c.status = statusOK
		c.reply("RESET")
		return
	case "detail":
		c.status = statusClientError
		c.reply("CLIENT_ERROR usage: stats detail on|off|dump")
		return
	case "cachedump":
		c.status = statusClientError
		c.reply("CLIENT_ERROR bad command line")
		return
	default:
		c.status = statusError
		c.reply("ERROR")
		return
	}
	c.status = statusOK
	for _, st := range list {
		c.out = append(c.out, "STAT "...)
		c.out = append(c.out, st.name...)
		c.out = append(c.out, ' ')
		c.out = append(c.out, st.value...)
		c.out = append(c.out, "\r\n"...)
	}
	c.out = append(c.out, "END\r\n"...)
}
