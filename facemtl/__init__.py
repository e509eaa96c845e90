"""facemtl: one network that tells who a face is and which expression it shows."""

__version__ = "0.1.0"

from facemtl.labels import EXPRESSIONS  # noqa: E402


def __getattr__(name):
    # FaceAnalyzer pulls in TensorFlow: import it only when asked for.
    if name == "FaceAnalyzer":
        from facemtl.inference import FaceAnalyzer

        return FaceAnalyzer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["EXPRESSIONS", "FaceAnalyzer", "__version__"]
