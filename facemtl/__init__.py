"""facemtl: one network that tells who a face is and which expression it shows."""

__version__ = "0.1.0"

from facemtl.labels import EXPRESSIONS  # noqa: E402

__all__ = ["EXPRESSIONS", "__version__"]
