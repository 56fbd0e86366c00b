"""Shared by the client scripts: their arguments, one check per reply, the summary and exit status.

A script's arguments are HOST PORT KEY_PREFIX. It prints "PASS <n> checks" and exits 0, or prints
each failed check and exits 1; it exits 77 when its client library is not installed.
"""
import sys

host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
checks, failed = 0, 0


def missing(library, err):
    print(f"{library} missing: {err}")
    sys.exit(77)


def k(name):
    """The test's key for name."""
    return prefix + name


def check(what, got, want):
    global checks, failed
    checks += 1
    if got != want:
        failed += 1
        print(f"FAIL {what}: got {got!r}, want {want!r}")


def finish():
    if failed:
        print(f"{failed} of {checks} checks failed")
        sys.exit(1)
    print(f"PASS {checks} checks")
