"""Encoders (a feature group's tensor → a vector) and fusions (the vectors → the trunk input).

Importing this package registers the built-in encoders: ``embedding`` (categorical),
``identity``, ``linear``, ``piecewise_linear`` and ``periodic`` (numeric), ``bag`` (text), ``cnn`` and ``mobilenet_v2`` (image), and the
``concat`` fusion. ``ENCODERS.get("pkg.mod:MyEncoder")`` brings a user's encoder.
"""

from hydranet.models.encoders import embedding, image, numeric, text  # noqa: F401  (imported to register)
from hydranet.models.encoders.base import ENCODERS, FUSIONS, Concat, Encoder
from hydranet.models.encoders.input import InputEncoder

__all__ = ["ENCODERS", "FUSIONS", "Concat", "Encoder", "InputEncoder"]
