"""Encoders (a feature group's tensor → a vector) and fusions (the vectors → the trunk input).

Importing this package registers the built-in encoders: ``embedding`` (categorical),
``identity``, ``linear``, ``piecewise_linear`` and ``periodic`` (numeric), ``bag`` and
``minilm`` (text), ``cnn`` and ``mobilenet_v2`` (image), and the ``concat`` and ``gated``
fusions. ``ENCODERS.get("pkg.mod:MyEncoder")`` brings a user's encoder.
"""

from hydranet.models.encoders import (  # noqa: F401  (imported to register)
    embedding,
    fusion,
    image,
    numeric,
    pretrained_text,
    text,
)
from hydranet.models.encoders.base import ENCODERS, FUSIONS, Concat, Encoder, Fusion
from hydranet.models.encoders.input import InputEncoder

__all__ = ["ENCODERS", "FUSIONS", "Concat", "Encoder", "Fusion", "InputEncoder"]
