"""Serving: TF Serving's REST API for facemtl exports, photos, galleries and a web page (`facemtl serve`)."""

from facemtl.serving.batching import DynamicBatcher

__all__ = ["DynamicBatcher", "create_app"]


def create_app(*args, **kwargs):
    """See `facemtl.serving.app.create_app` (imported lazily: it needs the `serve` extra)."""
    from facemtl.serving.app import create_app as _create_app

    return _create_app(*args, **kwargs)
