/* cache_maps.h: the kernel cache's maps, entry layout and runtime settings.
 *
 * Entries are immutable once inserted. Each lives in the hash map of its size class, keyed by a
 * version number userspace never reuses; the index maps the FNV-1a hash of a key to the class and
 * version of its current entry. Userspace publishes an entry by inserting it and then pointing the
 * index at it, retires it by deleting or repointing the index, and deletes the entry itself only
 * seconds later, so a program that read the old index value still reads whole, unchanged bytes.
 * A global "flushed before" time and each entry's fill time make a flush O(1).
 */
#pragma once

#include "common.h"

#define KEY_MAX 250     /* memcached's longest key */
#define MAX_KEYS 32     /* keys of one get handled in the kernel; more pass */
#define MAX_PAYLOAD 1400 /* largest UDP payload memcached sends in one datagram */
#define CAS_MAX 24      /* " <cas unique>": a space and up to 20 digits */
#define HDR_MAX 128     /* Ethernet, VLAN, IPv6, UDP and frame headers fit */

/* Runtime settings, fixed before load by userspace (volatile: clang must not fold them). */
volatile const __u16 cfg_port = 11211; /* UDP port answered, host order */
volatile const __u8 cfg_reply_dscp = 0; /* DSCP written on kernel replies; 0 leaves TOS alone */
volatile const __u32 cfg_mtu = 1500;    /* largest IP packet a reply may be */

/* Entries filled before this CLOCK_MONOTONIC time are dead. Userspace raises it with one aligned
 * 8-byte store into the mmapped .bss, so the program never sees a torn value. */
volatile __u64 flushed_before_ns = 0;

/* entry_hdr is the fixed part of every entry; data follows it in the class struct. */
struct entry_hdr {
	__u64 expires_ns; /* CLOCK_MONOTONIC expiry; 0 = never */
	__u64 filled_ns;  /* CLOCK_MONOTONIC time userspace built the entry */
	__u16 len;        /* bytes of data: "VALUE <key> <flags> <bytes>\r\n<value>\r\n" */
	__u16 hdr_len;    /* length of "VALUE <key> <flags> <bytes>", where gets inserts cas */
	__u16 key_len;    /* key bytes at data[6:] */
	__u16 cas_len;    /* bytes of cas */
	__u32 csum_data;  /* folded sum of data[0:len] */
	__u32 csum_head;  /* folded sum of data[0:hdr_len] */
	__u32 csum_tail;  /* folded sum of data[hdr_len:len], counted from its own first byte */
	__u32 csum_cas;   /* folded sum of cas[0:cas_len] */
	__u8 cas[CAS_MAX]; /* " <cas unique>" as the server writes it for gets */
};

/* Size classes, so memory follows item size. The largest holds the biggest get reply that fits
 * one datagram: 1400 - 8 (frame header) - 5 ("END\r\n") rounded up to 8 bytes. */
#define DEFINE_CLASS(N)                                                                     \
	struct entry_##N {                                                                  \
		struct entry_hdr h;                                                         \
		__u8 data[N];                                                               \
	};                                                                                  \
	/* entries_N: key entry version, value an immutable entry of up to N data bytes. */ \
	struct {                                                                            \
		__uint(type, BPF_MAP_TYPE_HASH);                                            \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                       \
		__uint(max_entries, 1);                                                     \
		__type(key, __u64);                                                         \
		__type(value, struct entry_##N);                                            \
	} entries_##N SEC(".maps");

DEFINE_CLASS(128)
DEFINE_CLASS(256)
DEFINE_CLASS(512)
DEFINE_CLASS(1024)
DEFINE_CLASS(1392)

enum entry_class {
	CLASS_128 = 0,
	CLASS_256,
	CLASS_512,
	CLASS_1024,
	CLASS_1392,
};

/* index_val says where a key's current entry is. */
struct index_val {
	__u64 version;    /* key of the entry in its class map */
	__u32 class;      /* enum entry_class */
	__u32 referenced; /* set by the program on a hit: the CLOCK bit userspace reads and clears */
};

/* index: key the FNV-1a 64 hash of a memcached key, value where its entry is. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct index_val);
} index_map SEC(".maps");

/* slot records a key found in the first pass, for the second pass to copy. */
struct slot {
	__u64 version;
	__u32 class;
	__u32 pad;
};

/* scratch is per-CPU working memory for one packet. */
struct scratch {
	__u64 now_ns;   /* bpf_ktime_get_ns(), read at most once per packet; 0 = not yet */
	__u64 csum;     /* running sum of the reply's UDP payload */
	__u64 hash;     /* hash of the key just scanned */
	__u32 pos;      /* packet offset of the next key */
	__u32 out_len;  /* reply bytes after the frame header so far */
	__u32 gets;     /* 1 for gets: insert the CAS unique */
	__u32 pad;
	struct slot slots[MAX_KEYS];
	__u8 key[KEY_MAX + 14]; /* the key just scanned, room to read whole words past its end */
	__u8 saved[MAX_PAYLOAD]; /* the request's command bytes, to restore if the reply fails */
	__u8 headers[HDR_MAX];   /* the request's headers, when the reply grows at the head */
};

/* scratch_map: key 0, value this CPU's scratch. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");
