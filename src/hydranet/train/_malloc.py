"""Keep glibc's allocator from handing large CPU tensors back to the kernel after every op.

A training step on the CPU allocates and frees tensors of hundreds of kilobytes to a few
megabytes many times (activations, gradients, the gradient balancers' [K, P] matrices). glibc
serves blocks above its mmap threshold (128 KiB at start, raised as large blocks are freed) with
``mmap`` and unmaps them on ``free``, and trims the heap top above 2x that threshold: each such
tensor then costs a system call and a page fault per 4 KiB page when it is written. Measured on
the 2-core benchmark machine, 2 threads: GradDrop's aggregation of a 2 x 131,072 gradient
matrix took 3.3 ms a call as glibc leaves it and 1.4 ms with both settings below (either one
alone was no faster); an MMoE step with MGDA on the representation at K = 8 went from 18-19 ms
to 13-15 ms.

``tune()`` sets the mmap threshold to 32 MiB (the largest glibc accepts; larger blocks still
get their own mapping) and the trim threshold to 1 GiB, once per process, for CPU training only.
The cost is that memory freed by the process is kept for reuse instead of returned at once, so
its resident size stays near its peak, as with PyTorch's own CUDA caching allocator or the
jemalloc / tcmalloc that PyTorch's CPU tuning guide suggests. ``HYDRANET_MALLOC_TUNING=0``
leaves glibc as it is. Not glibc (musl, macOS, Windows): nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30

_done: bool | None = None


def tuned() -> bool:
    """Whether ``tune()`` has applied the settings in this process (it applies nothing itself)."""
    return bool(_done)


def tune() -> bool:
    """Apply the settings (once per process); True if glibc accepted both."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("HYDRANET_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has mallopt as a no-op stub)
    except (OSError, AttributeError):
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _done
