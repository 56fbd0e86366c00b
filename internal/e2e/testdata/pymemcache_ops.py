"""Drive a memcached server with pymemcache and check every reply.

Arguments and output: clientcheck.py. Uses only commands a proxy (twemproxy) forwards: no flush_all.
"""
from clientcheck import check, finish, host, k, missing, port

try:
    from pymemcache.client.base import Client
except ImportError as e:
    missing("pymemcache", e)

c = Client((host, port), connect_timeout=2, timeout=2, default_noreply=False)
check("set", c.set(k("a"), b"alpha", flags=5), True)
check("get", c.get(k("a")), b"alpha")
check("get missing", c.get(k("missing")), None)
check("add existing", c.add(k("a"), b"x"), False)
check("add new", c.add(k("b"), b"beta"), True)
check("replace missing", c.replace(k("missing"), b"x"), False)
check("replace", c.replace(k("b"), b"beta2"), True)
check("append", c.append(k("a"), b"-tail"), True)
check("prepend", c.prepend(k("a"), b"head-"), True)
check("get after append/prepend", c.get(k("a")), b"head-alpha-tail")
check("append missing", c.append(k("missing"), b"x"), False)

value, cas = c.gets(k("a"))
check("gets value", value, b"head-alpha-tail")
check("gets cas is a number", cas is not None and cas.isdigit(), True)
check("cas", c.cas(k("a"), b"swapped", cas), True)
check("cas stale", c.cas(k("a"), b"again", cas), False)
check("cas missing", c.cas(k("missing"), b"x", b"1"), None)
check("get after cas", c.get(k("a")), b"swapped")

check("set counter", c.set(k("n"), b"41"), True)
check("incr", c.incr(k("n"), 1), 42)
check("incr wide", c.incr(k("n"), 2**63), 2**63 + 42)
check("set counter again", c.set(k("n"), b"10"), True)
check("decr floors at 0", c.decr(k("n"), 50), 0)
check("incr missing", c.incr(k("missing"), 1), None)

many = c.get_many([k("a"), k("b"), k("missing")])
check("get_many", many, {k("a"): b"swapped", k("b"): b"beta2"})
gm = c.gets_many([k("a"), k("b")])
check("gets_many keys", sorted(gm), sorted([k("a"), k("b")]))
check("gets_many values", [gm[x][0] for x in sorted(gm)], [b"swapped", b"beta2"])

big = bytes(range(256)) * 400  # 100 KiB with every byte value, \r\n included
check("set big", c.set(k("big"), big), True)
check("get big", c.get(k("big")), big)

check("touch", c.touch(k("b"), 100), True)
check("touch missing", c.touch(k("missing"), 100), False)
check("delete", c.delete(k("b")), True)
check("delete again", c.delete(k("b")), False)
check("get deleted", c.get(k("b")), None)

check("set_many", c.set_many({k("m1"): b"1", k("m2"): b"2", k("m3"): b"3"}), [])
check("delete_many", c.delete_many([k("m1"), k("m2")]), True)
check("get_many after delete_many", c.get_many([k("m1"), k("m2"), k("m3")]), {k("m3"): b"3"})

c.close()
finish()
