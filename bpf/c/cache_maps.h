/* cache_maps.h: the kernel cache's maps, entry layout and runtime settings.
 *
 * Every map on the hit path is an ARRAY, whose lookups the verifier inlines (a bounds check and an
 * add, far cheaper than a hash map lookup; docs/BENCHMARKS.md).
 *
 *   index_map  slots addressed by (hash & mask): a key lives in one of two slots (hash, hash>>32),
 *              which hold its full 64-bit hash and where its entry is in the arena.
 *   arena      fixed-size pages (mmapped by userspace) cut into chunks of one size class each, like
 *              memcached's slabs. A chunk holds one immutable entry: header, the server's reply
 *              bytes for the item, and the gets header.
 *
 * Userspace writes an entry into a free chunk, then points an index slot at it; it retires an entry
 * by clearing or repointing the slot and reuses the chunk only seconds later, so a program run that
 * read the old slot still reads whole, unchanged bytes. A torn read of a slot being rewritten can
 * only pair a hash with another key's entry, which the exact key comparison turns into a miss.
 * A global "flushed before" time and each entry's fill time make a flush O(1).
 */
#pragma once

#include "common.h"

#define KEY_MAX 250      /* memcached's longest key */
#define KEY_WORDS 32     /* 8-byte words scanned for a key: 256 bytes, so 251+ is "too long" */
#define MAX_KEYS 32      /* keys of one get handled in the kernel; more pass */
#define MAX_PAYLOAD 1400 /* largest UDP payload memcached sends in one datagram */
#define CAS_MAX 24       /* " <cas unique>": a space and up to 20 digits */
#define END_LEN 5        /* "END\r\n" */

#define PAGE_SHIFT_ARENA 16
#define PAGE_BYTES (1 << PAGE_SHIFT_ARENA) /* arena page: 64 KiB */
#define CHUNK_MAX 2048                     /* largest chunk; a chunk never crosses a page */
#define DATA_MAX (MAX_PAYLOAD - 8 - END_LEN) /* reply bytes of one entry, frame header and END aside */
#define GETS_HEAD_MAX (6 + KEY_MAX + 1 + 10 + 1 + 4 + CAS_MAX) /* "VALUE k f n cas" */

/* Runtime settings, fixed before load by userspace (volatile: clang must not fold them). */
volatile const __u16 cfg_port = 11211;  /* UDP port answered, host order */
volatile const __u8 cfg_reply_dscp = 0; /* DSCP written on kernel replies; 0 leaves TOS alone */
volatile const __u32 cfg_mtu = 1500;    /* largest IP packet a reply may be */
volatile const __u32 cfg_index_mask = 0; /* index_map entries - 1 (a power of two) */
/* Reply bytes allowed per request byte (UDP payloads), times 16: 64x is 1024. */
volatile const __u32 cfg_max_amp_x16 = 1024;
/* Per-source rate limit as GCRA: one reply costs cfg_interval_ns, and a source may run
 * cfg_burst_ns ahead of its schedule ((burst-1) intervals). 0 interval: no limit. */
volatile const __u64 cfg_interval_ns = 0;
volatile const __u64 cfg_burst_ns = 0;

/* Entries filled before this CLOCK_MONOTONIC time are dead. Userspace raises it with one aligned
 * 8-byte store into the mmapped .bss, so the program never sees a torn value. */
volatile __u64 flushed_before_ns = 0;

/* entry_hdr starts every chunk. After it come data[len + 5] ("VALUE <key> <flags> <bytes>\r\n"
 * "<value>\r\nEND\r\n": the get reply for the item, END included so that the last key of a reply
 * is one store) and gets_head[hdr_len + cas_len] ("VALUE <key> <flags> <bytes> <cas>"). */
struct entry_hdr {
	__u64 expires_ns;     /* CLOCK_MONOTONIC expiry; 0 = never */
	__u64 filled_ns;      /* CLOCK_MONOTONIC time userspace built the entry */
	__u16 len;            /* data bytes without the trailing "END\r\n" */
	__u16 hdr_len;        /* length of "VALUE <key> <flags> <bytes>", where gets inserts cas */
	__u16 key_len;        /* key bytes at data[6:] */
	__u16 cas_len;        /* bytes of " <cas>" */
	__u32 csum_data;      /* folded sum of data[0:len] */
	__u16 csum_gets_head; /* folded sum of gets_head[0:hdr_len+cas_len] */
	__u16 meta;           /* META_MG, and the lengths of the flags and size texts (META_*) */
	__u32 csum_tail;      /* folded sum of data[hdr_len:len], counted from its own first byte */
	__u32 loc;            /* the entry's own arena offset: a torn index read cannot land on
			       * bytes that are not an entry and pass for one */
};

/* entry_hdr.meta: META_MG when mg may be answered (the item carries no meta-protocol state, a
 * stale mark or an issued recache token, that mg replies show); the bytes of the "<bytes>" text
 * of the VALUE header in bits 0-2 and of the "<flags>" text in bits 3-7, for mg's s and f. */
#define META_MG 0x8000
#define META_SIZE_LEN(m) ((m) & 0x7)
#define META_FLAGS_LEN(m) (((m) >> 3) & 0x1f)

/* arena_page is one page of chunks. Chunks lie within the first PAGE_BYTES; the guard after them
 * lets the verifier prove that any read of up to CHUNK_MAX bytes from a chunk stays in the value. */
struct arena_page {
	__u8 b[PAGE_BYTES + CHUNK_MAX];
};

/* arena: key page number, value a page of chunks (BPF_F_MMAPABLE: userspace writes entries in
 * place). Its size is set from the byte budget in Go. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct arena_page);
} arena SEC(".maps");

/* index_slot says where a key's current entry is. It is two aligned 8-byte words, each written
 * by userspace with one atomic store into the mmapped map (hash first, then loc/used, which it
 * clears first when a slot changes keys), and read by the program with one load each, hash
 * first: a reader sees each word whole, and once a store is visible no older value of that word
 * can be read again. */
struct index_slot {
	__u64 hash;       /* full key hash */
	__u32 loc;        /* arena byte offset of the entry: page << 16 | offset in page */
	__u8 used;        /* 1: the slot holds a key */
	__u8 referenced;  /* set by the program on a hit: the CLOCK bit userspace reads and clears */
	__u8 fetched;     /* set by the program on a hit: userspace records the fetch in its store */
	__u8 pad;
};

/* index_map: key (hash & mask) or (hash >> 32 & mask), value the slot. Size set from Go. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct index_slot);
} index_map SEC(".maps");

/* allow_key is an LPM key: IPv4 sources as IPv4-mapped IPv6 (::ffff:a.b.c.d, prefix 96 + len). */
struct allow_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* allow_sources: key a source prefix, value 1. Only sources in it are answered. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct allow_key);
	__type(value, __u8);
} allow_sources SEC(".maps");

/* allow_gen counts changes to allow_sources; userspace raises it (one aligned store into the
 * mmapped .bss) after each change, which invalidates every allow_cache entry at once. Starts at 1
 * so that zeroed cache entries never match. */
volatile __u32 allow_gen = 1;

#define ALLOW_CACHE_SLOTS 4096

/* allow_cache_ent remembers the allow-list's verdict for one source. */
struct allow_cache_ent {
	__u8 addr[16];
	__u32 gen;     /* allow_gen when looked up */
	__u32 allowed; /* 1: in the allow-list */
};

/* allow_cache: key a hash of the source address, value this CPU's last verdict for a source
 * with that hash. A direct-mapped per-CPU cache in front of the trie: an ARRAY lookup is
 * inlined where an LPM lookup is a helper call. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ALLOW_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct allow_cache_ent);
} allow_cache SEC(".maps");

/* source_tat: key a source address (IPv4-mapped for IPv4), value its GCRA theoretical arrival
 * time in CLOCK_MONOTONIC ns. LRU: a flood of sources evicts old state, never grows memory. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, struct in6_addr);
	__type(value, __u64);
} source_tat SEC(".maps");

#define MOPQ_MAX 32   /* the longest O token ("O" and its opaque) the server echoes */
#define MHDR_MAX 384  /* longest mg header line: "VA 1400" and every flag with the longest value */
#define MHDR_BUF 704  /* MHDR_MAX plus room for a whole copy's words past any offset under it */
#define MREQ_MAX 512  /* longest mg command the kernel answers */
#define MREQ_BUF 520

/* scratch is per-CPU working memory for one packet. */
struct scratch {
	__u64 now_ns;  /* bpf_ktime_get_ns() for the rate limit, at most once per packet; 0 = not yet */
	__u64 coarse_ns; /* bpf_ktime_get_coarse_ns() for expiry, the same way */
	__u64 csum;    /* running sum of the reply's UDP payload */
	__u64 hash;    /* hash of the key just scanned */
	__u32 pos;     /* packet offset of the next key */
	__u32 end;     /* packet offset where the command ends */
	__u32 out_len; /* reply bytes after the frame header so far */
	__u32 gets;    /* 1 for gets: insert the CAS unique */
	__u32 launder; /* see launder() in cache.c */
	__u32 meta;    /* 1: the request is an mg (meta.h) */
	__u32 mhdr_len; /* mg: bytes of the reply's header line ("\r\n" included without v) */
	__u32 mtail;   /* mg: 1 when the value follows the header line (flag v) */
	__u32 mreq_len; /* mg: bytes of the request's command, kept in mreq */
	__u32 mseen;   /* mg: the flags asked for (meta.h MF_*) */
	__u32 mntok;   /* mg: how many flags */
	__u32 mlast;   /* mg: 1 when the key ended the line (no flags) */
	__u32 mkey_pos; /* mg: packet offset of the key */
	__u32 mkey_off; /* mg: the key's offset in mreq */
	__u32 mkey_len; /* mg: the key's bytes as sent (base64 with b) */
	__u32 mopq_len; /* mg: bytes of the O token */
	__u64 mtoks;   /* mg: the flags' letters, in request order, one a byte */
	__u64 mframe_csum; /* mg: the frame header's sum */
	__u32 locs[MAX_KEYS];    /* arena offset of each key's entry, found in the first pass */
	__u64 key[KEY_WORDS];    /* the key just scanned, as little-endian words, zero-padded */
	__u64 hdr[HDR_MAX / 8];  /* XDP: the request's headers, to put back if a helper fails */
	__s32 bench_head_grown;  /* benchmark builds only: bytes the reply grew at the head */
	__u8 mopq[MOPQ_MAX + 8]; /* mg: the O token, as the request had it */
	__u8 mhdr[MHDR_BUF];     /* mg: the reply's header line, built by meta.h */
	__u8 mreq[MREQ_BUF];     /* mg: the request's command, to put back if a helper fails */
};

/* scratch_map: key 0, value this CPU's scratch. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

#define HANDOFF_SLOTS 8 /* requests one CPU's XDP run may hand to TC before TC sees them */

/* handoff remembers the requests xdp_cache passed for tc_cache to answer (XDP metadata would
 * carry the mark, but this kernel refuses bpf_xdp_adjust_meta). A request's XDP and TC runs
 * happen on the same CPU, at most a receive batch apart. A key names the packet (source,
 * ports, frame header, length); a stale or colliding key only makes TC run its full first
 * pass, which decides on its own. */
struct handoff {
	__u64 key[HANDOFF_SLOTS];
	__u32 next;
};

/* handoff_map: key 0, value this CPU's handoff slots. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct handoff);
} handoff_map SEC(".maps");
