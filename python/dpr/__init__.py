"""dpr: promptable sequential recommendation — train in PyTorch, serve from Rust."""

from dpr._core import __version__ as _core_version
from dpr.recommender import BundleFormatError, CacheStats, Hit, Reading, Recommender

__version__ = "0.1.0"

__all__ = ["BundleFormatError", "CacheStats", "Hit", "Reading", "Recommender", "__version__"]
assert _core_version == __version__, "dpr._core and the Python package differ in version"
