import subprocess
import sys
import textwrap

import pytest

# A buffer under glibc's dynamic mmap threshold comes from the heap once a larger buffer has been
# freed; freed again below a live allocation, it stays resident. With the threshold fixed below
# its size, it has its own map and leaves the process's resident memory when freed.
_SCRIPT = textwrap.dedent("""
    import ctypes, sys
    from det3d.utils.memory import fix_mmap_threshold
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold(1 << 20)
    big = libc.malloc(24 << 20); libc.memset(big, 1, 24 << 20); libc.free(big)
    before = rss_kb()
    a = libc.malloc(12 << 20); libc.memset(a, 1, 12 << 20)
    pin = libc.malloc(64)
    libc.free(a)
    print(rss_kb() - before)
    """)


def _kept_kb(mode):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_mmap_threshold_returns_freed_buffers_to_the_system():
    # glibc's default keeps the freed 12 MiB resident; the fixed threshold gives them back
    assert _kept_kb("default") > 10 * 1024
    assert _kept_kb("fixed") < 1024
