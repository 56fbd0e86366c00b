//go:build ignore

/* sk_probe.c: probes of the socket-layer hooks (SK_SKB verdict, SK_MSG) on the running kernel.
 * They are not part of the cache: only tests load them, to pin down how the kernel accounts for a
 * request that a program answers out of the same TCP connection, so a kernel that changes the
 * behaviour is noticed.
 *
 * The protocol is a toy: an skb of exactly cfg_req_len bytes that starts with "ping" is answered
 * by the kernel with a reply of cfg_reply_len bytes ("pong", then 'x's, then "\r\n"); every other
 * byte passes to the socket's reader unchanged. cfg_mode picks where the reply is built:
 *   MODE_REWRITE: the verdict rewrites the request into the reply (bpf_skb_change_tail and
 *                 bpf_skb_store_bytes) and redirects it to the same socket's egress;
 *   MODE_MARK:    the verdict overwrites the request's first byte with MARK (same length) and
 *                 redirects it to the same socket's egress; the SK_MSG program on the send side
 *                 turns a marked message into the reply (bpf_msg_push_data/bpf_msg_pop_data and
 *                 direct writes) and passes everything else unchanged.
 * probe_parser is a stream parser that takes each segment whole, for the tests that attach one.
 * With cfg_gate set, the verdict answers only while the reader owes no reply: it counts the bytes
 * it passed (probe_passed), the reader publishes the bytes it has read and answered
 * (probe_answered), and a request is answered in the kernel only when the two are equal.
 */

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define MODE_REWRITE 1
#define MODE_MARK 2

#define REPLY_MAX 4096 /* longest probe reply */
#define MARK 0x01     /* first byte of a request the verdict handed to the send side */

volatile const __u32 cfg_mode = MODE_REWRITE;
volatile const __u32 cfg_reply_len = 6; /* 4..REPLY_MAX */
volatile const __u32 cfg_req_len = 24;  /* only an skb of exactly this length is a request */
volatile const __u32 cfg_gate = 0;      /* answer only when the reader owes nothing */
volatile const __u32 cfg_pull = 1;      /* MODE_MARK: make the request linear before marking it */

/* The connections under test. Key: the socket's cookie (SO_COOKIE). Value: the socket, given as
 * an fd from userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u32);
} probe_socks SEC(".maps");

/* Bytes the verdict passed to the reader. Key: socket cookie. Value: byte count. Userspace creates
 * the entry (0) when it adds the socket; only the verdict writes it afterwards. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u64);
} probe_passed SEC(".maps");

/* Bytes the reader has read and answered in full, published after its replies are written. Key:
 * socket cookie. Value: byte count. Only userspace writes it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u64);
} probe_answered SEC(".maps");

/* Marked requests the verdict has sent to the send side and the SK_MSG program has not yet turned
 * into replies. Key: conn_key (SK_MSG programs cannot read the socket cookie). Value: count. Only a message sent while one is pending can be
 * a reply: the reader writes nothing then (the gate), so its own bytes can never be taken for one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u64);
} probe_pending SEC(".maps");

/* conn_key names a connection from its local and remote ports, the same in both program types.
 * remote_port is in network order in both contexts, but in the upper half of the 32-bit field in
 * some and the lower in others; one half is zero, so OR-ing the halves gives the port either way. */
static __always_inline __u64 conn_key(__u32 local_port, __u32 remote_port)
{
	return ((__u64)local_port << 16) | ((remote_port >> 16) | (remote_port & 0xffff));
}

enum probe_counter {
	PC_VERDICT,       /* verdict program runs */
	PC_REDIRECT,      /* requests the verdict sent back out */
	PC_PASS,          /* skbs the verdict passed to the reader */
	PC_MSG,           /* SK_MSG program runs (every send on a socket in the map) */
	PC_MSG_RESIZED,   /* marked messages turned into replies */
	PC_ERR,           /* a helper failed */
	PC_GATED,         /* requests passed because the reader still owed a reply */
	PC_MAX,
};

/* Event counts. Key: enum probe_counter. Value: count. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} probe_counts SEC(".maps");

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&probe_counts, &c);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* reply_byte is byte i of the probe reply of length n. */
static __always_inline __u8 reply_byte(__u32 i, __u32 n)
{
	static const char pong[4] = "pong";

	if (i == n - 2)
		return '\r';
	if (i == n - 1)
		return '\n';
	if (i < 4)
		return pong[i];
	return 'x';
}

/* The reply template for bpf_skb_store_bytes, filled by reply_template below. */
static char tmpl[REPLY_MAX];

static __always_inline int is_ping(struct __sk_buff *skb)
{
	char b[4];

	if (skb->len != cfg_req_len || bpf_skb_load_bytes(skb, 0, b, 4))
		return 0;
	return b[0] == 'p' && b[1] == 'i' && b[2] == 'n' && b[3] == 'g';
}

static __always_inline int verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 n = cfg_reply_len;
	__u32 i;

	count(PC_VERDICT);
	if (cfg_gate) {
		__u64 *passed = bpf_map_lookup_elem(&probe_passed, &cookie);
		__u64 *answered = bpf_map_lookup_elem(&probe_answered, &cookie);

		if (!passed || !answered)
			goto err;
		if (!is_ping(skb) || *passed != *answered) {
			if (is_ping(skb))
				count(PC_GATED);
			*passed += skb->len;
			count(PC_PASS);
			return SK_PASS;
		}
	} else if (!is_ping(skb)) {
		count(PC_PASS);
		return SK_PASS;
	}
	if (cfg_mode == MODE_MARK) {
		__u64 key = conn_key(skb->local_port, skb->remote_port);
		__u64 one = 1, *pending = bpf_map_lookup_elem(&probe_pending, &key);
		__u8 m = MARK;

		/* The send side gets the linear part and each page fragment in separate messages; the
		 * whole request must reach it as one. */
		if (cfg_pull && bpf_skb_pull_data(skb, skb->len))
			goto err;
		if (bpf_skb_store_bytes(skb, 0, &m, 1, 0))
			goto err;
		if (pending)
			__sync_fetch_and_add(pending, 1);
		else if (bpf_map_update_elem(&probe_pending, &key, &one, BPF_NOEXIST))
			goto err;
	} else {
		if (n < 4 || n > REPLY_MAX)
			goto err;
		for (i = 0; i < REPLY_MAX; i++)
			tmpl[i] = reply_byte(i, n);
		if (bpf_skb_change_tail(skb, n, 0))
			goto err;
		if (bpf_skb_store_bytes(skb, 0, tmpl, n, 0))
			goto err;
	}
	count(PC_REDIRECT);
	return bpf_sk_redirect_hash(skb, &probe_socks, &cookie, 0);
err:
	count(PC_ERR);
	return SK_DROP;
}

SEC("sk_skb/stream_verdict")
int probe_stream_verdict(struct __sk_buff *skb)
{
	return verdict(skb);
}

SEC("sk_skb/verdict")
int probe_skb_verdict(struct __sk_buff *skb)
{
	return verdict(skb);
}

/* A stream parser that takes each segment whole as one message. */
SEC("sk_skb/stream_parser")
int probe_parser(struct __sk_buff *skb)
{
	return skb->len;
}

/* MODE_MARK with a failing send side: the SK_MSG program drops every marked message. */
volatile const __u32 cfg_msg_drop = 0;

SEC("sk_msg")
int probe_msg(struct sk_msg_md *msg)
{
	__u64 key = conn_key(msg->local_port, msg->remote_port), *pending;
	__u32 n = cfg_reply_len, have = msg->size;
	__u8 *p, *end;
	__u32 i;

	count(PC_MSG);
	pending = bpf_map_lookup_elem(&probe_pending, &key);
	if (!pending || *pending == 0)
		return SK_PASS;
	if (bpf_msg_pull_data(msg, 0, 1, 0))
		goto err;
	p = msg->data;
	end = msg->data_end;
	if (p + 1 > end || *p != MARK || (cfg_pull && have != cfg_req_len))
		goto err;
	__sync_fetch_and_sub(pending, 1);
	if (cfg_msg_drop)
		return SK_DROP;
	if (n < 4 || n > REPLY_MAX)
		goto err;
	if (n > have && bpf_msg_push_data(msg, have, n - have, 0))
		goto err;
	if (n < have && bpf_msg_pop_data(msg, n, have - n, 0))
		goto err;
	if (bpf_msg_pull_data(msg, 0, n, 0))
		goto err;
	p = msg->data;
	end = msg->data_end;
	for (i = 0; i < REPLY_MAX; i++) {
		if (i >= n || p + i + 1 > end)
			break;
		p[i] = reply_byte(i, n);
	}
	count(PC_MSG_RESIZED);
	return SK_PASS;
err:
	count(PC_ERR);
	return SK_PASS;
}
