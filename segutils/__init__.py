"""segutils: the companion package of the semantic segmentation course book.

Submodules: :mod:`segutils.data`, :mod:`segutils.metrics`, :mod:`segutils.models`,
:mod:`segutils.receptive_field`, :mod:`segutils.train`, :mod:`segutils.viz`,
:mod:`segutils.testing`, and ``segutils.grading`` (the instructor's ``segutils grade``).

``import segutils`` does not import PyTorch (``get_device()`` imports it when called), so that the
instructor's tools start without it.
"""

from segutils.device import get_device

__version__ = "0.1.0"
__all__ = ["get_device", "__version__"]
