"""Process-wide settings that hydranet applies when a user starts training or serving, never
at import (importing hydranet changes nothing about the process).

* ``OMP_WAIT_POLICY=PASSIVE`` (off switch: ``HYDRANET_OMP_PASSIVE=0``; a value the user set
  wins): with OpenMP's default spin-waiting, two torch threads on shared cores made a
  training step 10-18x slower (benchmarks/RESULTS.md). Applied by the CLI at its entry and by
  ``hydranet.train()``.
* glibc allocator thresholds (off switch: ``HYDRANET_MALLOC_TUNING=0``): applied when training
  starts on the CPU, see :mod:`hydranet.train._malloc`.
"""

from __future__ import annotations

import os
import sys


def passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` while it can still take effect; True if it is in effect.

    The OpenMP runtime torch ships (libgomp) reads its environment once, when it is loaded,
    which ``import torch`` does: set after that, the variable would change nothing in this
    process (only in the processes it starts), so then it is left alone. Hence the CLI calls
    this first thing, and ``import hydranet`` does not import torch.
    """
    if os.environ.get("HYDRANET_OMP_PASSIVE", "1") == "0" or "OMP_WAIT_POLICY" in os.environ:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    if "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
