"""Feature groups: named columns of one kind, fitted and turned into one tensor each.

Importing this package registers the built-in kinds, ``numeric``, ``categorical``, ``text`` and ``image``;
``FEATURES.get("pkg.mod:MyGroup")`` brings a user's kind by import path.
"""

from hydranet.features import categorical, image, numeric, text  # noqa: F401  (imported to register)
from hydranet.features.base import FEATURES, FeatureGroup
from hydranet.features.categorical import CategoricalGroup
from hydranet.features.image import ImageGroup
from hydranet.features.numeric import NumericGroup
from hydranet.features.text import TextGroup

__all__ = [
    "FEATURES",
    "CategoricalGroup",
    "FeatureGroup",
    "ImageGroup",
    "NumericGroup",
    "TextGroup",
]
