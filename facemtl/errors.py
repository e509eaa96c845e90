"""Exceptions that the CLI turns into one-line messages instead of tracebacks."""


class FacemtlError(Exception):
    """Base class for user-facing errors (bad recipe, bad file, bad model)."""


class RecipeError(FacemtlError, ValueError):
    """A recipe file or a `--set` override is missing, malformed or invalid."""


class ImageError(FacemtlError, ValueError):
    """A file or buffer could not be decoded as an image."""


class ImageTooLarge(ImageError):
    """An image claims more pixels than the limit (a decompression bomb, or simply too big)."""


class ModelFormatError(FacemtlError, ValueError):
    """A SavedModel directory is missing or was not exported by facemtl."""


class GalleryError(FacemtlError):
    """A gallery or its store is missing, corrupt, made by another model, or asked something it cannot do."""
