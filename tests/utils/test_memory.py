import subprocess
import sys
import textwrap

import pytest

# glibc serves a buffer under its mmap threshold from the heap; freed below a live allocation it
# stays resident. That is what glibc's default does to tile-sized buffers once it has raised the
# threshold (to the largest buffer freed, up to 32 MiB); "heap" sets such a threshold outright,
# so the comparison does not depend on what the interpreter allocated before. With
# fix_mmap_threshold below the buffer's size, it has its own map and leaves when freed.
_SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    from det3d.utils.memory import fix_mmap_threshold
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold(1 << 20)
    else:
        assert fix_mmap_threshold(64 << 20)  # as glibc's raised dynamic threshold would be
    before = rss_kb()
    a = libc.malloc(12 << 20); libc.memset(a, 1, 12 << 20)
    pin = libc.malloc(256 << 10); libc.memset(pin, 1, 256 << 10)  # from the top, above a
    libc.free(a)
    print(rss_kb() - before)
    """
)


def _kept_kb(mode):
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_mmap_threshold_returns_freed_buffers_to_the_system():
    # under a high threshold the freed 12 MiB stay resident; the fixed one gives them back
    assert _kept_kb("heap") > 10 * 1024
    assert _kept_kb("fixed") < 1024
