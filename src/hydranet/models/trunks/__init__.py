"""Trunks (multi-task architectures), registered by the name a Spec uses.

Importing this package registers the built-in trunks: single_task,
shared_bottom, mmoe, omoe, cgc, ple, cross_stitch and tabm.
"""

from hydranet.models.trunks import (  # noqa: F401  (imported to register)
    cgc,
    cross_stitch,
    mmoe,
    omoe,
    ple,
    shared_bottom,
    single_task,
    tabm,
)
from hydranet.models.trunks.base import TRUNKS, Trunk

__all__ = ["TRUNKS", "Trunk"]
