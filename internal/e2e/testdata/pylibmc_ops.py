"""Drive a memcached server with pylibmc (libmemcached) over TCP and check every reply.

Arguments and output: clientcheck.py. libmemcached refuses get over UDP, so this client is TCP only.
"""
from clientcheck import check, finish, host, k, missing, port

try:
    import pylibmc
except ImportError as e:
    missing("pylibmc", e)

c = pylibmc.Client([f"{host}:{port}"], binary=False,
                   behaviors={"cas": True, "connect_timeout": 2000, "receive_timeout": 2000000,
                              "send_timeout": 2000000})


def raises(fn, exc):
    try:
        fn()
    except exc:
        return True
    return False


check("set", c.set(k("a"), b"alpha"), True)
check("get", c.get(k("a")), b"alpha")
check("get missing", c.get(k("missing")), None)
# pylibmc keeps Python types in the item flags: the flags must come back as stored.
check("set int", c.set(k("int"), 12345), True)
check("get int", c.get(k("int")), 12345)
check("set str", c.set(k("str"), "héllo"), True)
check("get str", c.get(k("str")), "héllo")
check("set pickled", c.set(k("obj"), {"x": [1, 2]}), True)
check("get pickled", c.get(k("obj")), {"x": [1, 2]})

check("add existing", c.add(k("a"), b"x"), False)
check("add new", c.add(k("b"), b"beta"), True)
check("replace missing", c.replace(k("missing"), b"x"), False)
check("replace", c.replace(k("b"), b"beta2"), True)
check("append", c.append(k("a"), b"-tail"), True)
check("prepend", c.prepend(k("a"), b"head-"), True)
check("get after append/prepend", c.get(k("a")), b"head-alpha-tail")

value, cas = c.gets(k("a"))
check("gets value", value, b"head-alpha-tail")
check("gets cas", isinstance(cas, int) and cas > 0, True)
check("cas", c.cas(k("a"), b"swapped", cas), True)
check("cas stale", c.cas(k("a"), b"again", cas), False)
check("get after cas", c.get(k("a")), b"swapped")
check("gets missing", c.gets(k("missing")), (None, None))

check("set counter", c.set(k("n"), b"41"), True)
check("incr", c.incr(k("n"), 1), 42)
check("decr", c.decr(k("n"), 40), 2)
check("decr floors at 0", c.decr(k("n"), 50), 0)
check("incr missing raises NotFound", raises(lambda: c.incr(k("missing"), 1), pylibmc.NotFound), True)

check("get_multi", c.get_multi([k("a"), k("b"), k("missing")]), {k("a"): b"swapped", k("b"): b"beta2"})
check("set_multi", c.set_multi({k("m1"): b"1", k("m2"): b"2", k("m3"): b"3"}), [])
check("delete_multi", c.delete_multi([k("m1"), k("m2")]), True)
check("get_multi after delete_multi", c.get_multi([k("m1"), k("m2"), k("m3")]), {k("m3"): b"3"})

big = bytes(range(256)) * 400  # 100 KiB with every byte value, \r\n included
check("set big", c.set(k("big"), big), True)
check("get big", c.get(k("big")), big)

check("touch", c.touch(k("b"), 100), True)
check("touch missing", c.touch(k("missing"), 100), False)
check("delete", c.delete(k("b")), True)
check("delete again", c.delete(k("b")), False)
check("get deleted", c.get(k("b")), None)

c.disconnect_all()
finish()
