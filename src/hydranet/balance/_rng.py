"""A random stream whose state lives in a buffer, so ``state_dict`` carries it and resume is exact.

Stochastic balancers (RLW, PCGrad, GradDrop) draw from their own ``torch.Generator`` rather
than the global one: the trainer's data order and dropout then do not shift their draws, and
the generator state is saved as a plain uint8 tensor (safetensors-friendly, no pickling).
"""

from __future__ import annotations

import torch
from torch import nn


class SeededStream(nn.Module):
    """Holds a CPU generator state in the ``state`` buffer; ``generator()`` hands it out."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("state", gen.get_state())

    def draw(self, fn):
        """Call ``fn(generator)`` on a CPU generator restored from the buffer, then save it back."""
        gen = torch.Generator()
        gen.set_state(self.state.detach().cpu())
        out = fn(gen)
        self.state.copy_(gen.get_state())
        return out

    def seed_for_device(self) -> int:
        """A fresh 63-bit seed for a one-off generator on another device (e.g. CUDA)."""
        return int(self.draw(lambda g: torch.randint(0, 2**63 - 1, (1,), generator=g)).item())
