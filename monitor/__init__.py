"""spherewatch: watch the geometry of embeddings while a model trains."""
from spherewatch._version import __version__
from spherewatch import metrics

__all__ = ["__version__", "metrics"]
