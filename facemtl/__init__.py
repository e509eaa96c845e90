"""facemtl: one network that tells who a face is and which expression it shows."""

__version__ = "0.1.0"

from facemtl.labels import EXPRESSIONS  # noqa: E402


def __getattr__(name):
    # These pull in TensorFlow: imported only when asked for.
    if name in ("FaceAnalyzer", "Predictor"):
        import facemtl.inference

        return getattr(facemtl.inference, name)
    if name == "Gallery":
        from facemtl.recognition.gallery import Gallery  # deferred: galleries load their vector store

        return Gallery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["EXPRESSIONS", "FaceAnalyzer", "Gallery", "Predictor", "__version__"]
